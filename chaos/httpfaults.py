"""HTTP-level faults in front of an S3 server: answers that Toxiproxy, working on TCP, cannot give.

Toxiproxy can cut, slow or corrupt a connection, but it cannot make a server
say "503 Slow Down, retry after 30 s", which is what S3, B2 and MinIO answer
when throttling. :func:`http_fault_proxy` starts a small threaded reverse
proxy on 127.0.0.1 (a free port) that forwards every request unchanged to the
upstream server (method, path, query, headers including ``Host``, so SigV4
signatures still match; bodies streamed both ways, never held whole) and,
when told to, refuses or parks requests instead:

* :meth:`FaultProxy.busy` answers the next ``count`` matching requests with an
  S3-style XML error (``SlowDown``) and a ``Retry-After`` header, then lets
  them through again;
* :meth:`FaultProxy.hold` parks matching requests until :meth:`FaultProxy.release`,
  so a test can change the world (rotate keys) while a request is in flight.

Every request is recorded (:class:`Seen`: arrival time, method, path, status),
so a test can check how a client behaved, e.g. that it waited at least the
``Retry-After`` it was given before asking again.
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

BLOCK = 256 * 1024  # bytes copied at a time between the two sockets
UPSTREAM_TIMEOUT = 30.0  # seconds; the client under test has shorter timeouts of its own
HOLD_LIMIT = 60.0  # a parked request goes on by itself after this long: a failed test never hangs
# headers about one connection, not the message: never forwarded (RFC 9110, 7.6.1); "expect"
# too, because this proxy answers "100 Continue" itself and SigV4 does not sign it
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"})
REASONS = {429: "Too Many Requests", 503: "Slow Down"}


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it."""

    at: float  # time.monotonic() when it arrived (before any hold)
    method: str
    path: str  # without the query string
    status: int  # what the client was answered (502: the upstream failed)
    refused: bool  # answered by busy() rather than by the upstream


@dataclass
class _Rule:
    """Which requests a fault applies to: a method and a path prefix, either may be None (any)."""

    method: str | None = None
    path_prefix: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return ((self.method is None or method == self.method.upper())
                and (self.path_prefix is None or path.startswith(self.path_prefix)))


class FaultProxy:
    """The control side of the proxy: what to refuse or park, and what was seen.

    All methods are thread-safe; the handler threads call :meth:`_admit`.
    """

    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self.endpoint = ""  # set once listening
        self._lock = threading.Condition()
        self._seen: list[Seen] = []
        self._busy: _Rule | None = None
        self._busy_left: int | None = None  # None: until clear()
        self._busy_answer = (503, "SlowDown", 1.0)
        self._hold: _Rule | None = None
        self._hold_skip = 0
        self._held = 0  # requests parked so far (they may have been released since)

    # -- controls ------------------------------------------------------------------------------

    def busy(self, count: int | None, retry_after: float = 1.0, status: int = 503, *,
             method: str | None = None, path_prefix: str | None = None, code: str = "SlowDown") -> None:
        """Refuse the next ``count`` matching requests (None: all until :meth:`clear`)."""
        with self._lock:
            self._busy = _Rule(method, path_prefix)
            self._busy_left = count
            self._busy_answer = (status, code, retry_after)

    def hold(self, *, method: str | None = None, path_prefix: str | None = None, skip: int = 0) -> None:
        """Park matching requests, after letting ``skip`` of them through, until :meth:`release`."""
        with self._lock:
            self._hold, self._hold_skip, self._held = _Rule(method, path_prefix), skip, 0

    def release(self) -> None:
        """Let parked requests go on to the upstream, and park no more."""
        with self._lock:
            self._hold = None
            self._lock.notify_all()

    def clear(self) -> None:
        """Back to a plain pass-through proxy."""
        with self._lock:
            self._busy = None
        self.release()

    def reset(self) -> None:
        """:meth:`clear`, and forget what was seen: a fresh proxy for the next test."""
        self.clear()
        with self._lock:
            self._seen.clear()
            self._held = 0

    def wait_held(self, count: int = 1, timeout: float = 10.0) -> None:
        """Block until ``count`` requests have been parked by :meth:`hold`."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._held >= count, timeout):
                raise TimeoutError(f"{self._held} request(s) held after {timeout} s, not {count}")

    # -- what was seen -------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Requests answered so far (refused or forwarded)."""
        with self._lock:
            return len(self._seen)

    def requests(self, method: str | None = None, path_prefix: str | None = None) -> list[Seen]:
        """Answered requests that match, in order of arrival."""
        rule = _Rule(method, path_prefix)
        with self._lock:
            seen = list(self._seen)
        return sorted((s for s in seen if rule.matches(s.method, s.path)), key=lambda s: s.at)

    def waits_after_refusals(self, method: str | None = None, path_prefix: str | None = None) -> list[float]:
        """For each refused matching request, seconds until the next matching request arrived.

        A refusal with no later request is left out. Use a path prefix that
        names one object, so requests for others do not count as the retry.
        """
        seen = self.requests(method, path_prefix)
        return [later.at - refused.at for refused, later in zip(seen, seen[1:]) if refused.refused]

    # -- called by the handler threads ---------------------------------------------------------

    def _admit(self, method: str, path: str) -> tuple[int, str, float] | None:
        """Park the request if a hold says so; then (status, code, retry_after) to refuse it, or None."""
        with self._lock:
            if self._hold is not None and self._hold.matches(method, path):
                if self._hold_skip > 0:
                    self._hold_skip -= 1
                else:
                    self._held += 1
                    self._lock.notify_all()
                    self._lock.wait_for(lambda: self._hold is None, HOLD_LIMIT)
            if self._busy is None or not self._busy.matches(method, path):
                return None
            if self._busy_left is not None:
                self._busy_left -= 1
                if self._busy_left <= 0:
                    self._busy = None
            return self._busy_answer

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)


