"""Reading the body of a ranged S3 GET within a deadline for the whole transfer, never short.

Split from :mod:`musicfs.origins.s3`, whose client hands each answer here.
"""

from __future__ import annotations

import re
import time

import urllib3.exceptions

from ..errors import OriginUnavailable

BODY_PIECE = 1 << 20  # the most one read of a body asks for (it returns what has arrived, often less)
# without urllib3's read1 (before 2.3), a read waits for all it asks: ask little, to check the clock often
FALLBACK_PIECE = 16 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/")


class RangedBody:
    """The body of a GetObject answer, read against a deadline for the whole request.

    Why: botocore's read timeout bounds each wait on the socket, and a read of
    ``n`` bytes (botocore's, urllib3's, http.client's) loops until it has all
    ``n``, so a body that keeps trickling in (a link at 1 KB/s, a server
    sending a byte every few seconds) never trips it. A 1 MiB read at 1 KB/s
    would take 17 minutes: the reader abandons it long before, but the worker
    thread and the connection stay taken until it ends, and repeated slow reads
    pile them up. So the body is read with urllib3's ``read1``, which returns
    whatever has arrived, and before each piece the socket's timeout is cut to
    the time left: a wait that blocks ends at the deadline too. No thread and
    no timer: one ``settimeout`` per piece. Waiting for the answer's headers is
    bounded by the per-wait timeout alone (botocore owns that socket then).

    Every failure is :class:`OriginUnavailable`. A body that ends before its
    ``Content-Length`` is an error, never a short read: checked here, since
    ``read1`` returns ``b""`` at a premature end. ``close`` closes the
    connection unless the body was read to its end, so a half-read connection
    is never reused.
    """

    def __init__(self, response: dict, deadline: float, budget: float, what: str):
        self._body = response["Body"]
        self._raw = self._body._raw_stream  # urllib3's response: botocore's wrapper has no read1
        self._read1 = getattr(self._raw, "read1", None)
        self._response = response
        self.left: int | None = response.get("ContentLength")  # bytes of the body not read yet
        self.deadline, self.budget, self.what = deadline, budget, what

    def start_at(self, offset: int) -> bool:
        """Check that the body starts at ``offset`` of the object; False if the object ends before it.

        A connection cut inside the headers leaves an answer that looks
        complete to http.client but lacks headers (Content-Length, Content-Range)
        and has no body: taken at its word, it would read as an empty or
        shifted range. So an answer must say how long its body is (or be
        chunked), and a 206 must be for the range asked.
        """
        meta = self._response.get("ResponseMetadata", {})
        status, headers = meta.get("HTTPStatusCode"), meta.get("HTTPHeaders", {})
        if self.left is None and "chunked" not in headers.get("transfer-encoding", ""):
            raise OriginUnavailable(f"{self.what}: the answer has no Content-Length (cut short?)")
        if status == 206:
            content_range = self._response.get("ContentRange") or ""
            ranged = _CONTENT_RANGE.match(content_range)
            if ranged is None or int(ranged[1]) != offset:
                raise OriginUnavailable(f"{self.what}: a partial answer with Content-Range "
                                        f"{content_range!r}, not a range from byte {offset}")
            return True
        if status == 200:  # a server that ignores Range answers with the whole object
            self._check_whole_object(headers)
            return self.skip(offset)
        raise OriginUnavailable(f"{self.what}: unexpected HTTP {status} to a ranged GET")

    def _check_whole_object(self, headers: dict[str, str]) -> None:
        """A 200 to a ranged GET must be the object itself, not a page put in its place.

        Every S3-compatible store answers a range with 206; a 200 comes from a
        server that ignores Range (then it is the whole object, with its ETag)
        or from something in between: a captive portal's login page, a proxy's
        error page. Those are HTML and carry no object ETag; taking them for
        the object would read as a file cut short after a few hundred bytes.
        """
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in ("text/html", "application/xhtml+xml") or not headers.get("etag"):
            raise OriginUnavailable(f"{self.what}: answered a ranged GET with a whole "
                                    f"{kind or 'untyped'} document{'' if headers.get('etag') else ' without an ETag'}"
                                    f", not the object (a captive portal or a proxy's page?)")

    def skip(self, count: int) -> bool:
        """Read past ``count`` bytes; False if the body ends first."""
        if self.left is not None and self.left <= count:
            return False
        while count > 0:
            piece = self._piece(min(count, BODY_PIECE), 0, count)
            if not piece:
                return False
            count -= len(piece)
        return True

    def read(self, size: int) -> bytes:
        """``size`` bytes, or fewer only where the body says it ends."""
        want = size if self.left is None else min(size, self.left)
        parts, got = [], 0
        while got < want:
            piece = self._piece(want - got, got, want)
            if not piece:
                if self.left is None:  # no Content-Length: the end of the body is the end
                    break
                raise OriginUnavailable(f"{self.what}: the body ended after {got} of {want} bytes")
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def close(self) -> None:
        self._body.close()

    def _piece(self, amount: int, got: int, want: int) -> bytes:
        """What has arrived, up to ``amount`` bytes, waiting no later than the deadline."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self._too_slow(got, want)
        # the socket of urllib3's connection (none once the body is done, or in a canned answer)
        sock = getattr(getattr(self._raw, "connection", None), "sock", None)
        try:
            if sock is not None:
                sock.settimeout(remaining)
            if self._read1 is not None:
                piece = self._read1(min(amount, BODY_PIECE))
            else:
                piece = self._raw.read(min(amount, FALLBACK_PIECE))
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # timed out, reset, cut short
            if time.monotonic() >= self.deadline:
                raise self._too_slow(got, want) from None
            raise OriginUnavailable(f"{self.what}: the connection broke after {got} of {want} bytes "
                                    f"({type(exc).__name__})") from None
        if self.left is not None:
            self.left -= len(piece)
        return piece

    def _too_slow(self, got: int, want: int) -> OriginUnavailable:
        return OriginUnavailable(f"{self.what}: took longer than {self.budget:g} s (too slow); gave up "
                                 f"after {got} of {want} bytes")
