"""Writing a file on an SFTP server: what :meth:`SftpOrigin.put` does on one session.

Split from :mod:`musicfs.origins.sftp`, which lends the session (its pool), maps the
server's answers to musicfs's errors and removes what a failed put left. Here, in order:

1. The target's folder is checked, as reads check their files: its real path
   (``SSH_FXP_REALPATH``) must lie inside the root's, so a link planted on the way
   cannot send the file elsewhere. Missing folders are made (``SSH_FXP_MKDIR``) from
   the root down, each checked the same way before anything is made inside it.
2. The bytes go to a new hidden file beside the target (``SSH_FXP_OPEN`` with
   create-exclusive, so nothing already there is followed or overwritten), in write
   requests of the server's largest size (OpenSSH's ``limits@openssh.com``), up to
   :data:`WRITES_IN_FLIGHT` of them sent before the first is answered: one round trip
   per few MiB, not one per request. The file is flushed to the server's disk when it
   offers ``fsync@openssh.com``, and closed, the close answered (a server reports a
   failed write as late as that).
3. It is renamed over the target with ``posix-rename@openssh.com``, which is
   rename(2) on the server: atomic, readers see the old file or the new one.
   A server without that extension gets SFTP's own rename, which cannot replace a
   file on most servers (OpenSSH's refuses). When it is refused and the target
   exists, the old file is renamed aside, the new one renamed into place, and the old
   one removed: never a partial file, but for the instant between the two renames
   there is none, and a reader then finds the file missing. If the second rename
   fails, the old file is renamed back.

No deadline covers the whole put (it may be hundreds of MB): each wait for the
server has ``timeout`` seconds. A send can block too, when the server stops reading
and the SSH window fills; :class:`_Stall` closes the session if a send makes no
progress for ``timeout`` seconds, so a hung server fails a put as it fails a read.
"""

from __future__ import annotations

import logging
import stat as stat_mode
import threading
import time
from collections import deque
from types import TracebackType

from .sftpwire import FAILURE, NO_SUCH_FILE, POSIX_RENAME, ConnectionLost, SftpChannel, StatusError, within
from .writes import Taken, temp_name

log = logging.getLogger(__name__)

WRITES_IN_FLIGHT = 16  # write requests sent and not yet answered (16 x 256 KiB with OpenSSH)
READ_SIZE = 1 << 20  # bytes asked of the source at once


def _check_inside(real: str, root: str | None, where: str) -> None:
    """ValueError unless the real path ``real`` (of ``where``) lies inside the real path of the root."""
    if root is None or not within(real, root):
        raise ValueError(f"path escapes the origin: {where!r} leads to {real!r}, outside the root")


class _Stall:
    """Aborts ``sftp`` when a send inside ``with stall:`` takes longer than ``timeout`` seconds."""

    def __init__(self, sftp: SftpChannel, timeout: float):
        self.sftp, self.timeout = sftp, timeout
        self.since: float | None = None  # when the send under way began
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="musicfs-sftp-put-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.timeout / 4)):
            since = self.since
            if since is not None and time.monotonic() - since > self.timeout:
                self.fired = True  # the blocked send fails with ConnectionLost, and so do the others
                self.sftp.abort(f"a write made no progress for {self.timeout:g} s")
                return

    def __enter__(self) -> _Stall:
        self.since = time.monotonic()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.since = None
        if self.fired and isinstance(exc, ConnectionLost):
            raise TimeoutError(f"a write made no progress for {self.timeout:g} s") from None

    def stop(self) -> None:
        self._done.set()


