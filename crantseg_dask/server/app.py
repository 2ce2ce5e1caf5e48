"""The tornado application, and running it on pre-bound sockets (in a thread for tests).

Tornado ships with dask's ``distributed`` (already a dependency), is a maintained asynchronous
server that never adds trailing-slash redirects on its own, reads bodies of GET requests, and
inflates gzip request bodies (``decompress_request``). Asynchronous handlers let the fault mode
hold stalled requests without blocking the others.

Limits (``LIMITS``, every route): a connection must send each request's headers within
``header_timeout`` seconds (an idle keep-alive connection is closed after as long); bodies are cut at
``max_body_size`` bytes after decompression (tornado >= 6.5.6 applies the limit to the inflated
size: the gzip-bomb fix, CVE-2026-49855) and must arrive within ``body_timeout``; at most
``max_connections`` connections are open (fewer when the process's file limit is low): a new
connection beyond that closes the oldest one, so idle or slow clients cannot lock others out.
"""
from __future__ import annotations

import asyncio
import resource
import socket
import threading
import time
from dataclasses import dataclass, field

import tornado.httpserver
import tornado.netutil
import tornado.web

from . import chunkedgraph, info, materialize, storage
from ._base import NotFoundHandler, access_log
from .state import Faults, ServedDataset

__all__ = ["make_app", "bind", "serve_forever", "serve_in_thread", "RunningServer", "LIMITS", "HardenedServer"]

# max_connections: a client process keeps up to `storage.max-in-flight` (256) connections to the
# storage route, and a cluster has a process per worker
LIMITS = {"header_timeout": 10.0, "body_timeout": 60.0,
          "max_body_size": 64 * 2**20, "max_header_size": 64 * 2**10, "max_connections": 1024}


def _connection_cap(wanted: int) -> int:
    """``wanted``, lowered to half the process's file-descriptor limit (the rest for data files)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(4, min(wanted, soft // 2)) if soft > 0 else wanted


class HardenedServer(tornado.httpserver.HTTPServer):
    """An HTTPServer with a cap on open connections: beyond it, the oldest connection is closed."""

    def initialize(self, *args, max_connections: int = LIMITS["max_connections"], **kwargs) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = _connection_cap(max_connections)
        self._opened: dict = {}

    def handle_stream(self, stream, address) -> None:
        if len(self._connections) >= self.max_connections:
            excess = len(self._connections) - self.max_connections + 1
            for conn in sorted(self._connections, key=lambda c: self._opened.get(id(c), 0.0))[:excess]:
                self._connections.discard(conn)
                self._opened.pop(id(conn), None)
                conn.stream.close()
        super().handle_stream(stream, address)
        for conn in self._connections:
            self._opened.setdefault(id(conn), time.monotonic())

    def on_close(self, server_conn) -> None:
        self._opened.pop(id(server_conn), None)
        self._connections.discard(server_conn)  # an evicted connection is no longer in the set


def make_app(state: ServedDataset) -> tornado.web.Application:
    """The CAVE-compatible application for ``state``: info, chunkedgraph, materialize routes."""
    # the layer's files (``STORAGE_PREFIX``) are answered by ``storage.router`` in front of this
    handlers = info.routes(state) + chunkedgraph.routes(state) + materialize.routes(state)
    return tornado.web.Application(
        handlers,
        default_handler_class=NotFoundHandler,
        default_handler_args={"state": state},
        log_function=access_log,
        compress_response=False,
        serve_traceback=False,
    )


def bind(host: str = "127.0.0.1", port: int = 0) -> list[socket.socket]:
    """Listening sockets on ``host:port`` (port 0: a free port, known before serving starts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return tornado.netutil.bind_sockets(port, address=host, family=family)


def address_of(sockets: list[socket.socket]) -> str:
    host, port = sockets[0].getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(state: ServedDataset, sockets, stop: asyncio.Event, started=None) -> None:
    lim = {**LIMITS, **getattr(state, "limits", {})}
    server = HardenedServer(storage.router(state, make_app(state)), decompress_request=True, xheaders=False,
                            idle_connection_timeout=lim["header_timeout"], body_timeout=lim["body_timeout"],
                            max_body_size=lim["max_body_size"], max_header_size=lim["max_header_size"],
                            max_connections=lim["max_connections"])
    server.add_sockets(sockets)
    if started is not None:
        started()
    try:
        await stop.wait()
    finally:
        server.stop()
        try:  # stalled requests (fault mode) may hold connections: do not wait for them long
            await asyncio.wait_for(server.close_all_connections(), timeout=2)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass


def serve_forever(state: ServedDataset, sockets) -> None:
    """Serve on ``sockets`` in this thread until interrupted (``crantseg serve``)."""
    async def main():
        await _serve(state, sockets, asyncio.Event())

    asyncio.run(main())


@dataclass
class RunningServer:
    """A server running in a background thread. ``stop()`` ends it; usable as a context manager."""

    address: str
    datastack: str
    table: str
    token: str = field(repr=False)
    state: ServedDataset = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _stop: asyncio.Event = field(repr=False)

    def set_faults(self, faults: Faults | None = None, **kw) -> None:
        """Change the fault mode while running (``Faults(**kw)`` when no object is given)."""
        self.state.faults = faults if faults is not None else Faults(**kw)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_thread(dataset, *, host: str = "127.0.0.1", port: int = 0, sockets=None,
                    datastack: str | None = None, token: str | None = None,
                    faults: Faults | None = None, storage: str = "http") -> RunningServer:
    """Start a server for the dataset directory ``dataset`` in a daemon thread.

    The socket is bound before the thread starts (port 0 picks a free port), so the returned
    ``address`` is usable at once. Returns a ``RunningServer`` with ``address``, ``datastack``,
    ``token`` and ``stop()``. ``storage="file"`` hands out the layer's ``file://`` path as
    ``data_dir`` instead of this server's HTTP storage route.
    """
    state = dataset if isinstance(dataset, ServedDataset) else ServedDataset(
        dataset, datastack=datastack, token=token, faults=faults, storage=storage)
    sockets = sockets or bind(host, port)
    ready = threading.Event()
    box = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()
        box.update(loop=loop, stop=stop)
        try:
            loop.run_until_complete(_serve(state, sockets, stop, started=ready.set))
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    thread = threading.Thread(target=run, name=f"crantseg-server-{state.datastack}", daemon=True)
    thread.start()
    if not ready.wait(timeout=30):
        raise RuntimeError("the CAVE server thread did not start within 30 s")
    return RunningServer(address=address_of(sockets), datastack=state.datastack, table=state.table,
                         token=state.token, state=state, _thread=thread, _loop=box["loop"], _stop=box["stop"])
