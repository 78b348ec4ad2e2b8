"""Running the mount as a daemon: locks, pid files, stale mounts, background start, stop.

* One daemon per index, per chunk cache and per mountpoint: each holds an
  exclusive ``flock`` on a lock file; a second one is refused with the pid of
  the first (FAULT-27). Two daemons sharing a cache would each evict and
  reconcile the other's chunks.
* The soft limit on open files is raised to the hard limit at start: a
  thousand open handles must never end in EMFILE (FAULT-37).
* A mountpoint left behind by a killed daemon ("Transport endpoint is not
  connected") is detected and lazily unmounted before mounting again (NFR-8.2).
* Background mode starts ``musicfs mount --foreground`` in a new session with
  its output in a log file under the state directory and waits until the
  mount answers.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .dirs import make_private
from .errors import MusicFSError

log = logging.getLogger(__name__)


class DaemonError(MusicFSError):
    """The daemon cannot start or stop; the message says why."""


@dataclass(frozen=True)
class RunFiles:
    """Where one mountpoint's daemon keeps its pid, lock and log."""

    pid: Path
    lock: Path
    log: Path

    @classmethod
    def for_mountpoint(cls, state_dir: Path, mountpoint: Path) -> RunFiles:
        key = hashlib.sha1(str(canonical(mountpoint)).encode()).hexdigest()[:12]
        run = state_dir / "run"
        return cls(run / f"{key}.pid", run / f"{key}.lock", state_dir / "log" / f"{key}.log")


def canonical(mountpoint: Path | str) -> Path:
    """The mountpoint's absolute path, resolving symlinks in its parents only.

    Never stats the mountpoint itself: that would hang on a mount whose daemon
    is not answering (or is this very process, before it serves requests).
    """
    absolute = os.path.abspath(os.path.expanduser(mountpoint))
    return Path(os.path.realpath(os.path.dirname(absolute))) / os.path.basename(absolute)


def _mount_entry(mountpoint: Path) -> tuple[str, str] | None:
    """(fs type, source) of the mount at ``mountpoint``, or None."""
    target = str(canonical(mountpoint))
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[1].replace("\\040", " ") == target:
                return fields[2], fields[0]
    return None


def is_mounted(mountpoint: Path) -> bool:
    return _mount_entry(mountpoint) is not None


def is_stale(mountpoint: Path) -> bool:
    """A FUSE mount whose daemon is gone: every request fails with ENOTCONN.

    Asks with ``statvfs``, which the kernel always forwards to the daemon: a
    ``stat`` of the root can be answered from the kernel's attribute cache
    (musicfs hands out long attribute timeouts) and so succeed on a dead mount.
    """
    entry = _mount_entry(mountpoint)
    if entry is None or not entry[0].startswith("fuse"):
        return False
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def _fuse_connection(mountpoint: Path) -> str | None:
    """The fusectl connection id of the mount (the minor device number in mountinfo)."""
    target = str(canonical(mountpoint))
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            fields = line.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
                return fields[2].split(":")[1]
    return None


def _control(mountpoint: Path) -> Path | None:
    """The mount's fusectl folder (mounting fusectl if needed; root only), or None."""
    conn = _fuse_connection(mountpoint)
    if conn is None:
        return None
    control = Path("/sys/fs/fuse/connections")
    if not (control / conn).exists():
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(control)], check=False,
                       capture_output=True)
    return control / conn if (control / conn).exists() else None


def abort_connection(mountpoint: Path) -> bool:
    """Abort a hung mount's FUSE connection so every waiting process gets an error.

    The last resort when a daemon neither answers nor exits; the mountpoint
    becomes stale and :func:`recover_stale` can unmount it.
    """
    control = _control(mountpoint)
    try:
        if control is None:
            return False
        (control / "abort").write_text("1")
    except OSError:
        return False
    return True


