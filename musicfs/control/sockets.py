"""Where a mount's control socket lives, how it is made private, and who may talk to it.

The socket of the daemon serving a mountpoint is ``<run dir>/<key>.sock``,
where the run dir is ``$XDG_RUNTIME_DIR/musicfs`` (a per-user tmpfs made by
the login manager) or, without one, ``<state dir>/run``, and the key is the
one the pid file uses. The directory is 0700 and the socket 0600: only the
owner (and root) can connect, which the kernel enforces; each connection is
checked once more by its peer's credentials (``SO_PEERCRED``).

A Unix socket's path may not exceed 107 bytes; a state directory deep in a
home or a test's temporary folder easily does. Such a path is reached
through ``/proc/self/fd/<fd of its directory>/<name>``, which is short.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

from ..dirs import make_private

SUN_PATH_MAX = 107  # bytes of sockaddr_un.sun_path, less the terminating NUL
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def run_dir(state_dir: Path) -> Path:
    """The folder for control sockets: ``$XDG_RUNTIME_DIR/musicfs``, or the state folder's ``run``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "musicfs"
    return state_dir / "run"


def socket_path(state_dir: Path, key: str) -> Path:
    return run_dir(state_dir) / f"{key}.sock"


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A path the socket calls accept for ``path``: itself, or one through /proc if it is too long."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def bind_private(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, in a 0700 folder, mode 0600.

    A socket left there by a daemon that was killed is replaced: nothing
    answers on it any more (tested by connecting). A live one means another
    daemon serves this mountpoint, which its locks already refused; so here
    it is an error.
    """
    make_private(path.parent)
    if path.parent.stat().st_mode & 0o077:
        os.chmod(path.parent, 0o700)
    with reachable(path) as where:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                raise FileExistsError(f"{path} exists and is not a socket")
            if _answers(where):
                raise FileExistsError(f"another daemon answers on {path}")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(where)  # in a 0700 folder: no moment in which others could connect (the umask
            os.chmod(path, 0o600)  # is the whole process's, so it is not touched)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
    return sock


def _answers(where: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(where)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket, where the platform says."""
    try:
        _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                           _PEERCRED.size))
    except (AttributeError, OSError):
        return None
    return uid
