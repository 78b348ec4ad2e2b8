"""The mount's events, watched over its control socket (FR-18.1).

A subscriber reads ``/v1/events`` the way ``musicfs events`` does
(:meth:`ControlClient.stream`) while the test causes each kind on a real
mount: a track opened (FileAccessed, once per open), the origin's folder
renamed away and back (OriginDisconnected, OriginConnected: once per
transition), tracks read into a small cache (ChunkEvicted, one per chunk
evicted), and a rescan that finds a track added, one removed and one changed
(SyncStarted, FileAdded, FileRemoved, FileModified, SyncCompleted with its
counts). Filters by type and origin leave out exactly what they should; a
subscriber that reads nothing loses events, is told how many, and never
slows the mount; a feed ends when its client goes or the mount stops.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import pytest

from conformance.measure import Latencies
from fixtures.bigfile import write_wav
from musicfs.control.client import ControlClient, ControlError
from tests.harness import mount_library, mounted_tracks

WAIT = 10.0  # seconds an event may take to arrive (health transitions need a probe or two)


class Feed(threading.Thread):
    """A subscriber: reads ``/v1/events`` over the socket in a thread and queues each document.

    ``hold()`` makes it stop reading (the daemon's writes then back up, as with a
    client that went to sleep); ``release()`` lets it read on. ``close()`` ends it
    from the client side: the next document it receives, it hangs up.
    """

    def __init__(self, mounted, **params):
        super().__init__(daemon=True)
        self.client = ControlClient.for_mount(mounted.state_dir, mounted.mountpoint)
        self.params = params
        self.documents: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        self.error: ControlError | None = None
        self.ended = threading.Event()
        self.reading = threading.Event()
        self.reading.set()
        self.hang_up = threading.Event()

    def run(self) -> None:
        try:
            for document in self.client.stream("GET", "/v1/events", params=self.params):
                self.documents.put(document)
                self.reading.wait()
                if self.hang_up.is_set():
                    break
        except ControlError as exc:
            self.error = exc
        finally:
            self.client.close()
            self.ended.set()

    def hold(self) -> None:
        self.reading.clear()

    def release(self) -> None:
        self.reading.set()

    def next(self, wanted, timeout: float = WAIT) -> dict:
        """The first document from now on for which ``wanted(document)`` is true."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                document = self.documents.get(timeout=max(0.01, left))
            except queue.Empty:
                raise AssertionError(f"no such event within {timeout} s; seen: {self.seen[-10:]} "
                                     f"(error: {self.error})") from None
            self.seen.append(document)
            if wanted(document):
                return document

    def drain(self) -> list[dict]:
        """What has arrived and not been looked at yet."""
        while True:
            try:
                self.seen.append(self.documents.get_nowait())
            except queue.Empty:
                return self.seen


def subscribers(api: ControlClient) -> int:
    return api.get("/v1/status")["events"]["subscribers"]


def subscribe(mounted, api: ControlClient, **params) -> Feed:
    """A started feed, once the daemon counts it (events from then on reach it)."""
    before = subscribers(api)
    feed = Feed(mounted, **params)
    feed.start()
    deadline = time.monotonic() + WAIT
    while subscribers(api) <= before:
        assert time.monotonic() < deadline and not feed.ended.is_set(), f"never subscribed: {feed.error}"
        time.sleep(0.01)
    return feed


def of(kind: str, **fields):
    return lambda d: d.get("type") == kind and all(d.get(k) == v for k, v in fields.items())


def touch_open(path: Path) -> None:
    with open(path, "rb") as f:
        f.read(1)


def library(folder: Path, names: list[str], size: int = 1024 * 1024, seed: int = 0) -> dict[str, Path]:
    folder.mkdir(parents=True)
    return {name: write_wav(folder / name, size, seed=seed + i) for i, name in enumerate(names)}


def config_file(path: Path, origins: dict[str, Path], *, cache_size: str = "1GB",
                health_interval: float = 30.0) -> Path:
    lines = ["[cache]", f'size = "{cache_size}"', "read_timeout = 2.0", "",
             "[health]", f"interval = {health_interval}", ""]
    for origin_id, folder in origins.items():
        lines += ["[[origins]]", f'id = "{origin_id}"', 'type = "local"', f'path = "{folder}"', ""]
    path.write_text("\n".join(lines))
    return path


