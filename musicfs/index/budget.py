"""What reading one file's tags may cost: bytes read, and CPU time.

A library holds hostile files too (fuzzed bytes, headers promising gigabytes,
a 100 MB embedded picture). A tag parser reads, copies and decodes whatever a
header asks for, and holds three or four copies of a tag block it loads (a
100 MB picture costs a scan 300 MB or more); it may also spin for a long time
without reading anything (mutagen decodes a UTF-16 frame one byte at a time,
about four seconds per megabyte). So a parser gets the file through a
:class:`BudgetedFile`, and runs under the :data:`WATCHDOG`:

* :class:`BudgetedFile` refuses any read that would take the total read from
  the file past ``limit`` bytes, *before* reading (a read is also cut at the
  end of the file, so a header claiming 8 EiB allocates nothing). Memory per
  file is thus a few times the limit, whatever the file claims.
* :class:`Watchdog` reads the CPU clock of each parsing thread and, once a parse
  has used more than its budget, raises :class:`Refused` inside that thread.
  CPU time, not wall time: waiting on a slow remote origin is not the file's
  fault. Raising in another thread is done with ``PyThreadState_SetAsyncExc``,
  the one way to stop Python code that neither reads nor returns; it lands at
  the parser's next bytecode.

Either refusal is recorded on the file object (``refused``), because parsers
wrap exceptions in their own; so is an origin's failure (``origin_error``),
which is the origin's, not the file's.
"""

from __future__ import annotations

import ctypes
import io
import threading
import time
from typing import BinaryIO

from ..errors import NotFound, OriginUnavailable


class Refused(Exception):
    """Raised into a parser that went over a budget; the file object keeps the reason."""


class BudgetedFile(io.RawIOBase):
    """A read-only view of ``size`` bytes of ``raw`` that lets at most ``limit`` bytes be read in all."""

    def __init__(self, raw: BinaryIO, name: str, size: int, limit: int):
        super().__init__()
        self.raw, self.name, self.size, self.limit = raw, name, size, limit
        self.used = 0
        self.refused: tuple[str, str] | None = None  # (reason, detail) once a budget ran out
        self.origin_error: NotFound | OriginUnavailable | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def read(self, size: int | None = -1) -> bytes:
        left = max(0, self.size - self.raw.tell())
        want = left if size is None or size < 0 else min(size, left)
        if self.used + want > self.limit:
            self.refused = ("too large to index",
                            f"reading its tags and stream headers takes more than {self.limit >> 20} MiB of "
                            f"the file (a tag or embedded picture that large, or a header that claims one)")
            raise Refused(self.refused[0])
        self.used += want
        try:
            return self.raw.read(want) if want else b""
        except (NotFound, OriginUnavailable) as exc:
            self.origin_error = exc
            raise

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)


_raise_in = ctypes.pythonapi.PyThreadState_SetAsyncExc
_raise_in.argtypes = (ctypes.c_ulong, ctypes.py_object)
_clear_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))  # the same call with NULL: drop a pending one


class Watchdog:
    """Stops parses that use more than ``seconds`` of their thread's CPU.

    ``start(file)`` in the parsing thread before parsing, ``stop(file)`` after,
    in a ``finally``. A thread is told to stop once per parse (its ``file``
    records why); ``stop`` withdraws a stop not yet delivered, so none escapes
    the parse. The watchdog thread runs only while parses are registered.
    """

    def __init__(self, seconds: float, period: float = 0.2):
        self.seconds, self.period = seconds, period
        self._lock = threading.Lock()
        self._parses: dict[int, tuple[int, float, BudgetedFile]] = {}
        self._thread: threading.Thread | None = None
        self.stopped = 0  # parses stopped so far (for tests and statistics)

    def start(self, file: BudgetedFile) -> None:
        ident = threading.get_ident()
        clock = time.pthread_getcpuclockid(ident)
        with self._lock:
            self._parses[ident] = (clock, time.clock_gettime(clock), file)  # replaces a stale entry
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="musicfs-tag-watchdog", daemon=True)
                self._thread.start()

    def stop(self, file: BudgetedFile) -> None:
        ident = threading.get_ident()
        with self._lock:
            entry = self._parses.get(ident)
            if entry is not None and entry[2] is file:
                del self._parses[ident]
            if file.refused is not None:
                _clear_in(ident, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.period)
            with self._lock:
                if not self._parses:
                    self._thread = None
                    return
                for ident, (clock, started, file) in list(self._parses.items()):
                    try:
                        spent = time.clock_gettime(clock) - started
                    except OSError:  # the thread is gone (a stale entry)
                        del self._parses[ident]
                        continue
                    if spent > self.seconds and file.refused is None:
                        file.refused = ("too slow to index",
                                        f"reading its tags took more than {self.seconds:g} s of CPU")
                        self.stopped += 1
                        _raise_in(ident, Refused)
