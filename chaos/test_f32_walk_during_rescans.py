"""FAULT-32: a walk that reads every file of the mount while rescans run every few seconds.

``find MNT -type f -exec cat {} +`` and a walker of our own (stat and read every file, noting
inode numbers) go over the mount again and again while rescans are asked for every
:data:`EVERY` seconds through the control socket, and the origin changes between some of
them: copies of albums are added, and existing files are rewritten in place (a new mtime:
the rescan reads them again and keeps their node). Nothing is removed or renamed, so every
path a walk lists must open. Each find exits 0 with nothing on stderr, no read fails (no
ESTALE, no EIO), and a path seen twice always has the same inode number, the one it had
before the rescans began.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from conformance.expected import sha256_of
from fixtures.copies import copy_name, library_of_copies
from musicfs.control.client import ControlClient
from tests.harness import mounted_tracks

EVERY = 2.0  # seconds between rescans


class Rescans(threading.Thread):
    """Asks for a rescan every ``EVERY`` seconds; before every other one, the origin changes."""

    def __init__(self, client: ControlClient, source: Path, root: Path, good: set[str], first_copy: int,
                 rounds: int):
        super().__init__(name="rescans", daemon=True)
        self.client, self.source, self.root, self.good = client, source, root, good
        self.next_copy, self.rounds = first_copy, rounds
        self.finals: list[dict] = []
        self.added: set[str] = set()
        self.errors: list[BaseException] = []

    def change_origin(self, round_number: int) -> None:
        if round_number % 4 == 0:  # a new copy of the library: new tracks under new names
            extra = self.root.parent / f"extra{round_number}"
            made = library_of_copies(self.source, extra, 1)
            os.rename(extra / copy_name(0), self.root / copy_name(self.next_copy))
            self.added |= {f"{copy_name(self.next_copy)}/{rel}" for rel in made.values() if rel in self.good}
            self.next_copy += 1
        else:  # files rewritten in place: same tags, a new mtime (every copy: they are hard links)
            now = time.time_ns()
            for path in sorted((self.root / copy_name(0)).rglob("*.*"))[round_number::7]:
                os.utime(path, ns=(now, now))

    def run(self) -> None:
        try:
            for n in range(self.rounds):
                started = time.monotonic()
                if n % 2 == 0:
                    self.change_origin(n // 2)
                documents = list(self.client.stream("POST", "/v1/origins/local/rescan"))
                self.finals.append(documents[-1])
                time.sleep(max(0.0, EVERY - (time.monotonic() - started)))
        except (OSError, RuntimeError, ValueError) as exc:
            self.errors.append(exc)


def _walk_and_read(mnt: Path, seen: dict[str, set[int]], failures: list[str]) -> int:
    """Stat and read every file once; note each path's inode. Returns the files read."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(mnt, onerror=lambda e: failures.append(f"walk: {e}")):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath, name)
            try:
                seen[str(path.relative_to(mnt))].add(os.stat(path).st_ino)
                sha256_of(path)
            except OSError as exc:
                failures.append(f"{path}: {exc}")
            count += 1
    return count


def walk_during_rescans(sample_library, good_files, mount_factory, tmp_path, *, copies: int, rounds: int
                        ) -> dict:
    root = tmp_path / "library"
    library_of_copies(sample_library[0], root, copies)
    mounted = mount_factory(origin=root)
    mnt = mounted.mountpoint
    baseline = {str(path.relative_to(mnt)): os.stat(path).st_ino for path in mounted_tracks(mnt).values()}
    seen: dict[str, set[int]] = defaultdict(set)
    failures: list[str] = []
    finds: list[subprocess.CompletedProcess] = []
    walks = 0
    with ControlClient.for_mount(mounted.state_dir, mnt) as client:
        rescans = Rescans(client, sample_library[0], root, {f["path"] for f in good_files}, copies, rounds)
        rescans.start()
        while rescans.is_alive() or not finds:
            finds.append(subprocess.run(["find", str(mnt), "-type", "f", "-exec", "cat", "{}", "+"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        timeout=300))
            _walk_and_read(mnt, seen, failures)
            walks += 1
        rescans.join()
        final_tree = mounted_tracks(mnt)

    assert not rescans.errors, rescans.errors
    assert [f["phase"] for f in rescans.finals] == ["complete"] * rounds, rescans.finals
    assert sum(f["added"] for f in rescans.finals) > 0 and sum(f["modified"] for f in rescans.finals) > 0
    for find in finds:
        assert find.returncode == 0 and not find.stderr, f"find exited {find.returncode}: {find.stderr[:500]}"
    assert not failures, failures[:5]
    split = {path: inodes for path, inodes in seen.items() if len(inodes) > 1}
    assert not split, f"{len(split)} paths showed more than one inode, e.g. {sorted(split.items())[:3]}"
    moved = {path for path, ino in baseline.items() if path in seen and seen[path] != {ino}}
    assert not moved, f"{len(moved)} paths changed inode across rescans, e.g. {sorted(moved)[:3]}"
    missing = rescans.added - set(final_tree)
    assert not missing, f"{len(missing)} added tracks missing after the last rescan, e.g. {sorted(missing)[:3]}"
    assert mounted.alive() and "Traceback" not in mounted.log_text(), mounted.log_text()[-3000:]
    return {"walks": walks, "finds": len(finds), "rescans": len(rescans.finals),
            "files": len(seen), "added": len(rescans.added)}


@pytest.mark.req("FAULT-32", "FR-9.2", "FS-6")
def test_f32_find_and_cat_of_the_whole_mount_while_rescans_run(sample_library, good_files, mount_factory,
                                                               tmp_path, capsys):
    result = walk_during_rescans(sample_library, good_files, mount_factory, tmp_path, copies=2, rounds=6)
    with capsys.disabled():
        print(f"\nFAULT-32 (fast): {result}")


@pytest.mark.slow
@pytest.mark.req("FAULT-32", "FR-9.2", "FS-6")
def test_f32_long_walks_of_a_bigger_mount_while_rescans_run(sample_library, good_files, mount_factory,
                                                            tmp_path, capsys):
    result = walk_during_rescans(sample_library, good_files, mount_factory, tmp_path, copies=10, rounds=30)
    with capsys.disabled():
        print(f"\nFAULT-32 (slow): {result}")
