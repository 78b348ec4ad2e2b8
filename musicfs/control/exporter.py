"""The optional TCP listener Prometheus scrapes: ``GET /metrics`` and nothing else.

The control API lives on a Unix socket only its user may open; Prometheus
usually runs elsewhere (another user, a container, another host) and speaks
TCP. So ``[metrics] listen = "127.0.0.1:9877"`` (off by default) opens this
second door, which serves the metrics text and answers 404 to every other
path: no route of the control API is reachable through it, whatever address
it listens on. Listening on a LAN address is allowed (a Prometheus on
another host needs it); the metrics name no credential, but they do show
the mountpoint and origin ids.

Like the control API it costs nothing until used: the port is bound at
mount (so a port in use is reported at once), and hypercorn, which speaks
the HTTP, is imported in a worker thread when the first scraper connects.
Rendering runs SQL, so it happens in a worker thread too, one at a time.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

log = logging.getLogger(__name__)

PATH = "/metrics"
IDLE_TIMEOUT = 10.0  # seconds a connection may stay silent before it is dropped


def metrics_app(render: Callable[[], tuple[bytes, str]]):
    """A bare ASGI app: ``GET``/``HEAD /metrics`` renders (in a thread); anything else is refused."""
    limiter = trio.CapacityLimiter(1)  # a burst of scrapes queues instead of running the SQL n times at once

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        headers: list[tuple[bytes, bytes]] = []
        if scope["path"] != PATH:
            status, body, content_type = 404, f"only {PATH} is served here\n".encode(), "text/plain; charset=utf-8"
        elif scope["method"] not in ("GET", "HEAD"):
            status, body, content_type = 405, b"use GET\n", "text/plain; charset=utf-8"
            headers.append((b"allow", b"GET, HEAD"))
        else:
            body, content_type = await trio.to_thread.run_sync(render, limiter=limiter)
            status = 200
        headers += [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app


class MetricsListener:
    def __init__(self, host: str, port: int, render: Callable[[], tuple[bytes, str]]):
        """``host`` is an IP address (the config refuses names: nothing is resolved at mount)."""
        self.host, self.port = host, port
        self.render = render
        self.started = False  # hypercorn was loaded (someone connected)
        self._sock: trio.socket.SocketType | None = None
        self._listener: trio.SocketListener | None = None
        self._handler: Any = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def bind(self) -> None:
        """Listen on the address now (OSError when it is taken or not this host's)."""
        family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self._sock = trio.socket.from_stdlib_socket(sock)
        self._listener = trio.SocketListener(self._sock)
        log.info("metrics for Prometheus on http://%s%s", self.address, PATH)

    async def run(self) -> None:
        """Serve the bound socket until cancelled (may be run again after a failure)."""
        assert self._sock is not None and self._listener is not None, "bind() first"
        if self._handler is None:
            await trio.lowlevel.wait_readable(self._sock)  # the first scraper knocks: load the HTTP side
            self._handler = await trio.to_thread.run_sync(_handler, metrics_app(self.render))
            self.started = True
        await trio.serve_listeners(self._handler, [self._listener])

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()

    def statistics(self) -> dict[str, Any]:
        return {"listen": self.address, "http_loaded": self.started}


def _handler(app: Any):
    """hypercorn's trio connection handler around ``app`` (the control server's settings)."""
    from hypercorn.config import Config
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.utils import wrap_app

    config = Config()
    config.keep_alive_timeout = IDLE_TIMEOUT
    config.read_timeout = int(IDLE_TIMEOUT)
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.errorlog = logging.getLogger("musicfs.control.metrics_http")
    return partial(TCPServer, wrap_app(app, config.wsgi_max_body_size, "asgi"), config, WorkerContext(None), {})
