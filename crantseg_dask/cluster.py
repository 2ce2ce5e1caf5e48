"""Dask clusters for batch jobs: a LocalCluster by default, or an existing or configured one.

``make_client(scheduler=None, cluster=None)``:

* nothing        -> ``LocalCluster`` of worker processes with few threads each (the chunk decoders
                    hold the GIL, so processes, not threads, use the cores);
* ``tcp://...``  -> connect to a running scheduler (``dask scheduler`` / ``cluster/start-local.sh``);
* a ``.json``    -> a scheduler file written by ``dask scheduler --scheduler-file``;
* ``cluster=`` a YAML spec (``cluster/*.yaml``): ``{class: dask_jobqueue.SLURMCluster, kwargs: {...},
  scale: {jobs: 4}}`` builds any cluster class (SLURM, the Kubernetes operator, Gateway ...).

Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in workers, which made chunk decoding 2-2.7x
slower here (perf-baseline pitfall 3); workers this function starts (the default LocalCluster and a
``cluster=`` spec's) start without it. The default dashboard listens on 127.0.0.1 only.

The default LocalCluster speaks TLS with temporary credentials (``Security.temporary()``: a
fresh CA and key pair in memory, ``require_encryption=True``): workers hold the job's CAVE token,
so no other process on the machine may submit work to them. Remote clusters: see cluster/README.md.
"""
from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import dask

__all__ = ["make_client", "dashboard_link"]


def _no_trim() -> None:
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})


@contextlib.contextmanager
def make_client(scheduler: str | None = None, cluster: str | None = None, *, n_workers: int = 2,
                threads_per_worker: int = 1, dashboard_address: str = "127.0.0.1:0", processes: bool = True):
    """Yield a ``distributed.Client`` (closing whatever this function started)."""
    from distributed import Client, LocalCluster

    if scheduler and cluster:
        raise ValueError("give either a scheduler address or a cluster spec, not both")
    if cluster:
        import yaml

        _no_trim()  # before the spec's cluster starts its workers (LocalCluster and the like)
        spec = yaml.safe_load(Path(cluster).read_text())
        module, _, name = spec["class"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        kwargs = dict(spec.get("kwargs", {}))
        if spec.get("tls"):
            kwargs.update(security=_security(spec["tls"]), protocol=kwargs.get("protocol", "tls://"))
        with cls(**kwargs) as c:
            if spec.get("scale"):
                c.scale(**spec["scale"])
            with Client(c) as client:
                yield client
        return
    if scheduler:
        kw = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
        with Client(**kw) as client:
            yield client
        return
    _no_trim()
    from distributed.security import Security

    security = Security.temporary()  # mutual TLS: only holders of these in-memory keys may connect
    with LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                      dashboard_address=dashboard_address, host="127.0.0.1", protocol="tls://",
                      security=security) as c, Client(c, security=security) as client:
        yield client


def _security(tls):
    """``tls: temporary`` (fresh in-memory CA and keys) or ``tls: {ca_file, cert, key}`` (files
    shared with the workers, e.g. on a cluster file system) as a ``Security`` requiring TLS."""
    from distributed.security import Security

    if tls == "temporary" or tls is True:
        return Security.temporary()
    if isinstance(tls, dict) and {"ca_file", "cert", "key"} <= set(tls):
        files = {f"tls_{role}_{kind}": tls[kind] for role in ("client", "scheduler", "worker")
                 for kind in ("cert", "key")}
        return Security(tls_ca_file=tls["ca_file"], require_encryption=True, **files)
    raise ValueError(f"cluster spec: tls must be 'temporary' or {{ca_file, cert, key}}, got {tls!r}")


def dashboard_link(client) -> str | None:
    """The dashboard's status page, or None when the scheduler has no dashboard (no bokeh)."""
    try:
        return client.dashboard_link
    except Exception:
        return None
