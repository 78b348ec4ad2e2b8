"""MM-6: a soak of mixed load over two federated origins with faults, judged for drift.

Seed 001 asks for a long stability run (24 h there, "no crash, no lock-up"); the catalogue's MM-6
says a mixed load of browsing, reading and rescans ends with no crash, no stuck request and no
growth in open descriptors or memory. A leak grows with the work done, so the soak does a lot of
different work at once, for :data:`SOAK_SECONDS` of wall time (setup included; the environment
variable ``MUSICFS_SOAK_SECONDS``, 100 in ``make test``, 3600 in ``make soak``):

* **the library**: the sample library split three ways over an S3 bucket (``bucket``, priority 1,
  reached through Toxiproxy and the HTTP fault proxy) and a local folder (``backup``, priority 2):
  a third on S3 only, a third on both (one track, two replicas), a third local only; plus big
  WAVs on S3 only and on both. The chunk cache is smaller than the big files together, so
  eviction never stops and cold reads keep reaching the origins all through the soak.
* **readers** read whole tracks (O_DIRECT, so every read reaches the daemon, or through the page
  cache) and check their SHA-256 against the origin's bytes; every call is timed.
* **walkers** list and stat the whole tree, read each file's real-path xattr, status.json and the
  control API; every pass must see every track that is not being changed.
* **a mutator** adds, removes and retags tracks on one origin or the other, then asks that origin
  for a live rescan through the control API; a rescan with no fault during it must report exactly
  that one change, and the tree must then show it (new name for a retag, gone for a removal);
  changed tracks go back to the readers, who check their new bytes.
* **origin faults** on the S3 origin, one after another with clear spells between: an outage
  (connection refused), 502 error pages, 503 SlowDown with Retry-After, added latency and jitter.

What may fail: a read of a track whose only origin is S3, while S3 is refused or erroring (or
within :data:`GRACE` seconds after), with EIO, within the read deadline (``read_timeout``) plus
:data:`SLACK`; an S3 rescan that overlaps such a fault. Anything else (a wrong byte, an error
on a replicated or local track, a listing error, a call slower than its bound, a track missing
from a walk, a failed rescan of the local origin) fails the soak.

Drift: after a warm-up (caches of bounded size fill; thread pools and connection pools reach
their working size) the load pauses once and the idle daemon is sampled (the baseline); the
daemon's resident memory, descriptors and threads are sampled every second of the rest. The
medians of the last third of the samples may exceed those of the first third by at most
:data:`RSS_DRIFT_MB` or :data:`RSS_DRIFT_RATIO` (memory) and :data:`FD_DRIFT` descriptors; the
lowest thread count of the last third may exceed that of the first by at most
:data:`THREAD_DRIFT` threads. (Worker threads are a pool that grows with the calls waiting at
once and shrinks 10 s after: a third's median says which faults it held, a latency fault holding
the most origin calls, and once moved from 9 to 15 with no leak; a leaked thread raises every
sample, the lowest too.) Once the load stops the idle daemon holds no more descriptors than
at the baseline or early in the measured load, whichever is more (connection pools may still grow
after a short warm-up), give or take :data:`FD_IDLE_SLACK`, and, once idle worker threads had
time to end (:data:`THREAD_RETIRE_SECONDS`), no more threads than the warm-up ever needed; its
peak memory stays within NFR-4.3's maximum; its pid never changes. The series are written to
``build/mm6-soak.json`` and summarised on the terminal (with the memory slope per hour, which a
short soak cannot judge but an hour's can be read from).
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR

import pytest

from chaos.checks import cached_file_digests
from chaos.httpfaults import BAD_GATEWAY_PAGE
from chaos.s3lab import PREFIX, S3Lab, s3_lab
from conformance.daemons import fd_count, fd_kinds
from conformance.measure import proc_status_mb
from fixtures.bigfile import write_wav
from fixtures.tags import TagPlan, write_tags
from musicfs.control.client import ControlClient
from musicfs.index.artwork import COVER_NAMES
from musicfs.store.inspect import verify_chunks
from tests.harness import MountedLibrary, mount_library, mount_status, mounted_tracks, settled
from tests.s3server import aws_env

SOAK_SECONDS = float(os.environ.get("MUSICFS_SOAK_SECONDS", "100"))  # wall time, setup included
TEARDOWN_RESERVE = 20.0  # seconds kept at the end for stopping, the idle sample, unmounting, the cache check
READ_TIMEOUT = 4.0  # the mount's read deadline: a read answers (bytes or EIO) within it
ORIGIN_TIMEOUT = 2.0  # one S3 request
HEALTH_INTERVAL = 0.5
SLACK = 2.0  # seconds beyond the read deadline a reader may wait for its answer (a 2-core shared machine)
GRACE = 3.0  # seconds after a fault clears during which a read of an S3-only track may still fail
META_STALL = 3.0  # no listing, stat, xattr or status read may take longer than this
RESCAN_BOUND = 60.0  # no rescan may take longer than this, faults or not
CACHE_SIZE = 12 * 2**20  # smaller than the big tracks together: eviction all through the soak
BIG_SIZE = 4 * 2**20
CALL = 128 * 1024  # bytes asked for by one read call
READERS, WALKERS = 3, 2
CLEAR_SECONDS, FAULT_SECONDS = 8.0, 6.0
MUTATE_EVERY = 9.0  # seconds between changes at an origin (each followed by a rescan)
SAMPLE_EVERY = 1.0
RSS_DRIFT_MB, RSS_DRIFT_RATIO = 10.0, 0.10  # the larger of the two is allowed
FD_DRIFT = 4  # descriptors, between the medians of the first and last thirds
FD_IDLE_SLACK = 2  # descriptors the idle daemon may hold at the end beyond its idle reference
THREAD_DRIFT = 4  # threads, between the medians of the first and last thirds
THREAD_RETIRE_SECONDS = 15.0  # trio ends a worker thread idle for 10 s
CHURN_ARTIST = "Soak Churn"  # the tree folder of the tracks the mutator changes
S3, LOCAL = "bucket", "backup"
FAULTS = ("outage", "bad-gateway", "latency", "slow-down")  # in turn
DOWN = {"outage", "bad-gateway", "slow-down"}  # faults during which S3 serves nothing


def threads_of(pid: int) -> int:
    """How many threads the process has now (/proc/<pid>/status ``Threads``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise RuntimeError(f"no thread count for pid {pid}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the library ------------------------------------------------------------------------------
@dataclass
class Track:
    """A track the readers may read: where it is mounted, its bytes' digest, which origins hold it."""

    real: str
    path: Path
    sha256: str
    origins: frozenset[str]
    big: bool = False


def split_library(sample: Path, good_files: list[dict], work: Path) -> tuple[dict[str, bytes], Path, dict]:
    """The sample library over S3 and a local folder, plus big WAVs: (S3 objects, local folder,
    real path -> (sha256, origins, big))."""
    local = work / "local"
    s3: dict[str, bytes] = {}
    layout: dict[str, tuple[str, frozenset[str], bool]] = {}
    files = {f["path"]: (sample / f["path"]).read_bytes() for f in sorted(good_files, key=lambda f: f["path"])}
    for i in range(6):  # four big tracks on S3 only, two on both
        files[f"Soak/Recordings/take {i}.wav"] = write_wav(work / f"take{i}.wav", BIG_SIZE, seed=600 + i).read_bytes()
    for n, (real, data) in enumerate(files.items()):
        big = real.startswith("Soak/")
        where = ({S3} if int(real[-5]) < 4 else {S3, LOCAL}) if big else [{S3}, {S3, LOCAL}, {LOCAL}][n % 3]
        if S3 in where:
            s3[real] = data
        if LOCAL in where:
            (local / real).parent.mkdir(parents=True, exist_ok=True)
            (local / real).write_bytes(data)
        layout[real] = (sha(data), frozenset(where), big)
    return s3, local, layout


def write_config(path: Path, lab: S3Lab, endpoint: str, local: Path) -> Path:
    """The S3 origin through ``endpoint`` (Toxiproxy, then the HTTP fault proxy), the folder second."""
    lines = ["[cache]", f"read_timeout = {READ_TIMEOUT}", f"size = {CACHE_SIZE}", "",
             "[health]", f"interval = {HEALTH_INTERVAL}", "",
             "[[origins]]", f'id = "{S3}"', 'type = "s3"', "priority = 1", f'bucket = "{lab.bucket}"',
             f'endpoint = "{endpoint}"', f'prefix = "{PREFIX}"', 'region = "us-east-1"',
             f"timeout = {ORIGIN_TIMEOUT}", "",
             "[[origins]]", f'id = "{LOCAL}"', 'type = "local"', "priority = 2", f"path = {json.dumps(str(local))}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def churn_track(scratch: Path, origin: str, number: int, version: int, rng: random.Random) -> bytes:
    """A small tagged WAV of the churn artist; a new version has a new title (so a new name in the tree)."""
    path = scratch / f"churn-{origin}-{number}-{version}.wav"
    write_wav(path, rng.randrange(128, 768) * 1024, seed=rng.randrange(2**31))
    write_tags(path, "wav", TagPlan(style="id3v2.4", values={
        "artist": CHURN_ARTIST, "album": f"Churn {origin}", "year": 2024, "track": number,
        "title": churn_title(number, version)}))
    data = path.read_bytes()
    path.unlink()
    return data


def churn_title(number: int, version: int) -> str:
    return f"Take {number} v{version}"


# -- what happened, shared by the threads -------------------------------------------------------
@dataclass
class Journal:
    """Fault windows, failures, tolerated errors and counts; every method is thread-safe."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    windows: list[list] = field(default_factory=list)  # [kind, start, end or None]
    failures: list[str] = field(default_factory=list)
    tolerated: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)
    eio_seconds: list[float] = field(default_factory=list)

    def fault_started(self, kind: str) -> None:
        with self.lock:
            self.windows.append([kind, time.monotonic(), None])

    def fault_ended(self) -> None:
        with self.lock:
            if self.windows and self.windows[-1][2] is None:
                self.windows[-1][2] = time.monotonic()

    def overlaps(self, start: float, end: float, kinds: set[str], grace: float = GRACE) -> bool:
        """Whether a fault of ``kinds`` was on (or had ended under ``grace`` s before) during [start, end]."""
        with self.lock:
            return any(kind in kinds and begun <= end and (ended is None or ended + grace >= start)
                       for kind, begun, ended in self.windows)

    def faults_during(self, start: float, end: float) -> list[str]:
        with self.lock:
            return sorted({kind for kind, begun, ended in self.windows
                           if begun <= end and (ended is None or ended + GRACE >= start)})

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(f"{time.monotonic():.1f}: {what}")

    def count(self, what: str, n: float = 1) -> None:
        with self.lock:
            self.counts[what] += n


class Tracks:
    """The tracks readers may read. The mutator withdraws one (waiting for its readers to finish)
    before changing it at its origin, and puts it back once a rescan showed the change."""

    def __init__(self, tracks: dict[str, Track]):
        self._cond = threading.Condition()
        self._tracks = dict(tracks)
        self._busy: Counter = Counter()

    def take(self, rng: random.Random) -> Track:
        with self._cond:
            pool = list(self._tracks.values())
            big = [t for t in pool if t.big]
            track = rng.choice(big if big and rng.random() < 0.3 else [t for t in pool if not t.big])
            self._busy[track.real] += 1
            return track

    def give(self, track: Track) -> None:
        with self._cond:
            self._busy[track.real] -= 1
            self._cond.notify_all()

    def withdraw(self, real: str) -> None:
        with self._cond:
            self._tracks.pop(real, None)
            self._cond.wait_for(lambda: self._busy[real] == 0)

    def put(self, track: Track) -> None:
        with self._cond:
            self._tracks[track.real] = track

    def stable(self) -> set[str]:
        """Real paths the tree must show in every walk (what is not being changed)."""
        with self._cond:
            return {real for real in self._tracks if not real.startswith("Churn/")}


class Worker(threading.Thread):
    """A load thread: pauses while ``running`` is clear, stops at ``stop``; says what it is doing."""

    def __init__(self, name: str, soak: Soak):
        super().__init__(name=name, daemon=True)
        self.soak = soak
        self.rng = random.Random(name)
        self.current: tuple[str, float] | None = None  # (what, since) of the call in flight
        self.paused = False
        self.flagged = False  # already reported as stuck

    def run(self) -> None:
        try:
            while not self.soak.stop.is_set():
                if not self.soak.running.is_set():
                    self.paused = True
                    self.soak.running.wait()
                    self.paused = False
                    continue
                self.step()
                time.sleep(self.rng.uniform(0, 0.02))
        except Exception as exc:  # a bug in the soak itself must fail it, not vanish with the thread
            self.soak.journal.fail(f"{self.name} crashed: {type(exc).__name__}: {exc}")
        finally:
            self.current = None

    def step(self) -> None:
        raise NotImplementedError

    def timed(self, what: str, bound: float, call, *args):
        """``call(*args)``, timed; a call slower than ``bound`` is a stuck request."""
        started = time.monotonic()
        self.current = (what, started)
        try:
            return call(*args)
        finally:
            self.current = None
            elapsed = time.monotonic() - started
            if elapsed > bound:
                self.soak.journal.fail(f"{what} took {elapsed:.2f} s (bound {bound:.1f} s)")


class Reader(Worker):
    def step(self) -> None:
        track = self.soak.tracks.take(self.rng)
        try:
            self.read(track, direct=self.rng.random() < 0.7)
        finally:
            self.soak.tracks.give(track)

    def read(self, track: Track, direct: bool) -> None:
        """Read ``track`` whole, call by call, and check its digest; judge any error."""
        journal, digest, fd, size = self.soak.journal, hashlib.sha256(), None, 0
        buffer = mmap.mmap(-1, CALL)  # page-aligned, as O_DIRECT wants
        started = time.monotonic()
        try:
            fd = self.timed(f"open {track.real}", READ_TIMEOUT + SLACK, os.open, track.path,
                            os.O_RDONLY | (os.O_DIRECT if direct else 0))
            while not self.soak.stop.is_set():  # a stopping soak abandons the read (no verdict)
                started = time.monotonic()
                n = self.timed(f"read {track.real}", READ_TIMEOUT + SLACK, os.readv, fd, [buffer])
                if n == 0:
                    break
                digest.update(memoryview(buffer)[:n])
                size += n
            else:
                return
        except OSError as exc:
            self.judge_error(track, exc, started)
            return
        finally:
            if fd is not None:
                os.close(fd)
            buffer.close()
        if digest.hexdigest() != track.sha256:
            journal.fail(f"{track.real}: wrong bytes ({'O_DIRECT' if direct else 'page cache'})")
        journal.count("reads")
        journal.count("MB read", size / 1e6)

    def judge_error(self, track: Track, exc: OSError, started: float) -> None:
        """EIO of an S3-only track while S3 served nothing is the design; any other error is not."""
        journal, now = self.soak.journal, time.monotonic()
        if (exc.errno == errno.EIO and track.origins == {S3} and journal.overlaps(started, now, DOWN)):
            journal.tolerated["EIO of an S3-only track during an S3 fault"] += 1
            with journal.lock:
                journal.eio_seconds.append(now - started)
            return
        faults = journal.faults_during(started, now)
        journal.fail(f"{track.real} (on {'+'.join(sorted(track.origins))}): {exc!r} "
                     f"after {now - started:.2f} s, faults then: {faults or 'none'}")


class Walker(Worker):
    def __init__(self, name: str, soak: Soak):
        super().__init__(name, soak)
        self.client: ControlClient | None = None

    def step(self) -> None:
        """One pass over the whole tree; every stable track must be in it."""
        soak, journal = self.soak, self.soak.journal
        mnt = soak.mounted.mountpoint
        stable = soak.tracks.stable()  # before the walk: a track put back during it need not be seen
        seen: set[str] = set()

        def tolerate(path: Path, exc: OSError) -> bool:
            """A name under the churn folder may vanish between listing and looking: a rescan moved it."""
            return exc.errno == errno.ENOENT and path.relative_to(mnt).parts[:1] == (CHURN_ARTIST,)

        folders = [mnt]
        while folders and not soak.stop.is_set():
            folder = folders.pop()
            try:
                names = self.timed(f"listdir {folder}", META_STALL, os.listdir, folder)
            except OSError as exc:
                if not tolerate(folder, exc):
                    journal.fail(f"listdir {folder}: {exc!r}")
                continue
            for name in names:
                path = folder / name
                try:
                    st = self.timed(f"stat {path}", META_STALL, os.stat, path)
                    if S_ISDIR(st.st_mode):
                        if not name.startswith("."):
                            folders.append(path)
                        continue
                    if name in COVER_NAMES:  # an album's cover: its type, and its bytes
                        self.timed(f"getxattr {path}", META_STALL, os.getxattr, path, "user.musicfs.mime")
                        self.timed(f"read {path}", META_STALL, path.read_bytes)
                        continue
                    real = self.timed(f"getxattr {path}", META_STALL, os.getxattr, path, "user.musicfs.real_path")
                    seen.add(real.decode())
                except OSError as exc:
                    if not tolerate(path, exc):
                        journal.fail(f"{path}: {exc!r}")
        if soak.stop.is_set():
            return
        missing = stable - seen
        if missing:
            journal.fail(f"a walk missed {len(missing)} tracks, e.g. {sorted(missing)[:3]}")
        status = self.timed("status.json", META_STALL, (mnt / ".musicfs" / "status.json").read_bytes)
        if json.loads(status)["pid"] != soak.mounted.pid:
            journal.fail("status.json names another pid")
        if self.client is None:
            self.client = ControlClient.for_mount(soak.mounted.state_dir, mnt)
        for endpoint in ("/v1/status", "/v1/origins", "/v1/cache"):
            self.timed(f"GET {endpoint}", META_STALL, self.client.get, endpoint)
        journal.count("walks")
        journal.count("entries walked", len(seen))

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.client is not None:
                self.client.close()


class Mutator(Worker):
    """Changes one origin, rescans it, checks the tree shows the change, then the other origin."""

    def __init__(self, soak: Soak):
        super().__init__("mutator", soak)
        self.churn: dict[str, dict[str, int]] = {S3: {}, LOCAL: {}}  # origin -> real -> version
        self.versions: dict[str, set[str]] = {}  # real -> sha256 of every version ever written
        self.next_number = 1
        self.turn = 0
        self.rescans: Counter = Counter()
        self.client: ControlClient | None = None

    def step(self) -> None:
        soak = self.soak
        origin = (S3, LOCAL)[self.turn % 2]
        self.turn += 1
        self.change(origin)
        # the next change after a pause; a stopping soak still finishes checking this one
        deadline = time.monotonic() + MUTATE_EVERY
        while time.monotonic() < deadline and soak.running.is_set() and not soak.stop.is_set():
            time.sleep(0.2)

    def change(self, origin: str) -> None:
        soak, rng = self.soak, self.rng
        churn = self.churn[origin]
        action = "add" if len(churn) < 2 else "remove" if len(churn) >= 5 else rng.choice(["add", "remove", "retag"])
        if action == "add":
            number = self.next_number
            self.next_number += 1
            real, version = f"Churn/{origin}-{number}.wav", 1
        else:
            real = rng.choice(sorted(churn))
            number, version = int(real.split("-")[-1].split(".")[0]), churn[real] + 1
            soak.tracks.withdraw(real)  # no reader is reading it when it changes
        changed_at = time.monotonic()
        data = None if action == "remove" else churn_track(soak.work, origin, number, version, rng)
        self.apply(origin, real, data)
        if data is None:
            del churn[real]
        else:
            churn[real] = version
            self.versions.setdefault(real, set()).add(sha(data))
        kind = {"add": "added", "remove": "removed", "retag": "modified"}[action]
        self.rescan_until_shown(origin, real, kind, changed_at,
                                None if data is None else (churn_title(number, version), sha(data)))

    def apply(self, origin: str, real: str, data: bytes | None) -> None:
        """The change, made at the origin itself (not through the mount, which is read-only)."""
        if origin == S3:
            client = self.soak.lab.server.client()
            if data is None:
                client.delete_object(Bucket=self.soak.lab.bucket, Key=PREFIX + real)
            else:
                client.put_object(Bucket=self.soak.lab.bucket, Key=PREFIX + real, Body=data)
            return
        target = self.soak.local / real
        if data is None:
            target.unlink()
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = self.soak.work / "staging.wav"
        staging.write_bytes(data)
        os.replace(staging, target)  # as a tagger saves: the whole new file at once

    def rescan_until_shown(self, origin: str, real: str, kind: str, changed_at: float,
                           new: tuple[str, str] | None) -> None:
        """Rescan ``origin`` until the tree shows the change; judge each rescan."""
        soak, journal = self.soak, self.soak.journal
        if self.client is None:
            self.client = ControlClient.for_mount(soak.mounted.state_dir, soak.mounted.mountpoint)
        first = True
        give_up = time.monotonic() + max(120.0, 4 * RESCAN_BOUND)
        while time.monotonic() < give_up:
            started = time.monotonic()
            documents = self.timed(f"rescan of {origin}", RESCAN_BOUND, lambda: list(
                self.client.stream("POST", f"/v1/origins/{origin}/rescan")))
            final = documents[-1]
            faulted = origin == S3 and journal.overlaps(changed_at if first else started, time.monotonic(),
                                                        set(FAULTS))
            self.rescans[origin, final["phase"]] += 1
            if final["phase"] != "complete":
                if origin == S3 and journal.overlaps(started, time.monotonic(), DOWN):
                    journal.tolerated["S3 rescan failed during an S3 fault"] += 1
                else:
                    journal.fail(f"rescan of {origin} {final['phase']} with no fault to explain it: {final}")
                time.sleep(1.0)
                continue
            if first and not faulted:  # a clean rescan right after one change reports exactly it
                counts = {k: final[k] for k in ("added", "modified", "removed")}
                want = {k: int(k == kind) for k in counts}
                if counts != want or final.get("partial"):
                    journal.fail(f"rescan of {origin} after one {kind} {real}: {final}")
            first = False
            shown = self.shown(origin, real, new)
            if shown is True:
                return
            if not faulted:
                journal.fail(f"after a complete rescan of {origin}, {real}: {shown}")
                return
            time.sleep(1.0)  # a rescan under faults may have missed it: the next one must not
        journal.fail(f"{real} ({kind} at {origin}) never shown in the tree after rescans")

    def shown(self, origin: str, real: str, new: tuple[str, str] | None) -> bool | str:
        """True when the tree holds exactly this origin's churn tracks, ``real`` with its new title
        (it goes back to the readers then); otherwise what is wrong."""
        soak = self.soak
        tracks = self.timed("walk for the churn", RESCAN_BOUND, mounted_tracks, soak.mounted.mountpoint)
        prefix = f"Churn/{origin}-"
        there = {r for r in tracks if r.startswith(prefix)}
        if there != set(self.churn[origin]):
            return f"tree shows {sorted(there)}, the origin holds {sorted(self.churn[origin])}"
        if new is None:
            return True
        title, digest = new
        if title not in tracks[real].name:
            return f"{real} is at {tracks[real]}, not under its new title {title!r}"
        soak.tracks.put(Track(real, tracks[real], digest, frozenset({origin})))
        soak.journal.count(f"changes shown ({origin})")
        return True

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.client is not None:
                self.client.close()


@dataclass
class Soak:
    mounted: MountedLibrary
    lab: S3Lab
    local: Path
    work: Path
    tracks: Tracks
    journal: Journal = field(default_factory=Journal)
    running: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)


class FaultSchedule:
    """Turns the S3 origin's faults on and off in turn: clear, a fault, clear, the next fault."""

    def __init__(self, lab: S3Lab, tox, journal: Journal):
        self.lab, self.tox, self.journal = lab, tox, journal
        self.kind: str | None = None
        self.turn = 0
        self.next_change = time.monotonic() + CLEAR_SECONDS
        self.seen: Counter = Counter()

    def tick(self) -> None:
        if time.monotonic() < self.next_change:
            return
        if self.kind is None:
            self.start(FAULTS[self.turn % len(FAULTS)])
            self.turn += 1
            self.next_change = time.monotonic() + FAULT_SECONDS
        else:
            self.clear()
            self.next_change = time.monotonic() + CLEAR_SECONDS

    def start(self, kind: str) -> None:
        self.kind = kind
        self.seen[kind] += 1
        if kind == "outage":
            self.tox.disable()
        elif kind == "bad-gateway":
            self.lab.proxy.page(None, 502, BAD_GATEWAY_PAGE)
        elif kind == "slow-down":
            self.lab.proxy.busy(None, retry_after=1)
        else:
            self.tox.add_toxic(name="soak-latency", type="latency", attributes={"latency": 300, "jitter": 100})
        self.journal.fault_started(kind)

    def clear(self) -> None:
        """Back to a healthy S3 (the fault proxy also forgets what it saw: an hour's log is big)."""
        if self.kind is None:
            return
        if self.kind == "outage":
            self.tox.enable()
        elif self.kind == "latency":
            self.tox.destroy_toxic("soak-latency")
        self.lab.proxy.reset()
        self.journal.fault_ended()
        self.kind = None


# -- the drift checks -------------------------------------------------------------------------
@dataclass
class Sample:
    at: float  # seconds since the measured part began
    rss_mb: float
    fds: int
    threads: int


def thirds(samples: list[Sample], attribute: str, statistic=statistics.median) -> tuple[float, float]:
    """``statistic`` (the median unless said) of the first and of the last third of a series."""
    n = len(samples) // 3
    values = [getattr(s, attribute) for s in samples]
    return statistic(values[:n]), statistic(values[-n:])


def slope_per_hour(samples: list[Sample], attribute: str) -> float:
    """Least-squares slope of a series, per hour (shown, for reading an hour's soak)."""
    xs, ys = [s.at for s in samples], [getattr(s, attribute) for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def sample_daemon(pid: int, since: float) -> Sample:
    return Sample(round(time.monotonic() - since, 2), proc_status_mb(pid), fd_count(pid), threads_of(pid))


def wait_idle(soak: Soak, workers: list[Worker], timeout: float = 60.0) -> None:
    """Until every worker is paused (or done) and no fill runs: the daemon has nothing in flight."""
    deadline = time.monotonic() + timeout
    while not all(w.paused or not w.is_alive() for w in workers):
        if time.monotonic() > deadline:
            stuck = [f"{w.name}: {w.current}" for w in workers if not (w.paused or not w.is_alive())]
            raise AssertionError(f"load threads did not pause within {timeout} s (stuck requests?): {stuck}")
        time.sleep(0.05)
    settled(soak.mounted.mountpoint, timeout=timeout)
    time.sleep(1.0)


# -- the check --------------------------------------------------------------------------------
@pytest.mark.timeout(SOAK_SECONDS + 300)
@pytest.mark.req("MM-6")
def test_mm6_soak_of_reads_walks_rescans_and_origin_faults_without_drift(
        sample_library, good_files, toxiproxy, requirement_catalogue, tmp_path, request, capsys):
    began = time.monotonic()
    work = tmp_path
    s3_data, local, layout = split_library(sample_library[0], good_files, work)
    with s3_lab(work, s3_data) as lab:
        upstream = lab.proxy.endpoint.removeprefix("http://")
        tox = toxiproxy.create(upstream=upstream, name=f"mm6-{time.monotonic_ns()}", listen="127.0.0.1:0")
        try:
            config = write_config(work / "musicfs.toml", lab, f"http://{tox.listen}", local)
            with mount_library(config=config, work=work / "m", env=aws_env(work / "aws")) as mounted:
                report = run_soak(mounted, lab, tox, local, work, layout, began, requirement_catalogue, capsys,
                                  request.config.rootpath / "build" / "mm6-soak.json")
        finally:
            tox.destroy()
    check_cache(mounted.cache_dir, layout, report)
    with capsys.disabled():
        print(f"MM-6 wall time of the test {time.monotonic() - began:.0f} s (budget {SOAK_SECONDS:.0f} s)")


def run_soak(mounted: MountedLibrary, lab: S3Lab, tox, local: Path, work: Path, layout: dict, began: float,
             catalogue, capsys, series_path: Path) -> dict:
    mnt, pid = mounted.mountpoint, mounted.pid
    paths = mounted_tracks(mnt)
    assert set(paths) == set(layout), f"mounted {len(paths)} tracks of {len(layout)}"
    soak = Soak(mounted, lab, local, work, Tracks({
        real: Track(real, paths[real], digest, origins, big) for real, (digest, origins, big) in layout.items()}))
    journal = soak.journal
    faults = FaultSchedule(lab, tox, journal)
    mutator = Mutator(soak)
    workers: list[Worker] = [*(Reader(f"reader-{n}", soak) for n in range(READERS)),
                             *(Walker(f"walker-{n}", soak) for n in range(WALKERS)), mutator]
    setup = time.monotonic() - began
    load_seconds = SOAK_SECONDS - setup - TEARDOWN_RESERVE
    assert load_seconds >= 60, f"setup took {setup:.0f} s of a {SOAK_SECONDS:.0f} s soak"
    warm_up = min(max(20.0, 0.15 * load_seconds), 300.0)
    soak.running.set()
    for worker in workers:
        worker.start()
    warm: list[Sample] = []
    measured: list[Sample] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < warm_up:
            faults.tick()
            warm.append(sample_daemon(pid, started))
            time.sleep(SAMPLE_EVERY)

        # the baseline: the daemon idle after the warm-up, no fault
        faults.clear()
        soak.running.clear()
        wait_idle(soak, workers)
        baseline = sample_daemon(pid, started)
        baseline_kinds = fd_kinds(pid)
        soak.running.set()
        faults.next_change = time.monotonic() + CLEAR_SECONDS

        measuring = time.monotonic()
        while time.monotonic() - started < load_seconds:
            faults.tick()
            measured.append(sample_daemon(pid, measuring))
            watch_stuck(workers, journal)
            time.sleep(SAMPLE_EVERY)
    finally:
        faults.clear()
        soak.stop.set()
        soak.running.set()
        for worker in workers:
            worker.join(RESCAN_BOUND if worker is mutator else READ_TIMEOUT + SLACK + 5)
    stuck = [f"{w.name}: {w.current}" for w in workers if w.is_alive()]
    settled(mnt)
    time.sleep(1.0)
    idle = sample_daemon(pid, measuring)
    thread_bound = max(s.threads for s in warm + [baseline])
    # trio keeps a finished worker thread for a while in case another call wants it: threads the
    # load needed and no longer does are given that long to end; a leaked thread never does
    retire_by = time.monotonic() + THREAD_RETIRE_SECONDS
    while idle.threads > thread_bound and time.monotonic() < retire_by:
        time.sleep(0.5)
        idle = sample_daemon(pid, measuring)
    extra_fds = fd_kinds(pid) - baseline_kinds  # what an idle daemon holds now that it did not
    load_wall = time.monotonic() - started

    bounds = catalogue["MM-6"].values  # the drift bounds, from the catalogue
    assert (bounds["rss_drift_mb"], bounds["rss_drift_ratio"], bounds["fd_drift"], bounds["thread_drift"]) == (
        RSS_DRIFT_MB, RSS_DRIFT_RATIO, FD_DRIFT, THREAD_DRIFT), "the catalogue's MM-6 bounds changed"
    rss = thirds(measured, "rss_mb")
    fds = thirds(measured, "fds")
    threads = thirds(measured, "threads", min)  # floors: see the module's docstring
    peak_rss = max(s.rss_mb for s in warm + measured)
    rss_bound = max(RSS_DRIFT_MB, RSS_DRIFT_RATIO * rss[0])
    report = {
        "soak_seconds": SOAK_SECONDS, "setup_s": round(setup, 1), "warm_up_s": round(warm_up, 1),
        "load_s": round(load_wall, 1), "baseline": baseline.__dict__, "idle_end": idle.__dict__,
        "rss_mb_thirds": rss, "fds_thirds": fds, "threads_thirds_lowest": threads,
        "threads_thirds_median": thirds(measured, "threads"),
        "rss_slope_mb_per_h": round(slope_per_hour(measured, "rss_mb"), 2),
        "fds_slope_per_h": round(slope_per_hour(measured, "fds"), 2),
        "threads_slope_per_h": round(slope_per_hour(measured, "threads"), 2),
        "peak_rss_mb": peak_rss, "counts": dict(journal.counts), "tolerated": dict(journal.tolerated),
        "eio_max_s": max(journal.eio_seconds, default=None), "faults": dict(faults.seen),
        "rescans": {f"{o}:{p}": n for (o, p), n in mutator.rescans.items()},
        "failures": journal.failures[:50],
        "warm_up": [s.__dict__ for s in warm], "measured": [s.__dict__ for s in measured],
        "versions": {real: sorted(v) for real, v in mutator.versions.items()},
    }
    series_path.parent.mkdir(parents=True, exist_ok=True)
    series_path.write_text(json.dumps(report, indent=1))
    with capsys.disabled():
        print(f"\nMM-6 soak {SOAK_SECONDS:.0f} s (setup {setup:.0f} s, warm-up {warm_up:.0f} s, "
              f"{len(measured)} samples): {dict(journal.counts)}; faults {dict(faults.seen)}; "
              f"rescans {report['rescans']}; tolerated {dict(journal.tolerated)} (slowest EIO "
              f"{report['eio_max_s'] or 0:.2f} s)\n"
              f"MM-6 RSS {rss[0]:.1f} -> {rss[1]:.1f} MB (bound +{rss_bound:.1f}, peak {peak_rss:.1f}, slope "
              f"{report['rss_slope_mb_per_h']:+.1f} MB/h); fds {fds[0]:g} -> {fds[1]:g}, idle {baseline.fds} -> "
              f"{idle.fds}; threads (lowest) {threads[0]:g} -> {threads[1]:g}, idle {baseline.threads} -> {idle.threads}, "
              f"max {max(s.threads for s in measured)}; series in {series_path}")

    assert not stuck, f"load threads still in a call after the soak (stuck requests): {stuck}"
    assert not journal.failures, f"{len(journal.failures)} failures, first ones: {journal.failures[:8]}"
    assert mounted.alive() and mount_status(mnt)["pid"] == pid, "the daemon was replaced or died"
    log = mounted.log_text()
    assert "Traceback" not in log and "unexpectedly" not in log, log[-3000:]
    assert journal.counts["reads"] > 0 and journal.counts["walks"] > 0
    assert all(journal.counts[f"changes shown ({o})"] > 0 for o in (S3, LOCAL)), journal.counts
    assert set(faults.seen) == set(FAULTS), f"not every fault was injected: {dict(faults.seen)}"
    assert rss[1] - rss[0] <= rss_bound, f"memory drifted: median {rss[0]:.1f} -> {rss[1]:.1f} MB"
    assert fds[1] - fds[0] <= FD_DRIFT, f"descriptors drifted: median {fds[0]:g} -> {fds[1]:g}"
    # kept-alive origin connections grow with the load's concurrency until it is steady, which the
    # short warm-up may not have reached: the idle end is judged against the larger of the idle
    # baseline and what the daemon held when the measured load began (a leak grows past both)
    reference = max(baseline.fds, fds[0])
    assert idle.fds <= reference + FD_IDLE_SLACK, (
        f"the idle daemon holds {idle.fds} descriptors, {baseline.fds} at the idle baseline and {fds[0]:g} "
        f"early in the load; more than at the baseline: {dict(extra_fds)}")
    assert threads[1] - threads[0] <= THREAD_DRIFT, f"threads drifted: lowest {threads[0]:g} -> {threads[1]:g}"
    assert idle.threads <= thread_bound, (
        f"the idle daemon has {idle.threads} threads {THREAD_RETIRE_SECONDS:g} s after the load, more than "
        f"the warm-up ever needed ({thread_bound}; {max(s.threads for s in measured)} during the load)")
    assert peak_rss <= catalogue["NFR-4.3"].maximum, f"peak RSS {peak_rss:.1f} MB beyond NFR-4.3"
    return report


def watch_stuck(workers: list[Worker], journal: Journal) -> None:
    """A call in flight far longer than any bound is a stuck request, even if it never returns."""
    now = time.monotonic()
    for worker in workers:
        current = worker.current
        if current is not None and now - current[1] > RESCAN_BOUND + 30 and not worker.flagged:
            worker.flagged = True
            journal.fail(f"{worker.name}: {current[0]} in flight for {now - current[1]:.0f} s")


def check_cache(cache_dir: Path, layout: dict, report: dict) -> None:
    """Nothing wrong was kept: no damaged chunk, and each cached file rebuilds to a version the origin had."""
    assert verify_chunks(cache_dir)["corrupt"] == 0
    versions = {real: {digest} for real, (digest, _, _) in layout.items()}
    versions.update({real: set(v) for real, v in report["versions"].items()})
    for (origin_id, real), digest in cached_file_digests(cache_dir).items():
        if digest is not None:
            assert real in versions, f"{origin_id}:{real} cached but never in the library"
            assert digest in versions[real], f"{origin_id}:{real}: cached chunks hold wrong bytes"
