"""Issue 17, finding 5: the job's default Dask cluster accepts no other process. Its scheduler
speaks TLS with temporary credentials: plain TCP, TLS without a certificate, and TLS with another
CA's certificate are all refused; only the job's own client runs work."""
import os

import pytest
from distributed import Client
from distributed.security import Security

from crantseg_dask.cluster import make_client


def test_only_the_jobs_client_can_submit_work():
    with make_client(n_workers=1) as c:
        addr = c.scheduler.address
        assert addr.startswith("tls://127.0.0.1:")
        assert c.submit(os.getpid).result() != os.getpid()
        attempts = {"tcp": dict(address=addr.replace("tls://", "tcp://")),
                    "tls, no certificate": dict(address=addr),
                    "tls, another CA": dict(address=addr, security=Security.temporary())}
        for name, kw in attempts.items():
            with pytest.raises((OSError, TypeError, TimeoutError)):
                with Client(**kw, timeout=5, set_as_default=False) as intruder:
                    intruder.run(os.getpid)
                pytest.fail(f"{name}: an outside client ran code on the workers")