class Upload:
    """One put: ``folders`` are the server paths from the origin's root (first, never made) down to
    the target's folder (last); ``target`` is the file's server path."""

    def __init__(self, folders: list[str], target: str, timeout: float):
        self.folders, self.target, self.timeout = folders, target, timeout
        self.name = target.rpartition("/")[2]
        self.temp = self._beside(temp_name(self.name))
        self.started = False  # the temporary file may exist: a failed put removes it
        self.stored = 0  # bytes written

    def _beside(self, name: str) -> str:
        folder = self.folders[-1]
        return name if folder in ("", ".") else f"{folder.rstrip('/')}/{name}"

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    def run(self, sftp: SftpChannel, taken: Taken) -> None:
        """All of it on ``sftp``; raises what the server answered (StatusError), TimeoutError,
        ConnectionLost, or ValueError for a folder that leads out of the root."""
        self.prepare_folder(sftp)
        self.started = True
        try:
            handle = sftp.create(self.temp, self._deadline())
        except StatusError:
            self.started = False  # refused: nothing was made
            raise
        try:
            self._write(sftp, handle, taken)
            sftp.fsync(handle, self._deadline())
        except BaseException:
            sftp.close_handle(handle)
            raise
        sftp.close_file(handle, self._deadline())
        self._replace(sftp)

    def prepare_folder(self, sftp: SftpChannel) -> None:
        """Check that the target's folder lies inside the root, and the target too when it is a link
        (as reads check what they read); make the folder (and those above) if missing."""
        root = sftp.ask_realpath(self.folders[0]) if sftp.root is None else None
        where, goal = sftp.ask_realpath(self.folders[-1]), sftp.ask_realpath(self.target)
        try:
            attrs = sftp.stat(self.folders[-1], self._deadline())
        except StatusError as exc:
            if exc.code != NO_SUCH_FILE:
                raise
            attrs = None
        if root is not None:
            sftp.root = sftp.realpath(root, self._deadline())
        if attrs is None:
            self._make_folders(sftp)
            return
        _check_inside(sftp.realpath(where, self._deadline()), sftp.root, self.folders[-1])
        if not stat_mode.S_ISDIR(attrs.mode or 0):
            raise StatusError(FAILURE, f"{self.folders[-1]} is not a folder")
        _check_inside(sftp.realpath(goal, self._deadline()), sftp.root, self.target)

    def _make_folders(self, sftp: SftpChannel) -> None:
        """Make each missing folder below the root, checking where each leads before going into it."""
        for folder in self.folders[1:]:
            made, where = sftp.ask_mkdir(folder), sftp.ask_realpath(folder)
            refused = None
            try:
                sftp.wait_ok(made, self._deadline())
            except StatusError as exc:  # it is there already, or cannot be made
                refused = exc
            try:
                real = sftp.realpath(where, self._deadline())
            except StatusError:
                raise refused or StatusError(NO_SUCH_FILE, f"{folder} is missing") from None
            _check_inside(real, sftp.root, folder)

    def _write(self, sftp: SftpChannel, handle: bytes, taken: Taken) -> None:
        """The source into ``handle``, :data:`WRITES_IN_FLIGHT` requests at a time."""
        waiting: deque = deque()
        size = sftp.write_size
        stall = _Stall(sftp, self.timeout)
        try:
            for chunk in taken.chunks(READ_SIZE):
                for start in range(0, len(chunk), size):
                    if len(waiting) >= WRITES_IN_FLIGHT:
                        sftp.wait_ok(waiting.popleft(), self._deadline())
                    piece = chunk[start:start + size]
                    with stall:
                        waiting.append(sftp.ask_write(handle, self.stored, piece))
                    self.stored += len(piece)
            while waiting:
                sftp.wait_ok(waiting.popleft(), self._deadline())
        finally:
            stall.stop()

    def _replace(self, sftp: SftpChannel) -> None:
        """Rename the written file over the target (see the module's notes for servers without
        posix-rename)."""
        if POSIX_RENAME in sftp.extensions:
            sftp.rename(self.temp, self.target, self._deadline(), replace=True)
            return
        try:
            sftp.rename(self.temp, self.target, self._deadline(), replace=False)
            return
        except StatusError as exc:
            refused = exc  # the target exists (or renaming is not allowed at all)
        aside = self._beside(temp_name(self.name))
        try:
            sftp.rename(self.target, aside, self._deadline(), replace=False)
        except StatusError:
            raise refused from None
        try:
            sftp.rename(self.temp, self.target, self._deadline(), replace=False)
        except BaseException:
            try:
                sftp.rename(aside, self.target, self._deadline(), replace=False)
            except (StatusError, TimeoutError, ConnectionLost) as exc:
                log.error("the old file %s was moved aside to %s and could not be put back: %s",
                          self.target, aside, exc)
            raise
        try:
            sftp.remove(aside, self._deadline())
        except StatusError as exc:
            log.warning("the old file %s, moved aside to %s, could not be removed: %s",
                        self.target, aside, exc)


def remove_file(sftp: SftpChannel, root: str, target: str, deadline: float) -> None:
    """Unlink ``target`` once it and its folder are found to lead inside the real path of ``root``
    (as reads check); a file or folder that is not there is no error. ValueError for one that
    leads out of the root."""
    question = sftp.ask_realpath(root) if sftp.root is None else None
    where = sftp.ask_realpath(target.rpartition("/")[0] if "/" in target else ".")
    goal = sftp.ask_realpath(target)
    if question is not None:
        sftp.root = sftp.realpath(question, deadline)
    for answer in (where, goal):  # the folder first: a missing one inside it says nothing
        try:
            real = sftp.realpath(answer, deadline)
        except StatusError as exc:
            if exc.code == NO_SUCH_FILE:
                return  # no folder, no file
            raise
        _check_inside(real, sftp.root, target)
    remove_if_there(sftp, target, deadline)


def remove_if_there(sftp: SftpChannel, path: str, deadline: float) -> None:
    """Unlink ``path``; one that is not there is no error."""
    try:
        sftp.remove(path, deadline)
    except StatusError as exc:
        if exc.code != NO_SUCH_FILE:
            raise
