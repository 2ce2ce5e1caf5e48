"""Issue 17, finding 5: the job's default Dask cluster accepts no other process. Its scheduler
speaks TLS with temporary credentials: plain TCP, TLS without a certificate, and TLS with another
CA's certificate are all refused; only the job's own client runs work.

The intruders are asynchronous clients on this thread's own event loop: a synchronous ``Client``
starts an IO-loop thread that must come up within 10 s, which a loaded CI machine once missed
(distributed's ``assert loop is not None``), failing the test for a reason that is not the cluster's."""
import asyncio
import os

import pytest
from distributed import Client
from distributed.security import Security

from crantseg_dask.cluster import make_client


async def _intrude(**kw):
    async with Client(**kw, asynchronous=True, timeout=5, set_as_default=False) as intruder:
        await intruder.run(os.getpid)


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
                asyncio.run(_intrude(**kw))
                pytest.fail(f"{name}: an outside client ran code on the workers")
        assert c.submit(os.getpid).result() != os.getpid()  # the job's own client still runs work


def test_ctrl_c_quiets_the_clusters_teardown_and_leaves_logging_as_it_was():
    """A CI run once printed the scheduler's "TLS handshake failed" and 50 lines of worker errors
    after the Ctrl-C line: a cluster torn down mid-work logs what is expected then. After Ctrl-C the
    job's own cluster closes without Dask's warnings; logging is as it was afterwards."""
    import logging

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    keep = Keep(level=logging.WARNING)
    logging.getLogger().addHandler(keep)
    names = ("distributed", "distributed.comm.tcp", "tornado")
    saved = {n: logging.getLogger(n).level for n in names}
    logging.getLogger("distributed").setLevel(logging.WARNING)  # as the CLI sets it without -v
    before = {n: logging.getLogger(n).level for n in names}
    try:
        with pytest.raises(KeyboardInterrupt):
            with make_client(n_workers=1) as c:
                c.submit(os.getpid).result()
                raise KeyboardInterrupt
        assert [r for r in seen if r.name.startswith(("distributed", "tornado"))] == []
        assert {n: logging.getLogger(n).level for n in before} == before
        # the listener's warning, logged after the teardown, is shown again
        logging.getLogger("distributed.comm.tcp").warning("Listener on 'tls://x': TLS handshake failed")
        assert [r.getMessage() for r in seen if r.name == "distributed.comm.tcp"] == [
            "Listener on 'tls://x': TLS handshake failed"]
    finally:
        logging.getLogger().removeHandler(keep)
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def test_quiet_teardown_silences_dask_unless_its_info_logs_were_asked_for():
    import logging

    from crantseg_dask.cluster import quiet_teardown

    names = ("distributed", "distributed.comm.tcp", "distributed.worker", "tornado.general")
    before = {n: logging.getLogger(n).level for n in names}
    try:
        logging.getLogger("distributed").setLevel(logging.WARNING)
        quiet_teardown()
        assert all(not logging.getLogger(n).isEnabledFor(logging.ERROR) for n in names)
        for n in names:
            logging.getLogger(n).setLevel(logging.NOTSET)
        logging.getLogger("distributed").setLevel(logging.INFO)  # crantseg -v
        quiet_teardown()
        assert logging.getLogger("distributed.worker").isEnabledFor(logging.ERROR)
    finally:
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)
