"""Where and from what a requirement report was measured: the git commit and the machine.

A figure such as "p99 stat 0.8 ms" means little without the code it was measured
on and the machine that measured it: the same commit gives other numbers on two
shared cores than on a workstation, and a dirty tree may not be the commit at all.
The JSON report therefore carries both, and the HTML page shows them in its header.

Everything here tolerates its absence (no git, not a repository, no /proc): the
report is written anyway, with ``null`` where a fact could not be found.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_GIT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Commit:
    """The commit checked out in the rootdir; ``dirty`` when files differ from it."""

    sha: str
    dirty: bool


@dataclass(frozen=True)
class Machine:
    """The facts that most change a timing: cores, memory, kernel, Python."""

    cores: int | None
    memory_total_mb: int | None
    kernel: str
    python: str


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=_GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_commit(root: Path) -> Commit | None:
    """HEAD of the repository holding ``root``; None without git or outside a repository.

    Untracked files count as dirty: a new test file changes what was measured.
    """
    sha = _git(root, "rev-parse", "HEAD")
    if sha is None or not sha.strip():
        return None
    status = _git(root, "status", "--porcelain")
    return Commit(sha=sha.strip(), dirty=bool(status and status.strip()))


def memory_total_mb(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Total memory in MiB from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        for line in meminfo.read_text(encoding="ascii", errors="replace").splitlines():
            name, _, rest = line.partition(":")
            if name == "MemTotal":
                kib = int(rest.split()[0])
                return kib // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def this_machine() -> Machine:
    return Machine(cores=os.cpu_count(), memory_total_mb=memory_total_mb(),
                   kernel=platform.release(), python=platform.python_version())


def run_info(root: Path) -> dict[str, Any]:
    """The ``run`` object of the JSON report: commit (or None) and machine."""
    commit = git_commit(root)
    return {"commit": asdict(commit) if commit else None, "machine": asdict(this_machine())}
