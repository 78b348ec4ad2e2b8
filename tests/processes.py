"""Helpers for the servers tests start as child processes."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For ``preexec_fn`` (runs in the child before exec): SIGTERM the child when the process
    that started it dies, so a test run killed before its clean-up leaves no server behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
