"""The budgets a tag parser reads a file within: bytes (refused before reading) and CPU time."""

from __future__ import annotations

import io
import threading
import time

import pytest

from musicfs.index.budget import BudgetedFile, Refused, Watchdog

pytestmark = pytest.mark.req("FAULT-28")


def test_a_read_past_the_budget_is_refused_before_it_happens():
    raw = io.BytesIO(bytes(100))
    f = BudgetedFile(raw, "x.flac", 100, limit=40)
    assert f.read(30) == bytes(30) and f.used == 30
    with pytest.raises(Refused):
        f.read(20)
    assert raw.tell() == 30 and f.used == 30, "the refused read happened anyway"
    assert f.refused[0] == "too large to index"


def test_reads_are_cut_at_the_end_of_the_file():
    f = BudgetedFile(io.BytesIO(b"abcdef"), "x.flac", 6, limit=1 << 20)
    f.seek(4)
    assert f.read(1 << 62) == b"ef" and f.used == 2  # a header claiming 4 EiB allocates nothing
    f.seek(100)
    assert f.read() == b"" and f.used == 2
    buffer = bytearray(4)
    f.seek(0)
    assert f.readinto(buffer) == 4 and bytes(buffer) == b"abcd"


def test_the_watchdog_stops_a_parse_that_spins_and_nothing_escapes_it():
    dog = Watchdog(seconds=0.5, period=0.05)
    f = BudgetedFile(io.BytesIO(b""), "x.flac", 0, limit=1)
    started = time.monotonic()
    with pytest.raises(Refused):
        dog.start(f)
        try:
            while True:  # no read, no return: only the watchdog can end this
                pass
        finally:
            dog.stop(f)
    assert time.monotonic() - started < 10
    assert f.refused[0] == "too slow to index" and dog.stopped == 1
    deadline = time.monotonic() + 0.5  # a stop withdrawn by stop() never lands later
    while time.monotonic() < deadline:
        sum(range(1000))
    assert dog._parses == {}


def test_a_parse_within_budget_is_left_alone_and_the_watchdog_goes_idle():
    dog = Watchdog(seconds=5, period=0.05)
    f = BudgetedFile(io.BytesIO(b"abc"), "x.flac", 3, limit=10)
    dog.start(f)
    try:
        assert f.read() == b"abc"
        time.sleep(0.2)  # waiting is not CPU
    finally:
        dog.stop(f)
    assert f.refused is None and dog.stopped == 0
    deadline = time.monotonic() + 5
    while any(t.name == "musicfs-tag-watchdog" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the watchdog thread kept running with nothing to watch"
        time.sleep(0.05)