class _Handler(BaseHTTPRequestHandler):
    """Forwards one client connection's requests (HTTP/1.1 keep-alive) or refuses them."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle kept-alive client connection is dropped after this long
    server: _Server

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        """Quiet: the proxy's record of requests is :meth:`FaultProxy.requests`."""

    def do_request(self) -> None:
        arrived = time.monotonic()
        path = urlsplit(self.path).path
        faults = self.server.faults
        refusal = faults._admit(self.command, path)
        if refusal is not None:
            status = self._refuse(*refusal)
        else:
            status = self._forward()
        faults._record(Seen(arrived, self.command, path, status, refusal is not None))

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_request

    def _request_length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def _refuse(self, status: int, code: str, retry_after: float) -> int:
        """Answer as S3 does when throttling: an XML error and how long to wait."""
        self._drain(self._request_length())
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code>'
                f"<Message>Please reduce your request rate (fault injected by the test).</Message>"
                f"<Resource>{escape(self.path)}</Resource><RequestId>{uuid.uuid4().hex}</RequestId>"
                f"</Error>").encode()
        self.send_response_only(status, REASONS.get(status))
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Retry-After", f"{retry_after:g}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _drain(self, left: int) -> None:
        """Read a request body we will not forward, so the connection stays usable."""
        while left > 0:
            piece = self.rfile.read(min(left, BLOCK))
            if not piece:
                break
            left -= len(piece)

    def _forward(self) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(501, "chunked request bodies are not forwarded")  # nothing here sends them
            return 501
        upstream = http.client.HTTPConnection(*self.server.faults.upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            try:
                response = self._send_upstream(upstream)
            except (OSError, http.client.HTTPException):
                self.send_error(502, "upstream failed")
                return 502
            try:
                self._copy_response(response)
            except (OSError, http.client.HTTPException):  # either side broke off mid-answer
                self.close_connection = True  # the client sees a short body: never a wrong one
            return response.status
        finally:
            upstream.close()

    def _send_upstream(self, upstream: http.client.HTTPConnection) -> http.client.HTTPResponse:
        """The same request line, headers (Host included: signatures cover it) and body, upstream."""
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                upstream.putheader(name, value)
        upstream.endheaders()
        left = self._request_length()
        while left > 0:
            piece = self.rfile.read(min(left, BLOCK))
            if not piece:
                raise ConnectionError("the client's request body ended early")
            upstream.send(piece)
            left -= len(piece)
        return upstream.getresponse()

    def _copy_response(self, response: http.client.HTTPResponse) -> None:
        """Status, headers and body as the upstream gave them, the body streamed.

        A body without Content-Length (chunked upstream) is sent delimited by
        closing the connection, which every HTTP/1.1 client understands.
        """
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        bodiless = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        if response.getheader("Content-Length") is None and not bodiless:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        while piece := response.read(BLOCK):
            self.wfile.write(piece)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client's idle kept-alive connection never delays stopping
    faults: FaultProxy


@contextmanager
def http_fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """A fault proxy on 127.0.0.1 (free port) in front of ``upstream`` (``http://host:port``).

    Yields the :class:`FaultProxy` (``.endpoint`` is its URL); stops it, and
    lets any parked request go, when the block ends.
    """
    parts = urlsplit(upstream)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
    faults = FaultProxy(parts.hostname, parts.port)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.faults = faults
    faults.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="http-fault-proxy", daemon=True)
    thread.start()
    try:
        yield faults
    finally:
        faults.clear()
        server.shutdown()
        server.server_close()
        thread.join(5)
