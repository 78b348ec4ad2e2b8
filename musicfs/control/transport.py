"""HTTP/1.1 over a Unix socket with the standard library's :mod:`http.client`.

The commands that only talk to a daemon (``status``, ``cache stats``, ``search``,
``mount`` handed to the manager) are started by hand and by scripts, and their
start-up is a requirement: httpx costs ~90 ms to import and brings trio in with
it (httpcore looks for it), and its transport builds a TLS context a Unix socket
never uses. :mod:`http.client` is already loaded by the standard library's own
modules and speaks the same protocol; only the connect differs.

One connection per request: a command makes a handful, and a fresh connection
can never be one the daemon already closed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .sockets import reachable

TIMEOUT = 10.0  # seconds for an answer (streams wait for their next line forever)
# a connect refused while a burst of connections fills the socket's backlog (a Unix socket then
# fails at once with EAGAIN instead of waiting) is tried again after these pauses
CONNECT_PAUSES = (0.0, 0.5, 1.0)


class TransportError(OSError):
    """The socket could not be reached, or the connection broke before a whole answer."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, where: str, timeout: float | None):
        super().__init__("musicfs", timeout=timeout)
        self._where = where

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._where)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Reply:
    """A whole answer: its status and body (the request's method and path, for messages)."""

    method: str
    path: str
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Streamed:
    """An answer read as it arrives: its status, then its lines."""

    def __init__(self, method: str, path: str, response: http.client.HTTPResponse):
        self.method, self.path, self.status = method, path, response.status
        self._response = response

    def read(self) -> Reply:
        """The rest of the answer, whole (for an error's detail)."""
        try:
            body = self._response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"the answer broke off: {type(exc).__name__}") from None
        return Reply(self.method, self.path, self.status, body, dict(self._response.getheaders()))

    def lines(self) -> Iterator[bytes]:
        """Each line as it arrives (chunked transfer is undone by :mod:`http.client`)."""
        try:
            while line := self._response.readline():
                yield line
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"the answer broke off: {type(exc).__name__}") from None


class UnixHTTP:
    """Requests to the HTTP server listening on the Unix socket at ``socket``."""

    def __init__(self, socket_path: Path, *, timeout: float = TIMEOUT,
                 connect_pauses: tuple[float, ...] = CONNECT_PAUSES):
        """``connect_pauses``: a refused connect is tried once per pause, after it (``(0,)``: once)."""
        self.socket = Path(socket_path)
        self.timeout = timeout
        self._pauses = connect_pauses
        self._stack = contextlib.ExitStack()
        self._where = self._stack.enter_context(reachable(self.socket))

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> UnixHTTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, params: dict | None = None, json_body: Any = None) -> Reply:
        with self.stream(method, path, params=params, json_body=json_body, read_timeout=self.timeout) as answer:
            return answer.read()

    @contextlib.contextmanager
    def stream(self, method: str, path: str, *, params: dict | None = None, json_body: Any = None,
               read_timeout: float | None = None) -> Iterator[Streamed]:
        """The answer to one request, open for reading.

        ``read_timeout`` bounds each wait once the request is sent, for the status line too:
        a streamed answer's headers leave the daemon with its first line, which may come much
        later (a quiet event feed), so None waits forever.
        """
        target = path + ("?" + urlencode(_query(params), doseq=True) if params else "")
        body = None if json_body is None else json.dumps(json_body).encode()
        # one request per connection, and said so: the server closes its side once it has answered,
        # instead of keeping it for a next request that never comes
        headers = {"Connection": "close", **({"Content-Type": "application/json"} if body is not None else {})}
        conn = self._connect()
        try:
            try:
                conn.request(method, target, body=body, headers=headers)
                if conn.sock is not None:  # connected by _connect; the answer is read through it
                    conn.sock.settimeout(read_timeout)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise TransportError(f"no answer: {type(exc).__name__}") from None
            yield Streamed(method, path, response)
        finally:
            conn.close()

    def _connect(self) -> _UnixConnection:
        failure: OSError | None = None
        for pause in self._pauses:
            if pause:
                time.sleep(pause)
            conn = _UnixConnection(self._where, self.timeout)
            try:
                conn.connect()
                return conn
            except (BlockingIOError, ConnectionRefusedError) as exc:  # a full backlog, or no listener yet
                failure = exc
            except OSError as exc:  # no socket file, no permission: asking again will not help
                raise TransportError(f"cannot connect: {type(exc).__name__}") from None
        raise TransportError(f"cannot connect: {type(failure).__name__}") from None


def _query(params: dict) -> dict:
    """Query values as the API reads them: booleans in lower case, None as empty, lists repeated."""

    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return {key: [text(v) for v in value] if isinstance(value, list | tuple) else text(value)
            for key, value in params.items()}
