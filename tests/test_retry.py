"""The origin retry schedule: 100 ms, 500 ms, 2 s with jitter, bounded by a deadline (NFR-7.3)."""

from __future__ import annotations

import time

import pytest
import trio

from musicfs.errors import NotFound, NotRepeatable, OriginReadOnly, OriginUnavailable
from musicfs.origins.base import OriginBusy
from musicfs.origins.retry import Failure, call_with_retry

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


def run(flaky, deadline: float = 30.0) -> tuple[bytes, list[Failure]]:
    """Call ``flaky`` with retries (real time: a mock clock would jump ahead while a worker thread
    runs); returns its answer and the failures reported on the way."""
    errors = []

    async def main():
        return await call_with_retry(
            lambda: flaky(), deadline=trio.current_time() + deadline, limiter=trio.CapacityLimiter(1),
            on_error=lambda failure: errors.append(failure))

    return trio.run(main), errors


def gaps(calls):
    return [b - a for a, b in zip(calls, calls[1:])]


def test_backoff_schedule_with_jitter():
    flaky = Flaky(failures=3)
    result, errors = run(flaky)
    assert result == b"ok" and [e.attempt for e in errors] == [1, 2, 3]
    assert not any(e.final for e in errors)  # each was retried
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


@pytest.mark.parametrize("error", [OriginReadOnly("nas", "zip", "store", "a.db"),
                                   NotRepeatable("put 'a.db': the source cannot be rewound")])
def test_refusals_no_attempt_would_change_are_raised_as_they_are(error):
    """A write to a read-only origin, or one whose source was partly read and cannot be rewound
    (another attempt would store the rest only): one attempt, and the error itself, not 'origin failed'."""
    flaky = Flaky(failures=5, error=error)
    with pytest.raises(type(error)) as info:
        run(flaky)
    assert info.value is error and len(flaky.calls) == 1


def test_retry_after_of_a_busy_origin_is_honoured():
    flaky = Flaky(failures=1, error=OriginBusy("slow down", retry_after=0.8))
    result, errors = run(flaky)
    assert result == b"ok" and [e.attempt for e in errors] == [1]
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


def failures_of(flaky, deadline: float = 30.0) -> list[Failure]:
    failures = []

    async def main():
        await call_with_retry(lambda: flaky(), deadline=trio.current_time() + deadline,
                              limiter=trio.CapacityLimiter(1), on_error=failures.append)

    with pytest.raises(OriginUnavailable):
        trio.run(main)
    return failures


def test_the_attempt_that_gives_up_is_reported_as_final_with_the_times_of_all():
    flaky = Flaky(failures=10)
    failures = failures_of(flaky)
    assert [(f.attempt, f.final) for f in failures] == [(1, False), (2, False), (3, False), (4, True)]
    last = failures[-1]
    expected = [call - flaky.calls[0] for call in flaky.calls]
    assert all(abs(a - b) < 0.05 for a, b in zip(last.started, expected)), (last.started, expected)
    assert last.elapsed >= last.started[-1]
    line = last.describe("reading a.flac at 0")
    assert line.startswith("reading a.flac at 0 failed after 4 attempts in ") and "connection reset" in line
    assert failures[0].describe("x") == "x failed (attempt 1), retrying: connection reset"


def test_a_deadline_that_ends_a_wait_reports_the_last_failure_as_final():
    flaky = Flaky(failures=10)
    failures = failures_of(flaky, deadline=1.0)  # attempts at 0, 0.1, 0.6 s; the wait for 2.6 s is cut
    assert [(f.attempt, f.final) for f in failures] == [(1, False), (2, False), (3, False), (3, True)]
    assert "connection reset" in str(failures[-1].error)


def test_a_deadline_that_ends_a_hanging_attempt_reports_it_as_final():
    def hang():
        time.sleep(2)  # abandoned by the deadline (the thread finishes on its own)

    failures = failures_of(hang, deadline=0.3)
    assert [(f.attempt, f.final) for f in failures] == [(1, True)]
    assert "no answer before the deadline" in str(failures[0].error)
    assert 0.25 <= failures[0].elapsed <= 1.0