@pytest.mark.req("FR-18.1", "B2-7")
def test_each_kind_of_event_arrives_with_its_fields(tmp_path):
    lib = tmp_path / "lib"
    files = library(lib, [f"take{i}.wav" for i in range(4)], size=2 * 1024 * 1024)
    config = config_file(tmp_path / "musicfs.toml", {"lib": lib}, cache_size="5MB", health_interval=0.3)
    with mount_library(config=config, work=tmp_path / "work") as mounted, \
            ControlClient.for_mount(mounted.state_dir, mounted.mountpoint) as api:
        tracks = mounted_tracks(mounted.mountpoint)
        feed = subscribe(mounted, api)
        started = time.time()

        # a track opened: one FileAccessed for the open, however many reads follow
        with open(tracks["take0.wav"], "rb") as f:
            while f.read(4096):
                pass
        touch_open(tracks["take1.wav"])  # ordered: once its event is in, take0's would all be
        feed.next(of("FileAccessed", path="take1.wav"))
        accessed = [d for d in feed.seen if d["type"] == "FileAccessed"]
        assert [d["path"] for d in accessed] == ["take0.wav", "take1.wav"], accessed
        first = accessed[0]
        assert first["origin_id"] == "lib" and first["size"] == files["take0.wav"].stat().st_size
        assert started - 1 <= first["at"] <= time.time()

        # tracks read whole into a 5 MB cache: older chunks are evicted, each announced
        for name in ("take1.wav", "take2.wav", "take3.wav"):
            assert tracks[name].read_bytes() == files[name].read_bytes()
        evicted = feed.next(of("ChunkEvicted"))
        assert len(evicted["address"]) >= 16 and evicted["size"] > 0
        deadline = time.monotonic() + WAIT
        while True:  # one event per chunk the cache counts as evicted (fills may still be evicting:
            # the count and the counter compared are read together, not one again afterwards)
            count = sum(d["type"] == "ChunkEvicted" for d in feed.drain())
            evictions = api.get("/v1/cache")["evictions"]
            if count == evictions or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert count == evictions > 0

        # the origin goes away and comes back: one event per transition
        away = lib.with_name("lib.away")
        lib.rename(away)
        try:
            gone = feed.next(of("OriginDisconnected", origin_id="lib"))
            assert "not reachable" in gone["error"]
        finally:
            away.rename(lib)
        back = feed.next(of("OriginConnected", origin_id="lib"))
        assert isinstance(back["latency_ms"], float) and back["latency_ms"] >= 0
        time.sleep(1.0)  # a few more probes: healthy stays healthy, no event
        transitions = [d["type"] for d in feed.drain() if d["type"].startswith("Origin")]
        assert transitions == ["OriginDisconnected", "OriginConnected"], transitions

        # a rescan: one track added, one removed, one changed in place
        write_wav(lib / "take9.wav", 512 * 1024, seed=99)
        (lib / "take3.wav").unlink()
        write_wav(lib / "take2.wav", 3 * 1024 * 1024, seed=42)
        last = list(api.stream("POST", "/v1/origins/lib/rescan"))[-1]
        assert last["phase"] == "complete", last
        done = feed.next(of("SyncCompleted", origin_id="lib"))
        assert (done["added"], done["removed"], done["modified"]) == (1, 1, 1), done
        assert done["unchanged"] == 2 and done["seconds"] >= 0
        sync = [d for d in feed.seen if d["type"] in ("SyncStarted", "FileAdded", "FileRemoved",
                                                       "FileModified", "SyncCompleted")]
        assert sync[0] == {**sync[0], "type": "SyncStarted", "origin_id": "lib"}
        changes = {(d["type"], d["path"], d.get("size")) for d in sync[1:-1]}
        assert changes == {("FileAdded", "take9.wav", (lib / "take9.wav").stat().st_size),
                           ("FileRemoved", "take3.wav", None),
                           ("FileModified", "take2.wav", (lib / "take2.wav").stat().st_size)}, sync
        assert feed.error is None and not feed.ended.is_set()
    assert "Traceback" not in mounted.log_text()


@pytest.mark.req("FR-18.1", "B2-7")
def test_the_feed_filters_by_type_and_origin(tmp_path):
    a = library(tmp_path / "a", ["a0.wav", "a1.wav"], size=64 * 1024)
    b = library(tmp_path / "b", ["b0.wav"], size=64 * 1024, seed=10)
    config = config_file(tmp_path / "musicfs.toml", {"a": tmp_path / "a", "b": tmp_path / "b"})
    with mount_library(config=config, work=tmp_path / "work") as mounted, \
            ControlClient.for_mount(mounted.state_dir, mounted.mountpoint) as api:
        tracks = mounted_tracks(mounted.mountpoint)
        only_a = subscribe(mounted, api, type="FileAccessed", origin="a")
        evictions_and_opens = subscribe(mounted, api, type=["chunk_evicted", "FileAccessed,FillCompleted"])
        everything = subscribe(mounted, api)
        for name in ("a0.wav", "b0.wav", "a1.wav"):
            assert tracks[name].read_bytes() == (a | b)[name].read_bytes()
        for feed in (only_a, everything):
            feed.next(of("FileAccessed", path="a1.wav"))
        evictions_and_opens.next(of("FillCompleted", path="a1.wav"))
        assert [(d["type"], d["path"]) for d in only_a.drain()] == [("FileAccessed", "a0.wav"),
                                                                     ("FileAccessed", "a1.wav")]
        assert {d["type"] for d in evictions_and_opens.drain()} == {"FileAccessed", "FillCompleted"}
        kinds = {d["type"] for d in everything.drain()}
        assert "FileAccessed" in kinds and "FillCompleted" not in kinds, kinds  # per-chunk work: asked by name
        assert [d["path"] for d in everything.seen if d["type"] == "FileAccessed"] == ["a0.wav", "b0.wav",
                                                                                      "a1.wav"]

        with pytest.raises(ControlError, match=r"400: unknown event type 'FileOpened' \(known: .*"
                                               r"FileAccessed.*OriginConnected.*SyncCompleted"):
            list(api.stream("GET", "/v1/events", params={"type": ["FileAccessed", "FileOpened"]}))
        with pytest.raises(ControlError, match=r"404: no origin 'c' \(known: a, b\)"):
            list(api.stream("GET", "/v1/events", params={"origin": "c"}))


