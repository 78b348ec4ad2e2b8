"""The origin retry schedule: 100 ms, 500 ms, 2 s with jitter, bounded by a deadline (NFR-7.3)."""

from __future__ import annotations

import time

import pytest
import trio

from musicfs.errors import NotFound, OriginUnavailable
from musicfs.origins.base import OriginBusy
from musicfs.origins.retry import call_with_retry

pytestmark = pytest.mark.req("NFR-7.3")


class Flaky:
    """Fails ``failures`` times, then answers; remembers when each attempt came (trio clock)."""

    def __init__(self, failures: int, error: BaseException = OSError("connection reset")):
        self.failures, self.error, self.calls = failures, error, []

    def __call__(self) -> bytes:
        self.calls.append(trio.from_thread.run_sync(trio.current_time))  # runs in a worker thread
        if len(self.calls) <= self.failures:
            raise self.error
        return b"ok"


def run(flaky: Flaky, deadline: float = 30.0):
    errors = []  # real time: a mock clock would jump ahead while the worker thread runs

    async def main():
        return await call_with_retry(
            lambda: flaky(), deadline=trio.current_time() + deadline, limiter=trio.CapacityLimiter(1),
            on_error=lambda exc, attempt: errors.append(attempt))

    return trio.run(main), errors


def gaps(calls):
    return [b - a for a, b in zip(calls, calls[1:])]


def test_backoff_schedule_with_jitter():
    flaky = Flaky(failures=3)
    result, errors = run(flaky)
    assert result == b"ok" and errors == [1, 2, 3]
    for gap, base in zip(gaps(flaky.calls), (0.1, 0.5, 2.0)):
        assert base <= gap <= base * 1.1 + 0.05  # jitter, plus scheduling slack


def test_gives_up_after_the_schedule():
    flaky = Flaky(failures=10)
    with pytest.raises(OriginUnavailable):
        run(flaky)
    assert len(flaky.calls) == 4


def test_deadline_bounds_the_whole_sequence():
    flaky = Flaky(failures=10)
    with pytest.raises(OriginUnavailable):
        run(flaky, deadline=1.0)
    assert flaky.calls[-1] - flaky.calls[0] <= 1.0
    assert len(flaky.calls) == 3  # at 0, 0.1, 0.6 s; the next (2.6 s) is past the deadline


def test_a_missing_file_is_not_retried():
    flaky = Flaky(failures=5, error=FileNotFoundError("gone"))
    with pytest.raises(NotFound):
        run(flaky)
    assert len(flaky.calls) == 1


def test_retry_after_of_a_busy_origin_is_honoured():
    flaky = Flaky(failures=1, error=OriginBusy("slow down", retry_after=0.8))
    result, errors = run(flaky)
    assert result == b"ok" and errors == [1]
    (gap,) = gaps(flaky.calls)
    assert 0.8 <= gap <= 0.8 + 0.2  # the server's wait, not the schedule's 100 ms


def test_a_short_retry_after_does_not_shorten_the_schedule():
    flaky = Flaky(failures=2, error=OriginBusy("slow down", retry_after=0.0))
    result, _ = run(flaky)
    assert result == b"ok"
    for gap, base in zip(gaps(flaky.calls), (0.1, 0.5)):
        assert base <= gap <= base * 1.1 + 0.05


def test_retry_after_past_the_deadline_is_cut_at_the_deadline():
    flaky = Flaky(failures=10, error=OriginBusy("slow down", retry_after=60))
    started = time.monotonic()
    with pytest.raises(OriginUnavailable):
        run(flaky, deadline=0.5)
    assert len(flaky.calls) == 1
    assert time.monotonic() - started < 2  # gave up at the deadline, not after 60 s
