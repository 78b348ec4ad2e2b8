"""Serving the control API on the mount's Unix socket, inside the daemon's trio loop.

The HTTP side is hypercorn's (its trio connection handler speaks HTTP/1.1 and
drives the ASGI app); this module only owns the listening socket, so that
each connection's peer can be checked before hypercorn sees it: a process of
another user is refused (the socket's mode already keeps it out; this is the
second lock) and the refusal is logged.

The API costs nothing until it is used: the socket is bound at mount, but
FastAPI, pydantic and hypercorn (some 20 MB and a third of a second) are
imported, in a worker thread so the filesystem keeps answering, only when
the first client connects. A daemon nobody asks stays small.

Hostile clients: headers are capped by hypercorn (16 KiB), bodies by the
app (size, and the time a half-sent body may take), a connection idle or
half-open before its request is complete is dropped after ``IDLE_TIMEOUT``,
and a request that fails inside the app is a 500 for that request only.
There is no read timeout once a request is in: a client of a stream (events,
a rescan) sends nothing while it listens. A client that stops reading blocks
only its own stream (hypercorn's writes wait for it, shielded); when the
server stops, every connection still open is closed, which ends such writes,
so a stalled client cannot hold up an unmount.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from .sockets import bind_private, peer_uid

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 10.0  # seconds an open connection may send nothing before it is dropped
GRACEFUL = 1.0  # seconds requests in flight get when the server stops


class _PeerChecked(trio.abc.Listener[trio.SocketStream]):
    """A listener that hands on only connections from its own user (or root)."""

    def __init__(self, inner: trio.SocketListener, uid: int):
        self.inner, self.uid = inner, uid
        self.refused = 0

    async def accept(self) -> trio.SocketStream:
        while True:
            stream = await self.inner.accept()
            uid = peer_uid(stream.socket)
            if uid is None or uid in (self.uid, 0):
                return stream
            self.refused += 1
            log.warning("control socket: refused a connection from uid %d (only uid %d may use it)",
                        uid, self.uid)
            await stream.aclose()

    async def aclose(self) -> None:
        await self.inner.aclose()


class ControlServer:
    def __init__(self, path: Path, make_app: Callable[[], Any]):
        """``make_app()`` builds the ASGI app; it is called in a worker thread, on first use."""
        self.path = path
        self.make_app = make_app
        self.started = False  # the app was built (someone connected)
        self._app: Any = None
        self._serve_connection: Callable[[trio.SocketStream], Awaitable[None]] | None = None
        self._sock: trio.socket.SocketType | None = None
        self._ino = 0
        self._listener: _PeerChecked | None = None
        self._connections: set[trio.SocketStream] = set()

    def bind(self) -> None:
        """Make the socket (mode 0600 in a 0700 folder); a socket a killed daemon left is replaced."""
        self._sock = trio.socket.from_stdlib_socket(bind_private(self.path))
        self._ino = os.stat(self.path).st_ino
        self._listener = _PeerChecked(trio.SocketListener(self._sock), os.getuid())

    async def run(self) -> None:
        """Serve the bound socket until cancelled (may be run again after a failure)."""
        assert self._sock is not None and self._listener is not None, "bind() first"
        if self._serve_connection is None:
            await trio.lowlevel.wait_readable(self._sock)  # the first client knocks: now load the API
            # importing FastAPI and hypercorn and building the app is ~0.1 s of CPU: not on the loop
            self._app, self._serve_connection = await trio.to_thread.run_sync(self._load)
            self.started = True
        handler = self._serve_connection

        async def serve(stream: trio.SocketStream) -> None:
            self._connections.add(stream)
            try:
                await handler(stream)
            finally:
                self._connections.discard(stream)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, serve, [self._listener])
            try:
                await trio.sleep_forever()
            finally:  # stopping: close what is open, so no write waits on a client that does not read
                for stream in list(self._connections):
                    stream.socket.close()

    async def close(self) -> None:
        """Close the socket and remove its file (if it is still ours, not a successor's)."""
        if self._listener is not None:
            await self._listener.aclose()
        try:
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _load(self) -> tuple[Any, Callable[[trio.SocketStream], Awaitable[None]]]:
        app = self.make_app()
        handler = self._handler(app)
        # the API's code and app live as long as the mount, like what the mount froze when it
        # started: out of the collector's sight too. Left in, they were most of what each full
        # collection walked afterwards (~40K objects: 10-20 ms holding the loop, ASYNC-3). No
        # collection first: an import leaves no garbage to speak of (none, measured), and a
        # full collection here would hold the GIL, so the loop, for ~10 ms.
        gc.freeze()
        return app, handler

    @staticmethod
    def _handler(app: Any):
        from hypercorn.config import Config
        from hypercorn.trio.tcp_server import TCPServer
        from hypercorn.trio.worker_context import WorkerContext
        from hypercorn.utils import wrap_app

        config = Config()
        config.keep_alive_timeout = IDLE_TIMEOUT
        config.read_timeout = None  # a stream's client sends nothing while it listens; stalls: see above
        config.graceful_timeout = GRACEFUL
        config.accesslog = None
        config.errorlog = logging.getLogger("musicfs.control.http")
        return partial(TCPServer, wrap_app(app, config.wsgi_max_body_size, "asgi"), config,
                       WorkerContext(None), {})

    def statistics(self) -> dict:
        return {"socket": str(self.path), "api_loaded": self.started,
                "connections": len(self._connections),
                "connections_refused": self._listener.refused if self._listener else 0}
