"""The event bus: bounded feeds that drop (and say where, and how many) instead of waiting;
health transitions published once each (FR-18.1). Real-mount checks: conformance/test_events.py."""

from __future__ import annotations

import pytest
import trio

from musicfs.events import (
    FEED_DEFAULT,
    Dropped,
    EventBus,
    FileAccessed,
    OriginConnected,
    OriginDisconnected,
    event_types,
)
from musicfs.origins.health import HealthMonitor
from musicfs.origins.local import LocalOrigin

pytestmark = pytest.mark.req("FR-18.1")


def opened(name: str) -> FileAccessed:
    return FileAccessed("lib", name, 1)


def received(feed) -> list:
    """Everything queued on ``feed`` now (the bus built outside trio delivers at once)."""
    async def take():
        items = []
        with trio.move_on_after(0.05):
            while True:
                items.append(await feed.receive())
        return items
    return trio.run(take)


def test_a_full_feed_drops_and_marks_where_and_how_many_while_others_get_everything():
    bus = EventBus(queue=3)
    slow, other = bus.subscribe(), bus.subscribe(queue=100)
    for i in range(5):
        bus.publish(opened(f"a{i}"))
    assert slow.dropped == 2 and bus.dropped == 2 and other.dropped == 0
    first = received(slow)
    assert [getattr(e, "path", e) for e in first] == ["a0", "a1", "a2", Dropped(2)]
    bus.publish(opened("b0"))  # room again: delivered after the gap it follows
    bus.publish(opened("b1"))
    assert [e.path for e in received(slow)] == ["b0", "b1"]
    assert [e.path for e in received(other)] == ["a0", "a1", "a2", "a3", "a4", "b0", "b1"]


def test_unwanted_events_take_no_room_and_are_not_counted_lost():
    bus = EventBus(queue=2)
    feed = bus.subscribe(wants=lambda e: e.path.startswith("keep"))
    for name in ("skip0", "keep0", "skip1", "skip2", "keep1"):
        bus.publish(opened(name))
    assert feed.dropped == 0 and [e.path for e in received(feed)] == ["keep0", "keep1"]


def test_closing_a_feed_forgets_it_at_once_and_closing_the_bus_ends_feeds_after_what_is_queued():
    async def main():
        bus = EventBus()
        gone, kept = bus.subscribe(), bus.subscribe()
        assert bus.statistics()["subscribers"] == 2
        gone.close()
        assert bus.statistics()["subscribers"] == 1
        bus.publish(opened("last"))
        bus.close()
        got = [event async for event in kept]  # the queued event, then the end
        assert [e.path for e in got] == ["last"]
        with trio.fail_after(1):
            await bus.drained()
        assert bus.statistics()["subscribers"] == 0
        late = bus.subscribe()
        assert [e async for e in late] == []

    trio.run(main)


def test_events_published_from_worker_threads_reach_subscribers_on_the_loop():
    async def main():
        bus = EventBus()
        with bus.subscribe() as feed:
            await trio.to_thread.run_sync(bus.publish, opened("from a thread"))
            with trio.fail_after(1):
                assert (await feed.receive()).path == "from a thread"

    trio.run(main)


def test_a_batch_from_a_worker_thread_arrives_whole_and_in_order_and_an_empty_one_is_nothing():
    async def main():
        bus = EventBus()
        with bus.subscribe() as feed:
            await trio.to_thread.run_sync(bus.publish)  # nothing to say: no hand-over at all
            await trio.to_thread.run_sync(lambda: bus.publish(*(opened(f"t{i}") for i in range(5))))
            with trio.fail_after(1):
                assert [(await feed.receive()).path for _ in range(5)] == [f"t{i}" for i in range(5)]
        assert bus.counts["FileAccessed"] == 5 and len(bus.history) == 5

    trio.run(main)


def test_every_kind_has_a_name_the_feed_takes():
    kinds = event_types()
    assert set(FEED_DEFAULT) <= set(kinds) and "ChunkStored" in kinds
    assert opened("x").to_dict() | {"at": 0} == {"kind": "FileAccessed", "at": 0, "origin_id": "lib",
                                                  "path": "x", "size": 1}


def test_health_transitions_are_published_once_each(tmp_path):
    root = tmp_path / "share"
    root.mkdir()
    bus = EventBus()
    health = HealthMonitor({"nas": LocalOrigin("nas", root)}, {"nas": 1}, bus=bus)

    async def probes():
        for _ in range(2):
            await health.probe("nas")  # unknown -> healthy: connected (once)
        root.rename(tmp_path / "away")
        for _ in range(3):
            await health.probe("nas")  # offline (once)
        health.read_failed("nas", "still away")
        (tmp_path / "away").rename(root)
        await health.probe("nas")  # back

    trio.run(probes)
    events = [e for e in bus.recent() if isinstance(e, OriginConnected | OriginDisconnected)]
    assert [type(e).__name__ for e in events] == ["OriginConnected", "OriginDisconnected", "OriginConnected"]
    assert all(e.origin_id == "nas" for e in events)
    assert "not reachable" in events[1].error and events[2].latency_ms >= 0
