"""Live rescans as a service: progress, events, one rescan per origin, stopping, the schedule.

The service runs here in trio against a real index and a real local origin, without a mount
(``tree_changed`` records what the mount would be told); the mount's side is proven on real
mounts by conformance/test_live_rescan.py.
"""

from __future__ import annotations

import shutil

import pytest
import trio
import trio.testing

from fixtures.copies import library_of_copies
from musicfs.config import parse_config
from musicfs.errors import ConfigError
from musicfs.events import EventBus, FileAdded, FileRemoved, SyncCompleted, SyncStarted
from musicfs.index.library import LibraryIndex
from musicfs.index.scanner import Scanner
from musicfs.index.template import PathTemplate
from musicfs.index.tree import TreeChanges
from musicfs.lifecycle import Lifecycle
from musicfs.origins.local import LocalOrigin
from musicfs.vfs.sync import SyncService


@pytest.fixture
def library(sample_library, tmp_path):
    """(library folder, its index path), scanned once."""
    root = tmp_path / "library"
    shutil.copytree(sample_library[0], root)
    path = tmp_path / "index.db"
    with LibraryIndex(path) as index:
        Scanner(index, LocalOrigin("local", root), PathTemplate()).run()
    return root, path


class Harness:
    """A service with the parts a mount gives it; ``told`` is what the kernel would be told."""

    def __init__(self, root, index_path):
        self.index = LibraryIndex(index_path)
        self.bus = EventBus()
        self.lifecycle = Lifecycle()
        self.lifecycle.mounted()
        self.told: list[TreeChanges] = []
        self.origin = LocalOrigin("local", root)
        self.sync = SyncService(self.index, {"local": self.origin}, PathTemplate(), bus=self.bus,
                                lifecycle=self.lifecycle, tree_changed=self.tell, batch_size=20)

    async def tell(self, changes: TreeChanges) -> None:
        self.told.append(changes)

    async def documents(self, origin_id: str = "local") -> list[dict]:
        states = []
        found = []
        async for document in self.sync.rescan(origin_id):
            found.append(document)
            states.append(self.lifecycle.state)
        self.states = states
        return found


def run_with_service(root, index_path, test) -> Harness:
    async def main():
        harness = Harness(root, index_path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(harness.sync.run)
            await trio.testing.wait_all_tasks_blocked()
            await test(harness)
            nursery.cancel_scope.cancel()
        harness.index.close()
        return harness
    return trio.run(main)


@pytest.mark.req("FR-9.2")
def test_a_rescan_streams_its_progress_and_shows_each_commit(library, good_files):
    root, index_path = library
    flac = next(f["path"] for f in good_files if f["format"] == "flac")
    shutil.copy2(root / flac, root / "new arrival.flac")
    (root / good_files[0]["path"]).unlink()

    async def test(h: Harness) -> None:
        documents = await h.documents()
        phases = [d["phase"] for d in documents]
        assert phases[0] == "scanning" and phases[-1] == "complete", phases
        assert set(phases) <= {"scanning", "comparing", "indexing", "complete"}
        final = documents[-1]
        assert (final["added"], final["removed"], final["modified"]) == (1, 1, 0), final
        assert final["changed"] == 2 and final["files_scanned"] == final["total"] and not final["partial"]
        assert "syncing" in h.states and h.lifecycle.state == "ready"
        removed = [n for changes in h.told for n in changes.removed if n.kind == "file"]
        added = [n for changes in h.told for n in changes.added if n.kind == "file"]
        assert [n.name for n in added] and len(removed) == 1
        kinds = [type(e) for e in h.bus.recent()]
        assert kinds[0] is SyncStarted and kinds[-1] is SyncCompleted
        assert [e.path for e in h.bus.recent(FileAdded)] == ["new arrival.flac"]
        assert [e.path for e in h.bus.recent(FileRemoved)] == [good_files[0]["path"]]
        assert h.sync.statistics()["completed"] == 1

    run_with_service(root, index_path, test)


def test_requests_during_a_rescan_queue_one_more_which_later_requests_join(library, sample_library, tmp_path):
    root, index_path = library
    library_of_copies(sample_library[0], root / "more", 4)  # enough files that the first rescan is still on

    async def test(h: Harness) -> None:
        first = h.sync.request("local")
        second = h.sync.request("local")
        third = h.sync.request("local")
        assert first is not second and second is third, "one rescan queued behind the running one"
        assert second.document["phase"] == "queued"
        streams = {}

        async def follow(name: str) -> None:
            streams[name] = await h.documents()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, "late")
        assert streams["late"][0]["phase"] == "queued" and streams["late"][-1]["phase"] == "complete"
        assert first.document["phase"] == "complete" and first.document["added"] > 400
        assert second.document["added"] == 0, "the queued rescan walked after the first one had indexed"
        assert h.sync.completed == 2 and not h.sync.running and not h.sync.queued

    run_with_service(root, index_path, test)


