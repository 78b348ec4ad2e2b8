"""Where musicfs keeps its files by default, and the directories it creates for itself: private
to the user who runs it (0700).

The default locations follow the XDG base directories. They live here, apart from
:mod:`musicfs.config`, because every command needs them and most need no config: a command
that only asks a running daemon does not pay for the config's parser and types (CLI-1).

The state directory (indexes, pid files, logs) and the chunk cache hold what a
library contains and where it lives, and the cache holds the music itself. On a
machine shared with other users none of that is theirs to read, whatever the
umask says, so every directory musicfs has to create is made 0700 (FAULT-35).
A directory that already exists is left as it is: it may be one the user chose
and shares on purpose (a ``--cache-dir`` on a shared disk).
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_MODE = 0o700


def state_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "musicfs"


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "musicfs"


def libraries_dir() -> Path:
    """Where library files live: one ``<name>.toml`` per library (``musicfs mount --all``)."""
    return config_home() / "libraries"


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "musicfs"


def make_private(path: Path | str) -> Path:
    """Create ``path`` and any missing parents as 0700 directories; return it."""
    path = Path(path)
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_MODE)
        except FileExistsError:  # made meanwhile by another process: theirs to decide
            continue
        os.chmod(directory, PRIVATE_MODE)  # mkdir's mode is cut by the umask; this is exact
    return path