@pytest.mark.req("FR-18.1")
@pytest.mark.alone
def test_a_subscriber_that_reads_nothing_loses_events_counted_and_never_slows_the_mount(
        tmp_path, requirement_catalogue):
    """It stops reading; 4,000 opens later, each timed, it reads on: what it got plus what the
    ``dropped`` lines count is exactly what was published. Then it hangs up: the bus forgets it."""
    library(tmp_path / "lib", [f"t{i:02d}.wav" for i in range(20)], size=16 * 1024)
    opens = 4000
    with mount_library(origin=tmp_path / "lib", work=tmp_path / "work") as mounted, \
            ControlClient.for_mount(mounted.state_dir, mounted.mountpoint) as api:
        tracks = mounted_tracks(mounted.mountpoint)
        names = sorted(tracks)
        for name in names:  # cached and looked up: what is timed is the open itself
            tracks[name].read_bytes()
        alone = subscribers(api)
        feed = subscribe(mounted, api, type="FileAccessed")
        touch_open(tracks[names[0]])
        feed.next(of("FileAccessed"))
        feed.hold()  # from here on it reads nothing
        timed = Latencies("open() while a subscriber reads nothing")
        for i in range(opens):
            started = time.perf_counter_ns()
            fd = os.open(tracks[names[i % len(names)]], os.O_RDONLY)
            timed.ms.append((time.perf_counter_ns() - started) / 1e6)
            os.close(fd)
        events = api.get("/v1/status")["events"]
        assert events["dropped"] > 0, events

        feed.release()
        arrived = -1
        while len(feed.drain()) != arrived:  # what was queued for it arrives, then nothing more
            arrived = len(feed.seen)
            time.sleep(0.5)
        feed.hang_up.set()
        touch_open(tracks[names[-1]])  # on this one's event, it hangs up
        assert feed.ended.wait(WAIT) and feed.error is None, feed.error
        seen = feed.drain()
        assert seen[-1]["type"] == "FileAccessed" and seen[-1]["path"] == names[-1]
        got = [d for d in seen if d["type"] == "FileAccessed"]
        dropped = [d for d in seen if d["type"] == "dropped"]
        assert dropped and all(d["count"] > 0 for d in dropped)
        assert len(got) - 2 + sum(d["count"] for d in dropped) == opens, (len(got), dropped)
        assert sum(d["count"] for d in dropped) == events["dropped"]
        deadline = time.monotonic() + WAIT
        while subscribers(api) != alone:  # it hung up: the bus no longer feeds it
            assert time.monotonic() < deadline, "the subscriber outlived its connection"
            time.sleep(0.02)

    print(f"\n{timed.summary()}")
    assert timed.p(99) <= requirement_catalogue["NFR-1.3"].maximum, timed.summary()


@pytest.mark.req("FR-18.1", "B2-7")
def test_feeds_end_when_the_mount_stops_even_one_whose_client_stopped_reading(tmp_path):
    """A shutdown ends every feed: a reading client sees its stream finish; one that stopped
    reading (its socket full) is closed; the daemon exits 0 promptly either way."""
    library(tmp_path / "lib", [f"t{i:02d}.wav" for i in range(10)], size=16 * 1024)
    with mount_library(origin=tmp_path / "lib", work=tmp_path / "work") as mounted, \
            ControlClient.for_mount(mounted.state_dir, mounted.mountpoint) as api:
        paths = sorted(mounted_tracks(mounted.mountpoint).values())
        reading = subscribe(mounted, api)
        stalled = subscribe(mounted, api, type="FileAccessed")
        touch_open(paths[0])
        stalled.next(of("FileAccessed"))
        stalled.hold()
        for i in range(3000):  # more than its queue and its socket hold
            touch_open(paths[i % len(paths)])
        assert api.get("/v1/status")["events"]["dropped"] > 0
        api.post("/v1/shutdown", {"force": True})
        started = time.monotonic()
        assert reading.ended.wait(WAIT) and reading.error is None, reading.error
        assert mounted.proc.wait(WAIT) == 0, mounted.log_text()[-2000:]
        stopped = time.monotonic() - started
        stalled.release()
        assert stalled.ended.wait(WAIT)
    assert stopped < 5.0, f"the daemon took {stopped:.1f} s to stop"
    assert "Traceback" not in mounted.log_text()
