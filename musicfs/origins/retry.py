"""Retrying origin calls: backoff 100 ms, 500 ms, 2 s with jitter (NFR-7.3), within a deadline.

The blocking call runs in a worker thread; the wait between attempts is a
trio sleep, so a failing origin never stalls the event loop. The deadline
bounds the whole attempt-and-wait sequence, so a reader gets its answer, or
EIO, in bounded time (an origin that hangs is abandoned by cancellation; its
thread finishes in the background).

A server that answers "slow down" with a ``Retry-After`` (an
:class:`~musicfs.origins.base.OriginBusy` with ``retry_after``) is given at
least that long before the next attempt; asking again sooner would only earn
another refusal. The deadline still wins: the wait never runs past it.

Some failures are final, retried by no schedule and raised as they are: a
missing file, a write to a read-only origin (:class:`~musicfs.errors.ReadOnly`),
and a write that cannot be repeated because its source cannot be rewound
(:class:`~musicfs.errors.NotRepeatable`: another attempt would store only the
rest of it).

Each failed attempt is reported to ``on_error`` as a :class:`Failure` that
says whether another attempt follows, so a caller can log the attempts that
are retried quietly and only the one that gives up loudly, with the times of
all of them (what a user needs to see that the backoff was kept).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity
import trio

from ..errors import MusicFSError, NotFound, NotRepeatable, OriginUnavailable, ReadOnly
from .base import OriginBusy

log = logging.getLogger(__name__)
T = TypeVar("T")

# failures no other attempt would change, raised as they are (FileNotFoundError as NotFound)
FINAL = (NotFound, ReadOnly, NotRepeatable)
BACKOFF = (0.1, 0.5, 2.0)
JITTER = 0.1  # up to 10 % added to each wait


@dataclass(frozen=True)
class Failure:
    """One failed attempt, as :func:`call_with_retry` reports it."""

    error: BaseException
    attempt: int  # 1 for the first
    final: bool  # no attempt follows: the attempts or the time ran out
    started: tuple[float, ...]  # when each attempt so far began, in seconds after the first
    elapsed: float  # seconds from the start of the first attempt to this failure

    def describe(self, what: str) -> str:
        """One line about it: ``what`` failed, on which attempt, and (when final) when each was made."""
        if not self.final:
            return f"{what} failed (attempt {self.attempt}), retrying: {self.error}"
        times = ", ".join(f"{t:.2f}" for t in self.started)
        tries = f"{self.attempt} attempt{'s' if self.attempt != 1 else ''}"
        return f"{what} failed after {tries} in {self.elapsed:.2f} s (started at {times} s): {self.error}"


class _Wait(tenacity.wait.wait_base):
    """The schedule 100 ms, 500 ms, 2 s, then 2 s again, each with jitter.

    A server's ``Retry-After`` lengthens the step to match; no wait ends past ``deadline``.
    """

    def __init__(self, schedule: tuple[float, ...], jitter: float, deadline: float | None = None):
        self.schedule, self.jitter, self.deadline = schedule, jitter, deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        base = self.schedule[min(retry_state.attempt_number - 1, len(self.schedule) - 1)]
        wait = base + tenacity.wait_random(0, base * self.jitter)(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, OriginBusy) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        if self.deadline is not None:
            wait = min(wait, max(0.0, self.deadline - trio.current_time()))
        return wait


async def call_with_retry(func: Callable[..., T], *args, deadline: float, limiter: trio.CapacityLimiter,
                          attempts: int = len(BACKOFF) + 1, schedule: tuple[float, ...] = BACKOFF,
                          on_error: Callable[[Failure], None] | None = None) -> T:
    """Run ``func(*args)`` in a thread; retry transient failures on the schedule until ``deadline``.

    ``deadline`` is a trio clock time. A missing file, a read-only origin and a write that
    cannot be repeated are final (see :data:`FINAL`): raised at once, as they are.
    Raises :class:`OriginUnavailable` when attempts or time run out; ``on_error``
    hears of every failed attempt, the last one (``final``) included, also when
    the deadline cut an attempt or a wait short.
    """

    last: BaseException | None = None
    started: list[float] = []  # trio time each attempt began
    reported = False  # the final failure has been told to on_error
    failed = 0  # attempts reported as failed

    def report(exc: BaseException, final: bool) -> None:
        nonlocal reported, failed
        reported = reported or final
        failed += 1
        if on_error:
            now = trio.current_time()
            first = started[0] if started else now
            on_error(Failure(exc, max(1, len(started)), final, tuple(t - first for t in started), now - first))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        nonlocal last
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            last = exc  # if the deadline ends the wait, the answer still says why
            report(exc, final=False)

    async def attempt_once() -> T:
        await trio.lowlevel.checkpoint_if_cancelled()  # a wait ended by the deadline starts no attempt
        started.append(trio.current_time())
        return await trio.to_thread.run_sync(func, *args, limiter=limiter, abandon_on_cancel=True)

    retrying = tenacity.AsyncRetrying(
        sleep=trio.sleep,
        stop=tenacity.stop_after_attempt(attempts),
        wait=_Wait(schedule, JITTER, deadline),
        # Cancelled (the deadline, or an interrupted reader) is no failure of the origin: never retried
        retry=tenacity.retry_if_exception(
            lambda e: isinstance(e, Exception) and not isinstance(e, (FileNotFoundError, *FINAL))),
        before_sleep=before_sleep,
        reraise=True,
    )
    with trio.move_on_at(deadline):
        try:
            async for attempt in retrying:
                with attempt:
                    return await attempt_once()
        except FileNotFoundError as exc:
            raise NotFound(str(exc)) from None
        except FINAL:
            raise
        except (OSError, MusicFSError) as exc:  # the last attempt failed too: say so, then give up
            last = exc
            report(exc, final=True)
    if not reported:  # the deadline ended an attempt in flight, or a wait
        hung = len(started) > failed
        report(OriginUnavailable("no answer before the deadline") if hung or last is None else last,
               final=True)
    if last is None:
        raise OriginUnavailable("origin timed out")
    raise OriginUnavailable(f"origin failed after retries: {last}")
