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
  them through again; :meth:`FaultProxy.error` answers with any other S3-style
  error (``ExpiredToken``, ``expired_auth_token``), :meth:`FaultProxy.page` with
  an HTML page (a load balancer's "502 Bad Gateway", a captive portal's
  "200 Please Login"), :meth:`FaultProxy.missing` with 404 ``NoSuchKey`` (an
  origin that lost its objects) and :meth:`FaultProxy.drop` not at all (the
  connection is closed unanswered: a backend that is down);
* :meth:`FaultProxy.hold` parks matching requests until :meth:`FaultProxy.release`,
  so a test can change the world (rotate keys) while a request is in flight;
* :meth:`FaultProxy.corrupt` flips one bit of the body of matching answers (a
  bad NIC, a broken middlebox, a disk rotting under the server): status,
  headers and length stay right, so only a checksum can tell.

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
LOGIN_PAGE = b"<html>Please Login</html>"  # what a captive portal answers to every request
BAD_GATEWAY_PAGE = (b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
                    b"</h1></center><hr><center>nginx</center></body></html>")


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it."""

    at: float  # time.monotonic() when it arrived (before any hold)
    method: str
    path: str  # without the query string
    status: int  # what the client was answered (502: the upstream failed; 0: dropped unanswered)
    refused: bool  # answered (or dropped) by a fault rather than by the upstream


@dataclass(frozen=True)
class _Answer:
    """What a fault answers instead of the upstream: a status, headers and a body, or nothing."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False  # close the connection without answering


def _s3_error(status: int, code: str, message: str, retry_after: float | None = None) -> _Answer:
    """An error as S3 gives it: an XML document naming the code (the resource is filled in later)."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message><Resource>{{resource}}</Resource>"
            f"<RequestId>{{request_id}}</RequestId></Error>").encode()
    headers = [("Content-Type", "application/xml")]
    if retry_after is not None:
        headers.append(("Retry-After", f"{retry_after:g}"))
    return _Answer(status, body, tuple(headers))


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
        self._fault: _Rule | None = None  # requests answered by _answer instead of the upstream
        self._fault_left: int | None = None  # None: until clear()
        self._answer = _Answer(503)
        self._hold: _Rule | None = None
        self._hold_skip = 0
        self._held = 0  # requests parked so far (they may have been released since)
        self._corrupt: _Rule | None = None
        self._corrupted = 0  # answers whose body had a bit flipped

    # -- controls ------------------------------------------------------------------------------

    def busy(self, count: int | None, retry_after: float = 1.0, status: int = 503, *,
             method: str | None = None, path_prefix: str | None = None, code: str = "SlowDown") -> None:
        """Refuse the next ``count`` matching requests (None: all until :meth:`clear`) as throttled."""
        self._set_fault(count, method, path_prefix, _s3_error(
            status, code, "Please reduce your request rate (fault injected by the test).", retry_after))

    def error(self, count: int | None, status: int, code: str, message: str = "fault injected by the test",
              *, method: str | None = None, path_prefix: str | None = None) -> None:
        """Answer the next ``count`` matching requests with an S3-style XML error ``code``."""
        self._set_fault(count, method, path_prefix, _s3_error(status, code, message))

    def page(self, count: int | None, status: int, body: bytes = LOGIN_PAGE, *,
             content_type: str = "text/html", method: str | None = None,
             path_prefix: str | None = None) -> None:
        """Answer the next ``count`` matching requests with a web page (``status`` may well be 200)."""
        self._set_fault(count, method, path_prefix,
                        _Answer(status, body, (("Content-Type", content_type),)))

    def missing(self, *, method: str | None = None, path_prefix: str | None = None) -> None:
        """Answer every matching request with 404 ``NoSuchKey`` until :meth:`clear`."""
        self._set_fault(None, method, path_prefix,
                        _s3_error(404, "NoSuchKey", "The specified key does not exist."))

    def drop(self, *, method: str | None = None, path_prefix: str | None = None) -> None:
        """Close the connection of every matching request without an answer until :meth:`clear`."""
        self._set_fault(None, method, path_prefix, _Answer(0, drop=True))

    def _set_fault(self, count: int | None, method: str | None, path_prefix: str | None,
                   answer: _Answer) -> None:
        with self._lock:
            self._fault = _Rule(method, path_prefix)
            self._fault_left = count
            self._answer = answer

    def hold(self, *, method: str | None = None, path_prefix: str | None = None, skip: int = 0) -> None:
        """Park matching requests, after letting ``skip`` of them through, until :meth:`release`."""
        with self._lock:
            self._hold, self._hold_skip, self._held = _Rule(method, path_prefix), skip, 0

    def corrupt(self, *, method: str | None = "GET", path_prefix: str | None = None) -> None:
        """Flip one bit in the middle of the body of every matching answer until :meth:`clear`."""
        with self._lock:
            self._corrupt = _Rule(method, path_prefix)

    @property
    def corrupted(self) -> int:
        """Answers whose body had a bit flipped so far."""
        with self._lock:
            return self._corrupted

    def release(self) -> None:
        """Let parked requests go on to the upstream, and park no more."""
        with self._lock:
            self._hold = None
            self._lock.notify_all()

    def clear(self) -> None:
        """Back to a plain pass-through proxy."""
        with self._lock:
            self._fault = None
            self._corrupt = None
        self.release()

    def reset(self) -> None:
        """:meth:`clear`, and forget what was seen: a fresh proxy for the next test."""
        self.clear()
        with self._lock:
            self._seen.clear()
            self._held = 0
            self._corrupted = 0

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

    def _admit(self, method: str, path: str) -> _Answer | None:
        """Park the request if a hold says so; then the answer a fault gives it, or None to forward it."""
        with self._lock:
            if self._hold is not None and self._hold.matches(method, path):
                if self._hold_skip > 0:
                    self._hold_skip -= 1
                else:
                    self._held += 1
                    self._lock.notify_all()
                    self._lock.wait_for(lambda: self._hold is None, HOLD_LIMIT)
            if self._fault is None or not self._fault.matches(method, path):
                return None
            if self._fault_left is not None:
                self._fault_left -= 1
                if self._fault_left <= 0:
                    self._fault = None
            return self._answer

    def _flip_at(self, method: str, path: str, length: int | None) -> int | None:
        """Where to flip a bit of this answer's body (its middle), or None to leave it alone."""
        with self._lock:
            if self._corrupt is None or not self._corrupt.matches(method, path) or not length:
                return None
            self._corrupted += 1
            return length // 2

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
            status = self._refuse(refusal)
        else:
            status = self._forward()
        faults._record(Seen(arrived, self.command, path, status, refusal is not None))

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_request

    def _request_length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def _refuse(self, answer: _Answer) -> int:
        """Give a fault's answer instead of the upstream's (or none: the connection just closes)."""
        self._drain(self._request_length())
        if answer.drop:
            self.close_connection = True
            return 0
        body = answer.body
        if b"{resource}" in body:  # an S3 error names the resource and a request id
            body = body.replace(b"{resource}", escape(self.path).encode()).replace(
                b"{request_id}", uuid.uuid4().hex.encode())
        self.send_response_only(answer.status, REASONS.get(answer.status))
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return answer.status

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
        length = response.getheader("Content-Length")
        flip = None if bodiless else self.server.faults._flip_at(
            self.command, urlsplit(self.path).path, int(length) if length else None)
        sent = 0
        while piece := response.read(BLOCK):
            if flip is not None and sent <= flip < sent + len(piece):
                piece = bytearray(piece)
                piece[flip - sent] ^= 0x10
            self.wfile.write(piece)
            sent += len(piece)
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