def raise_background_limit(mountpoint: Path, limit: int) -> bool:
    """Let the kernel keep ``limit`` read-ahead requests in flight to this mount, not 12.

    Page-cache reads reach a FUSE daemon as background requests, and the
    kernel's default lets only 12 of them be outstanding per mount: a hundred
    players starting cold tracks would then wait on a slow origin twelve at a
    time. libfuse offers no way to ask for more at mount time from here, so the
    limit is raised through fusectl once the mount is up (root only; False if
    that is not possible).
    """
    control = _control(mountpoint)
    try:
        if control is None:
            return False
        (control / "max_background").write_text(str(limit))
        (control / "congestion_threshold").write_text(str(limit * 3 // 4))
    except OSError:
        return False
    return True


def raise_read_ahead(mountpoint: Path, kib: int) -> bool:
    """Let the kernel read ahead ``kib`` KiB of a file read in order through this mount, not 128.

    Every read request costs the daemon the same round trip whatever its size:
    1 MiB requests halve its work per byte of 128 KiB ones. The kernel takes the
    size from the mount's backing device (read_ahead_kb in sysfs; root only,
    False if that is not possible). A small read at the start of a file still
    gets a small window: the kernel grows it only for a reader that reads on.
    """
    try:
        device = os.stat(mountpoint).st_dev
        knob = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
        if int(knob.read_text()) < kib:
            knob.write_text(str(kib))
    except (OSError, ValueError):
        return False
    return True


def fusermount_unmount(mountpoint: Path, *, lazy: bool = False) -> bool:
    args = ["fusermount3", "-u", "-q"] + (["-z"] if lazy else []) + [str(mountpoint)]
    return subprocess.run(args, check=False, capture_output=True).returncode == 0


def recover_stale(mountpoint: Path) -> bool:
    """Unmount a stale musicfs mount; True if one was found and removed."""
    if is_stale(mountpoint):
        fusermount_unmount(mountpoint, lazy=True)
        return not is_mounted(mountpoint)
    return False


class Lock:
    """An exclusive, non-blocking flock; released when the process exits, however it exits."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what
        self._fd: int | None = None

    def acquire(self) -> None:
        make_private(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            # on a filesystem turned read-only (a failing cache disk) nothing can be changed there,
            # by us or a second daemon: an existing lock file is still locked, a missing one is moot
            if not self.path.exists():
                log.warning("%s is on a read-only filesystem: not locked", self.what)
                return
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DaemonError(f"{self.what} is already in use by another musicfs") from None
            self._fd = fd
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DaemonError(f"{self.what} is already in use by musicfs pid {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def fileno(self) -> int | None:
        """The lock file's descriptor while held (a forked child that must not keep it closes it)."""
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


M_ARENA_MAX = -8  # glibc's mallopt() parameter (malloc.h)
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process (before its threads start); True if done.

    glibc gives threads arenas of their own, up to eight per core. The daemon's
    worker threads (fills, chunk hashing, origin reads) allocate and free 64 KiB
    chunk buffers across all of them, and the freed memory stays fragmented in
    each: under a soak the daemon's resident memory grew ~150 MB an hour with
    its Python objects flat at ~20 MB (MM-6). Two arenas keep the threads from
    contending for one lock and stop the drift. ``MALLOC_ARENA_MAX`` in the
    environment, when set, is the user's choice and is left alone.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    import ctypes

    try:  # this process's own symbols, the C library's among them (find_library("c") runs ldconfig)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to cap
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_ARENA_MAX, arenas) == 1


def raise_open_files_limit() -> tuple[int, int]:
    """Lift this process's soft RLIMIT_NOFILE to its hard limit; return (before, after).

    The soft limit is often 1024 while the hard one is far higher. Open FUSE
    handles cost the daemon no descriptor of their own, but what serves them
    does (origin files read straight through, SQLite, sockets to remote
    origins, chunk files being read), and a daemon that hits EMFILE fails
    requests it could have served. An unlimited hard limit is capped at the
    kernel's ``fs.nr_open``, the most a process may set.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open", encoding="ascii") as nr_open:
                target = int(nr_open.read())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d to %d: %s", soft, target, exc)
            return soft, soft
        log.debug("open files limit raised from %d to %d", soft, target)
        return soft, target
    return soft, soft


def write_pidfile(files: RunFiles, mountpoint: Path, index: Path, **extra: str) -> None:
    make_private(files.pid.parent)
    tmp = files.pid.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "mountpoint": str(canonical(mountpoint)),
                               "index": str(index), "log": str(files.log), **extra}))
    os.replace(tmp, files.pid)


def read_pidfile(files: RunFiles) -> dict | None:
    try:
        return json.loads(files.pid.read_text())
    except (OSError, ValueError):
        return None


def running_mounts(state_dir: Path) -> list[dict]:
    """Pid-file contents of every daemon alive under ``state_dir``."""
    mounts = []
    for pidfile in sorted((state_dir / "run").glob("*.pid")):
        try:
            info = json.loads(pidfile.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info.get("pid"), int) and is_alive(info["pid"]):
            mounts.append(info)
    return mounts


def mount_of(path: Path, state_dir: Path) -> dict | None:
    """The running mount that contains ``path``, from the pid files (never stats the mount)."""
    target = os.path.abspath(path)
    for info in running_mounts(state_dir):
        root = info["mountpoint"].rstrip("/")
        if target == root or target.startswith(root + "/"):
            return info
    return None


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs. An exited daemon waiting to be reaped (a zombie: background
    daemons are reparented to init, which may reap late or never) counts as stopped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True


def start_background(argv: list[str], files: RunFiles, mountpoint: Path, timeout: float = 60.0) -> int:
    """Run ``musicfs <argv> --foreground`` detached; return its pid once the mount answers."""
    make_private(files.log.parent)
    with open(files.log, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "musicfs.cli.main", *argv], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, close_fds=True)
    try:
        wait_mounted(proc.pid, files, mountpoint, ended=lambda: proc.poll() is not None, timeout=timeout)
    except DaemonError:
        if proc.poll() is None:
            proc.terminate()
        raise
    return proc.pid


def wait_mounted(pid: int, files: RunFiles, mountpoint: Path, *, ended: Callable[[], bool] | None = None,
                 timeout: float = 60.0, poll: float = 0.005) -> None:
    """Return once daemon ``pid`` has mounted ``mountpoint`` (its pid file names it: a stale mount
    would not); a daemon that ends first is a :class:`DaemonError` with the end of its log."""
    ended = ended or (lambda: not is_alive(pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_pidfile(files)
        if info and info.get("pid") == pid and is_mounted(mountpoint):
            return
        if ended():
            tail = files.log.read_text(errors="replace").strip().splitlines()[-5:] if files.log.exists() else []
            raise DaemonError("the daemon exited before mounting:\n  " + "\n  ".join(tail))
        time.sleep(poll)
    raise DaemonError(f"the daemon did not mount within {timeout:.0f} s; see {files.log}")


def stop(files: RunFiles, mountpoint: Path, timeout: float = 15.0) -> str:
    """Stop the daemon serving ``mountpoint`` (SIGTERM, then wait); unmount leftovers."""
    info = read_pidfile(files)
    pid = info.get("pid") if info else None
    if pid and is_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if is_alive(pid):
            raise DaemonError(f"musicfs pid {pid} did not stop within {timeout:.0f} s")
        files.pid.unlink(missing_ok=True)
        return f"stopped musicfs pid {pid}"
    files.pid.unlink(missing_ok=True)
    if is_mounted(mountpoint):
        if fusermount_unmount(mountpoint) or fusermount_unmount(mountpoint, lazy=True):
            return f"unmounted {mountpoint}"
        raise DaemonError(f"could not unmount {mountpoint}")
    raise DaemonError(f"nothing is mounted at {mountpoint}")
