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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import tenacity
import trio

from ..errors import MusicFSError, NotFound, OriginUnavailable
from .base import OriginBusy

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF = (0.1, 0.5, 2.0)
JITTER = 0.1  # up to 10 % added to each wait


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
                          on_error: Callable[[BaseException, int], None] | None = None) -> T:
    """Run ``func(*args)`` in a thread; retry transient failures on the schedule until ``deadline``.

    ``deadline`` is a trio clock time. A missing file is final (not retried).
    Raises :class:`OriginUnavailable` when attempts or time run out.
    """

    last: BaseException | None = None

    def before_sleep(state: tenacity.RetryCallState) -> None:
        nonlocal last
        exc = state.outcome.exception() if state.outcome else None
        if exc is not None:
            last = exc  # if the deadline ends the wait, the answer still says why
            if on_error:
                on_error(exc, state.attempt_number)

    retrying = tenacity.AsyncRetrying(
        sleep=trio.sleep,
        stop=tenacity.stop_after_attempt(attempts),
        wait=_Wait(schedule, JITTER, deadline),
        retry=tenacity.retry_if_exception(lambda e: not isinstance(e, (FileNotFoundError, NotFound))),
        before_sleep=before_sleep,
        reraise=True,
    )
    with trio.move_on_at(deadline):
        try:
            async for attempt in retrying:
                with attempt:
                    return await trio.to_thread.run_sync(func, *args, limiter=limiter,
                                                         abandon_on_cancel=True)
        except FileNotFoundError as exc:
            raise NotFound(str(exc)) from None
        except NotFound:
            raise
        except (OSError, MusicFSError) as exc:  # the last attempt failed too: say so, then give up
            last = exc
            if on_error:
                on_error(exc, retrying.statistics.get("attempt_number", attempts))
    if last is None:
        raise OriginUnavailable("origin timed out")
    raise OriginUnavailable(f"origin failed after retries: {last}")
