"""A rescan inside the running daemon, asked for over its control socket, shows in the mount at once.

The library is the sample library copied a few times (hard links: real tagged audio, no bytes
written); before the rescan, many more copies are added (each needs its tags read, so the
rescan takes seconds), one copy is removed, one track is re-tagged (it moves to a new name)
and one changes in place (new bytes, same tags: same name, same inode). The kernel has looked
up all of them and cached the changed track's attributes and pages, with the mount's 300 s
timeouts. While the rescan runs, listings and a reader go on, timed. When the rescan's stream
says ``complete``, everything shows at once: no remount, no waiting out a timeout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from chaos.remote import write_origin
from conformance.expected import sha256_of
from conformance.measure import Latencies
from fixtures.copies import copy_name, library_of_copies
from musicfs.control.client import ControlClient
from tests.harness import mount_library, mounted_tracks

COPIES = 4  # copies in the library when it is mounted
ADDED = 24  # copies added before the rescan: about 2,900 tracks whose tags it reads
LONG_ENOUGH = 1.5  # seconds a rescan must at least take for its listings to say anything
STALL_MS = 250.0  # one operation this slow would be waiting for the scan, not for a busy core


def _own_copy(path: Path) -> None:
    """Give ``path`` an inode of its own (it is a hard link shared by every copy of the track)."""
    spare = path.with_name(path.name + ".own")
    shutil.copy2(path, spare)
    os.replace(spare, path)


def _lookups_fail(path: Path) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    return False


class Timed(threading.Thread):
    """Calls ``operation(timed)`` in a loop until stopped; ``timed(call, *args)`` times one call and
    keeps (start time, milliseconds)."""

    def __init__(self, name: str, operation, pause: float):
        super().__init__(name=name, daemon=True)
        self.operation, self.pause = operation, pause
        self.samples: list[tuple[float, float]] = []
        self.errors: list[BaseException] = []
        self.halt = threading.Event()

    def timed(self, call, *args):
        started = time.monotonic()
        result = call(*args)
        self.samples.append((started, (time.monotonic() - started) * 1000))
        return result

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.operation(self.timed)
            except (OSError, AssertionError) as exc:
                self.errors.append(exc)
            time.sleep(self.pause)

    def within(self, start: float, end: float) -> Latencies:
        return Latencies(self.name, [ms for at, ms in self.samples if start <= at <= end])


@pytest.mark.req("FS-7", "FR-9.2", "FS-6", "B2-7")
@pytest.mark.alone
def test_rescan_through_the_socket_shows_added_removed_retagged_and_changed_tracks_at_once(
        sample_library, good_files, mount_factory, requirement_catalogue, tmp_path, capsys):
    from mutagen.flac import FLAC

    root = tmp_path / "library"
    library_of_copies(sample_library[0], root, COPIES)
    mounted = mount_factory(origin=root)
    mnt = mounted.mountpoint
    before = mounted_tracks(mnt)  # every name is looked up now: the kernel holds all of them
    inodes = {real: os.stat(path).st_ino for real, path in before.items()}

    flacs = [f["path"] for f in good_files if f["format"] == "flac" and f["tags"].get("title")]
    retagged, changed, steady = (f"{copy_name(0)}/{p}" for p in flacs[:3])
    removed = {real for real in before if real.startswith(f"{copy_name(1)}/")}
    assert removed and {retagged, changed, steady} <= set(before)
    old_size = os.stat(before[changed]).st_size
    old_sha = sha256_of(before[changed])  # its pages are in the kernel's cache now

    # the origin changes: copies added, one copy removed, a track re-tagged, one rewritten in place
    good = {f["path"] for f in good_files}
    made = library_of_copies(sample_library[0], tmp_path / "extra", ADDED)
    for n in range(ADDED):
        os.rename(tmp_path / "extra" / copy_name(n), root / copy_name(n + COPIES))
    added = {f"{copy_name(int(real[4:6]) + COPIES)}/{rel}" for real, rel in made.items() if rel in good}
    shutil.rmtree(root / copy_name(1))
    for real in (retagged, changed):
        _own_copy(root / real)
    audio = FLAC(root / retagged)
    audio["title"] = "A Brand New Title"
    audio.save()
    audio = FLAC(root / changed)
    audio["comment"] = "rewritten in place " * 800  # beyond the padding: the file grows
    audio.save()
    new_sha = sha256_of(root / changed)
    new_size = (root / changed).stat().st_size
    assert new_size != old_size

    # listings and a reader of another track go on during the rescan, timed
    # albums with no changed track: a listing (readdirplus) would refresh the attributes it shows
    touched = {before[real].parent for real in (retagged, changed, steady)}
    albums = sorted({path.parent for path in before.values()} - touched)[:8]
    steady_path, steady_sha = before[steady], sha256_of(before[steady])

    def list_albums(timed) -> None:  # one album per call, round robin
        albums.append(albums.pop(0))
        assert timed(os.listdir, albums[0]), f"{albums[0]} listed empty"

    steady_fd = os.open(steady_path, os.O_RDONLY)

    def read_steady(timed) -> None:  # the whole track, each read timed, each pass checked
        blocks, offset, size = [], 0, os.fstat(steady_fd).st_size
        while offset < size:
            os.posix_fadvise(steady_fd, 0, 0, os.POSIX_FADV_DONTNEED)  # each read reaches the daemon
            block = timed(os.pread, steady_fd, 1 << 14, offset)
            assert block, f"the steady track ended at {offset} of {size} bytes"
            blocks.append(block)
            offset += len(block)
        assert hashlib.sha256(b"".join(blocks)).hexdigest() == steady_sha, "the steady track read wrong bytes"

    lister, reader = Timed("listing", list_albums, 0.005), Timed("read", read_steady, 0.005)
    documents: list[tuple[float, dict]] = []
    with ControlClient.for_mount(mounted.state_dir, mnt) as client:
        assert client.get("/v1/status")["state"] in ("ready", "degraded")  # the API is loaded before timing
        lister.start()
        reader.start()
        try:
            for document in client.stream("POST", "/v1/origins/local/rescan"):
                documents.append((time.monotonic(), document))
        finally:
            lister.halt.set()
            reader.halt.set()
            lister.join(10)
            reader.join(10)
            os.close(steady_fd)
        done_at = time.monotonic()

        # at once, no sleep: what the kernel cached of the old tree is gone
        final = documents[-1][1]
        assert final["phase"] == "complete", documents[-3:]
        assert (final["added"], final["removed"], final["modified"]) == (len(added), len(removed), 2), final
        order = ["scanning", "comparing", "indexing", "complete"]
        phases = [order.index(d["phase"]) for _, d in documents]  # a slow reader may skip some, in order
        assert phases == sorted(phases) and phases[0] == 0, [d["phase"] for _, d in documents]
        assert all(d["files_scanned"] <= d["total"] for _, d in documents)

        after_changed = os.stat(before[changed])
        assert after_changed.st_ino == inodes[changed], "a track changed in place got a new inode"
        assert after_changed.st_size == new_size, "the kernel kept the changed track's old size"
        assert sha256_of(before[changed]) == new_sha != old_sha, "the kernel served the old bytes"

        for real in removed | {retagged}:  # the old name is gone, or now names another, new track
            old = before[real]
            if not _lookups_fail(old):
                assert os.stat(old).st_ino != inodes[real], f"{old} still shows the old file"
                assert os.getxattr(old, "user.musicfs.real_path").decode() != real

        after = mounted_tracks(mnt)
        assert added <= set(after), f"{len(added - set(after))} added tracks do not show"
        assert not removed & set(after), "removed tracks still show"
        assert after[retagged].name.endswith("A Brand New Title.flac"), after[retagged]
        assert os.stat(after[retagged]).st_ino != inodes[retagged]
        for real, path in before.items():
            if real not in removed | {retagged}:
                assert after[real] == path and os.stat(path).st_ino == inodes[real], f"{real} moved"

        status = client.get("/v1/status")
        assert status["state"] in ("ready", "degraded"), status["state"]
    assert "Traceback" not in mounted.log_text(), mounted.log_text()[-3000:]

    start = documents[0][0]
    listing, reading = lister.within(start, done_at), reader.within(start, done_at)
    seconds = done_at - start
    with capsys.disabled():
        print(f"\nlive rescan: {seconds:.2f} s, {final['files_scanned']} files, {final['changed']} changed; "
              f"{listing.summary()}; {reading.summary()}")
    assert not lister.errors and not reader.errors, (lister.errors + reader.errors)[:3]
    assert seconds >= LONG_ENOUGH, f"the rescan took {seconds:.2f} s: too short to measure anything"
    assert listing.count >= 20 and reading.count >= 20, (listing.count, reading.count)
    # judged as the catalogue judges a listing (p99 within NFR-1.2's maximum), and no single listing
    # or read stalled (waited for the scan): a stall would last the scan's commits, seconds
    bound = requirement_catalogue["NFR-1.2"].maximum
    for latencies in (listing, reading):
        assert latencies.p(99) <= bound, latencies.summary()
        assert max(latencies.ms) <= STALL_MS, latencies.summary()


@pytest.mark.req("FS-7")
def test_scheduled_rescans_show_new_tracks_without_a_request(sample_library, good_files, mount_factory, tmp_path):
    """``[scan] interval`` in the config: the running mount rescans by itself."""
    root = tmp_path / "library"
    shutil.copytree(sample_library[0], root)
    config = tmp_path / "musicfs.toml"
    write_origin(config, "local", "local", {"path": str(root)})
    config.write_text("[scan]\ninterval = 1\n\n" + config.read_text())
    mounted = mount_factory(config=config)
    source = next(f["path"] for f in good_files if f["format"] == "flac")
    shutil.copy2(root / source, root / "arrived later.flac")
    deadline = time.monotonic() + 30
    while "arrived later.flac" not in mounted_tracks(mounted.mountpoint):
        assert time.monotonic() < deadline, "no scheduled rescan showed the new track within 30 s"
        time.sleep(0.2)
    assert mounted.alive() and "Traceback" not in mounted.log_text()


@pytest.mark.req("FS-7", "FS-6", "B2-7")
def test_a_rescan_of_an_s3_origin_shows_new_and_deleted_objects(sample_library, good_files, tmp_path):
    """A remote origin: listed and read through the same origin objects the mount reads from."""
    from tests.s3server import aws_env, moto_server

    files = {f["path"]: (sample_library[0] / f["path"]).read_bytes() for f in good_files}
    gone, copied = sorted(files)[:2]
    with moto_server() as server:
        bucket = server.create_bucket(files, prefix="music/")
        config = write_origin(tmp_path / "musicfs.toml", "bucket", "s3", {
            "bucket": bucket, "endpoint": server.endpoint, "prefix": "music/", "region": "us-east-1"})
        with mount_library(config=config, work=tmp_path / "work", env=aws_env(tmp_path / "aws")) as mounted:
            before = mounted_tracks(mounted.mountpoint)
            inodes = {real: os.stat(path).st_ino for real, path in before.items()}
            server.client().delete_object(Bucket=bucket, Key="music/" + gone)
            server.upload(bucket, {"new/" + copied: files[copied]}, prefix="music/")
            with ControlClient.for_mount(mounted.state_dir, mounted.mountpoint) as client:
                final = list(client.stream("POST", "/v1/origins/bucket/rescan"))[-1]
            assert final["phase"] == "complete" and (final["added"], final["removed"]) == (1, 1), final
            assert _lookups_fail(before[gone]) or os.stat(before[gone]).st_ino != inodes[gone]
            after = mounted_tracks(mounted.mountpoint)
            assert gone not in after and "new/" + copied in after
            assert sha256_of(after["new/" + copied]) == hashlib.sha256(files[copied]).hexdigest()
            for real, path in before.items():
                if real != gone:
                    assert after[real] == path and os.stat(path).st_ino == inodes[real], real
