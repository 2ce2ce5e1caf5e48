"""Dask clusters for batch jobs: a LocalCluster by default, or an existing or configured one.

``make_client(scheduler=None, cluster=None)``:

* nothing        -> ``LocalCluster`` of worker processes with few threads each (the chunk decoders
                    hold the GIL, so processes, not threads, use the cores);
* ``tcp://...``  -> connect to a running scheduler (``dask scheduler`` / ``cluster/start-local.sh``);
* a ``.json``    -> a scheduler file written by ``dask scheduler --scheduler-file``;
* ``cluster=`` a YAML spec (``cluster/*.yaml``): ``{class: dask_jobqueue.SLURMCluster, kwargs: {...},
  scale: {jobs: 4}}`` builds any cluster class (SLURM, the Kubernetes operator, Gateway ...).

Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in workers, which made chunk decoding 2-2.7x
slower here; workers this function starts (the default LocalCluster and a
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

__all__ = ["make_client", "connect", "check_scheduler", "dashboard_link", "quiet_teardown"]


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
        with connect(scheduler) as client:
            yield client
        return
    _no_trim()
    from distributed.security import Security

    security = Security.temporary()  # mutual TLS: only holders of these in-memory keys may connect
    with _workers_ignore_sigint():  # Ctrl-C is the driver's to handle: no traceback from every worker
        c = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                         dashboard_address=dashboard_address, host="127.0.0.1", protocol="tls://",
                         security=security)
    import logging

    nanny = logging.getLogger("distributed.nanny")
    levels = {name: logging.getLogger(name).level for name in _dask_loggers()}
    try:
        with c:
            try:
                with Client(c, security=security) as client:
                    yield client
            except KeyboardInterrupt:
                quiet_teardown()  # workers cut off mid-connection, tasks cancelled: expected now
                raise
            finally:
                # closing on a busy machine can take a worker past the nanny's 4 s grace period: its
                # "still alive ... killing" warning after a finished job is noise (shown with -v)
                if nanny.getEffectiveLevel() >= logging.WARNING:
                    nanny.setLevel(logging.ERROR)
    finally:
        for name in _dask_loggers():  # as they were before this cluster
            logging.getLogger(name).setLevel(levels.get(name, logging.NOTSET))


def _dask_loggers() -> list[str]:
    import logging

    return [name for name in list(logging.root.manager.loggerDict)
            if name.split(".")[0] in ("distributed", "tornado")]


def quiet_teardown() -> None:
    """Dask's logs (and tornado's, which carries its TLS errors) at CRITICAL only, in this
    process, for the teardown of a cluster after Ctrl-C: workers closed mid-connection and
    cancelled tasks log errors that are expected then. Left alone when Dask's INFO logs were asked
    for (``crantseg -v``, ``DASK_LOGGING__DISTRIBUTED=info``). Called on the job's own workers too."""
    import logging

    if logging.getLogger("distributed").getEffectiveLevel() <= logging.INFO:
        return
    for name in ["distributed", "tornado", *_dask_loggers()]:
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _workers_ignore_sigint():
    """While worker processes start: SIGINT ignored, which they inherit (a terminal's Ctrl-C goes
    to the whole process group; the driver alone handles it, then closes the cluster)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def check_scheduler(scheduler: str) -> str:
    """``scheduler`` as ``make_client`` takes it, refused at once (``ClusterError``) when it cannot
    be one: a scheduler file that does not exist (Dask would wait for it forever) or an address
    without ``HOST:PORT``."""
    from .errors import ClusterError

    text = str(scheduler).strip()
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise ClusterError(f"--scheduler {text}: no such scheduler file (a running `dask scheduler "
                               "--scheduler-file FILE` writes it)")
        return text
    rest = text.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--scheduler {text!r} is neither tcp://HOST:PORT nor a scheduler file (.json)")
    return text


@contextlib.contextmanager
def connect(scheduler: str, timeout: float | None = None):
    """A ``Client`` of the running scheduler at ``scheduler`` (address or scheduler file), failing
    within ``timeout`` seconds (setting ``crantseg.connect-timeout``, default 10) with one line."""
    from distributed import Client

    from .config import setting
    from .errors import ClusterError

    scheduler = check_scheduler(scheduler)
    timeout = float(timeout if timeout is not None else setting("connect-timeout", 10))
    kw = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
    try:
        client = Client(**kw, timeout=f"{timeout}s")
    except (OSError, TimeoutError) as e:
        where = scheduler if "address" in kw else f"the scheduler in {scheduler}"
        raise ClusterError(f"cannot connect to {where} within {timeout:g} s ({type(e).__name__}); is the "
                           "scheduler running? (start one with `dask scheduler`)") from None
    with client:
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
