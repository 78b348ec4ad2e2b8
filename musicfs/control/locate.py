"""Finding the daemon of a mount from the pid files, and the error every control call raises.

Kept apart from :mod:`musicfs.control.client` so that code which only needs
to know whether a mount runs (``musicfs mount``, ``musicfs scan``) does not
import the HTTP client: every import is paid by a mount's start-up time.
"""

from __future__ import annotations

from pathlib import Path

from .. import daemon
from ..errors import MusicFSError


class ControlError(MusicFSError):
    """A request to a mount's control API failed; the message says why, in one line."""


def find_mount(state_dir: Path, mountpoint: Path | None) -> dict:
    """The pid-file record of the daemon serving ``mountpoint``, or of the only one running."""
    mounts = [m for m in daemon.running_mounts(state_dir) if m.get("socket")]
    if mountpoint is not None:
        target = str(daemon.canonical(mountpoint))
        for info in mounts:
            if info["mountpoint"] == target:
                return info
        raise ControlError(f"no musicfs daemon serves {target}")
    if not mounts:
        raise ControlError("no musicfs mount is running")
    if len(mounts) > 1:
        raise ControlError("several mounts are running; name one: "
                           + ", ".join(m["mountpoint"] for m in mounts))
    return mounts[0]


def mounts_of_index(state_dir: Path, index: Path) -> list[dict]:
    """The pid-file records of the running daemons that serve the index at ``index``."""
    target = Path(index).absolute()
    return [m for m in daemon.running_mounts(state_dir)
            if m.get("socket") and m.get("index") and Path(m["index"]).absolute() == target]
