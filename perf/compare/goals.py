"""The goals of issue 18, one per metric, judged on musicfs' figures against its peers'."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    """A goal of issue 18 for one row: musicfs' median against a peer's (times ``factor``),
    against a constant, or both; ``None`` when what it needs was not measured."""

    text: str
    judge: Callable[[Callable[[str], float | None]], tuple[bool | None, str]]
    # judged on the highest round, not the median: a peak that one round in three reaches
    # is the daemon's peak
    highest: bool = False


def _at_least(peer: str, factor: float = 1.0):
    def judge(m: Callable[[str], float | None]) -> tuple[bool | None, str]:
        mine, theirs = m("musicfs"), m(peer)
        if mine is None or theirs is None:
            return None, f"{peer} not measured"
        return mine >= factor * theirs, ""
    return judge


def _at_most(peer: str, factor: float = 1.0, strict: bool = False):
    def judge(m: Callable[[str], float | None]) -> tuple[bool | None, str]:
        mine, theirs = m("musicfs"), m(peer)
        if mine is None or theirs is None:
            return None, f"{peer} not measured"
        return (mine < factor * theirs) if strict else (mine <= factor * theirs), ""
    return judge


def _constant(limit: float, higher: bool):
    def judge(m: Callable[[str], float | None]) -> tuple[bool | None, str]:
        mine = m("musicfs")
        if mine is None:
            return None, "musicfs not measured"
        return (mine >= limit) if higher else (mine <= limit), ""
    return judge


def _cold_seq(m: Callable[[str], float | None]) -> tuple[bool | None, str]:
    """>= bindfs, and > 500 MB/s unless the disk itself (native, cold) is slower than that."""
    mine, bindfs, native = m("musicfs"), m("bindfs"), m("native")
    if mine is None:
        return None, "musicfs not measured"
    floor = 500.0 if native is None else min(500.0, native)
    notes = [] if native is not None else ["native not measured"]
    met = mine >= floor
    if bindfs is None:
        notes.append("bindfs not measured")
    else:
        met = met and mine >= bindfs
    return met, "; ".join(notes)


def _shown_only(m: Callable[[str], float | None]) -> tuple[bool | None, str]:
    return None, ""


GOALS = {
    "cold_seq": Goal(">= bindfs, > 500 MB/s where the disk allows", _cold_seq),
    # where a sequential read's time goes: a track's start, waiting on the disk, against the rest
    "first_mib_cold": Goal("none (shown: a track's start)", _shown_only),
    "first_mib_cached": Goal("none (shown: a track's start)", _shown_only),
    "cold_parallel": Goal(">= bindfs", _at_least("bindfs")),
    "cached_remount": Goal(">= 800 MB/s", _constant(800.0, higher=True)),
    "warm_seq": Goal(">= 0.5x native", _at_least("native", 0.5)),
    "list_dir": Goal("<= 3x native", _at_most("native", 3.0)),
    "ls_l": Goal("faster than rclone", _at_most("rclone", strict=True)),
    "find": Goal("faster than rclone", _at_most("rclone", strict=True)),
    "peak_rss": Goal("<= 200 MB (highest round)", _constant(200.0, higher=False), highest=True),
    "idle_rss": Goal("<= 50 MB (highest round)", _constant(50.0, higher=False), highest=True),
}
