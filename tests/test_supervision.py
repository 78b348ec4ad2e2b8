"""A background service of the mount that fails unexpectedly is logged and restarted, never
allowed to cancel the mount's nursery (and with it the FUSE loop)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from musicfs.mount import _supervised


@pytest.mark.req("FAULT-40")
def test_a_failing_background_service_is_logged_and_restarted_and_the_rest_runs_on(caplog):
    calls = []

    async def flaky() -> None:
        calls.append(trio.current_time())
        if len(calls) < 3:
            raise RecursionError("redirected forever")

    async def main() -> bool:
        neighbour_done = trio.Event()

        async def neighbour() -> None:  # stands for pyfuse3.main: it must not be cancelled
            await trio.sleep(10)
            neighbour_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(neighbour)
            nursery.start_soon(_supervised, "origin health probes", flaky)
        return neighbour_done.is_set()

    with caplog.at_level(logging.ERROR, logger="musicfs.mount"):
        assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(calls) == 3
    assert [round(b - a) for a, b in zip(calls, calls[1:])] == [1, 2]  # the pause doubles
    records = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(records) == 2 and all(r.exc_info and r.exc_info[0] is RecursionError for r in records)


def test_a_one_shot_service_is_not_restarted(caplog):
    calls = []

    async def once() -> None:
        calls.append(1)
        raise ValueError("bad chunk file name")

    with caplog.at_level(logging.ERROR, logger="musicfs.mount"):
        trio.run(lambda: _supervised("cache reconciliation", once, restart=False))
    assert calls == [1]
    assert "not restarting it" in caplog.records[0].getMessage()