def test_an_unreachable_origin_is_not_walked_and_nothing_is_removed(library):
    root, index_path = library
    with LibraryIndex(index_path) as index:
        tracks = index.statistics()["tracks"]
    root.rename(root.with_name("elsewhere"))

    async def test(h: Harness) -> None:
        documents = await h.documents()
        assert documents[-1]["phase"] == "failed" and "not reachable" in documents[-1]["error"], documents[-1]
        assert h.lifecycle.state == "ready" and h.told == []
        unknown = await h.documents("nowhere")
        assert unknown[-1]["phase"] == "failed" and "no origin" in unknown[-1]["error"]

    run_with_service(root, index_path, test)
    with LibraryIndex(index_path) as index:
        assert index.statistics()["tracks"] == tracks


def test_a_stopping_mount_stops_its_rescan_at_the_next_file(library, sample_library, good_files):
    root, index_path = library
    library_of_copies(sample_library[0], root / "more", 10)
    with LibraryIndex(index_path) as index:
        before = index.statistics()["tracks"]

    async def main():
        harness = Harness(root, index_path)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(harness.sync.run)
                await trio.testing.wait_all_tasks_blocked()
                rescan = harness.sync.request("local")
                while rescan.document["files_scanned"] < 300:
                    await rescan.changed.wait()
                stopping = trio.current_time()
                nursery.cancel_scope.cancel()  # what the mount does when it unmounts
        harness.index.close()
        return rescan, trio.current_time() - stopping

    rescan, seconds = trio.run(main)
    assert rescan.document["phase"] == "failed" and "stop" in rescan.document["error"], rescan.document
    assert seconds < 5, f"the rescan took {seconds:.1f} s to stop"
    with LibraryIndex(index_path) as index:
        after = index.statistics()["tracks"]
    new = 10 * len(good_files)
    assert before < after < before + new, "batches committed before the stop stay; the rest was not scanned"


@pytest.mark.parametrize("value", ["0", "-5", "\"hourly\"", "true", "2592001"])
def test_a_bad_scan_interval_names_its_line(value):
    text = f'[scan]\nworkers = 2\ninterval = {value}\n\n[[origins]]\nid = "a"\ntype = "local"\npath = "/x"\n'
    with pytest.raises(ConfigError, match=r"<config>:3: interval must be a number of seconds"):
        parse_config(text)


def test_scheduled_rescans_are_off_unless_asked_for():
    origins = '[[origins]]\nid = "a"\ntype = "local"\npath = "/x"\n'
    assert parse_config(origins).scan_interval is None
    assert parse_config("[scan]\ninterval = 3600\n" + origins).scan_interval == 3600.0


def test_scheduled_rescans_run_without_a_request(library, good_files):
    root, index_path = library
    shutil.copy2(root / good_files[0]["path"], root / "arrived meanwhile.flac")

    async def test(h: Harness) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.sync.run_schedule, 0.2)
            with trio.fail_after(20):
                while h.sync.completed < 2:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert [e.path for e in h.bus.recent(FileAdded)] == ["arrived meanwhile.flac"]

    run_with_service(root, index_path, test)


def test_rescans_of_two_origins_write_one_after_the_other(library, sample_library, tmp_path):
    root, index_path = library
    other = tmp_path / "other"
    library_of_copies(sample_library[0], other, 2)

    async def test(h: Harness) -> None:
        h.sync.origins["other"] = LocalOrigin("other", other)
        first, second = h.sync.request("other"), h.sync.request("local")
        assert first.document["phase"] == "scanning" and second.document["phase"] == "queued"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(h.documents, "other")
            seen = await h.documents("local")
        assert seen[0]["phase"] == "queued" and seen[-1]["phase"] == "complete"
        assert first.document["phase"] == "complete" and first.document["added"] > 200
        assert h.sync.completed == 4  # each origin: the one requested first, and one queued behind it

    run_with_service(root, index_path, test)
    with LibraryIndex(index_path) as index:
        origins = {row[0]: row[1] for row in index.conn.execute(
            "SELECT origin_id, COUNT(*) FROM tracks GROUP BY origin_id")}
        assert origins["other"] > 200 and origins["local"] > 100
        orphans = index.conn.execute("SELECT COUNT(*) FROM nodes n WHERE n.id != 1 AND NOT EXISTS"
                                     " (SELECT 1 FROM nodes p WHERE p.id = n.parent)").fetchone()[0]
        assert orphans == 0
