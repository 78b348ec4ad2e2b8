"""Many first reads at once from a slow origin cost about as much as one (ASYNC-2).

The origin sits behind the chaos proxy with latency added to every answer.
Reads that wait on it must wait side by side: a daemon that fetched one file
at a time would take a hundred times as long for a hundred files, and one
whose origin client queued requests behind a few connections would take
tens of times as long.

What is measured, and why so: a hundred cold reads of different files through
the mount, divided by the time of one. The reads wait on latency together, but
the work they cause is done by two cores shared by everyone: the daemon (FUSE
requests, SSH decryption, chunking, chunk files), the proxy (Python)
and the server. That work, a few milliseconds per file, is added to the wait.
So the same hundred reads are also sent straight to the origin from a thread
pool in this process (no mount): the floor this machine allows, printed beside
the result. That floor is checked too: the origin on its own must fit the
hundred answers in about one round trip (its connection window).

The origin measured is SFTP against OpenSSH's sshd (C): its own cost is small,
so the ratio shows the daemon. The requirement is judged at +400 ms, where a
round trip is long next to that work; the same run measures +100 ms and
reports it with its floor. An S3 bucket behind the proxy gets the same hundred
reads to show that they overlap there too; moto (Python) spends several
milliseconds of CPU on each request, so only a bound far below serial is
checked there.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos.checks import assert_cache_sound
from chaos.remote import cache_lines, origin_lines
from fixtures.bigfile import write_wav
from musicfs.origins.sftp import SftpOrigin
from tests.harness import mount_library, mounted_tracks
from tests.s3server import aws_env, moto_server
from tests.sshserver import ssh_server

FILES = 103  # three read alone first, then a hundred together
SINGLES = 3
SIZE = 192 * 1024
JUDGED_MS = 400  # the latency ASYNC-2 is judged at
ALSO_MS = 100  # measured and reported in the same run
S3_MS = 400
S3_BOUND = 10.0  # far below the ~100x of reads made one after another
# The SFTP origin on its own, at +400 ms: about one read's time plus the CPU the hundred cost
# (1.12-1.14x measured). A connection window smaller than the hundred answers (18.75 MiB) adds a
# round trip: 1.55x with 16 MiB.
FLOOR_BOUND = 1.4


@dataclass
class Bench:
    """A server holding the files, the proxy in front of it, and how to mount it through the proxy."""

    proxy: object  # toxiproxy-python Proxy
    expected: dict[str, str]  # real path -> sha256
    sizes: dict[str, int]
    config: Callable[[Path], Path]  # work dir -> a musicfs.toml reaching the server through the proxy
    env: dict[str, str]
    origin: Callable[[], object] | None = None  # an origin object reaching the same place, for the floor


def cold_files(work: Path) -> dict[str, bytes]:
    files = {}
    for i in range(FILES):
        path = write_wav(work / "source.wav", SIZE, seed=1000 + i)
        files[f"take {i:03d}.wav"] = path.read_bytes()
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def sftp_bench(toxiproxy, tmp_path_factory):
    work = tmp_path_factory.mktemp("slow-sftp")
    files = cold_files(work)
    with ssh_server() as server:
        for name, data in files.items():
            (server.root / name).write_bytes(data)
        proxy = toxiproxy.create(upstream=f"127.0.0.1:{server.port}", name="slow-sftp", listen="127.0.0.1:0")
        try:
            options = server.options_via(proxy.listen, work, timeout=10.0)

            def config(where: Path) -> Path:
                where.mkdir(parents=True, exist_ok=True)
                lines = [*cache_lines(10.0), *origin_lines("remote", "sftp", options)]
                (where / "musicfs.toml").write_text("\n".join(lines))
                return where / "musicfs.toml"

            yield Bench(proxy, {n: sha256(d) for n, d in files.items()}, {n: len(d) for n, d in files.items()},
                        config, {},
                        origin=lambda: SftpOrigin.from_options("floor", options))
        finally:
            proxy.destroy()


@pytest.fixture(scope="module")
def s3_bench(toxiproxy, tmp_path_factory):
    work = tmp_path_factory.mktemp("slow-bucket")
    files = cold_files(work)
    with moto_server() as server:
        bucket = server.create_bucket(files)
        proxy = toxiproxy.create(upstream=f"127.0.0.1:{server.port}", name="slow-bucket", listen="127.0.0.1:0")
        try:
            def config(where: Path) -> Path:
                where.mkdir(parents=True, exist_ok=True)
                options = {"bucket": bucket, "endpoint": f"http://{proxy.listen}"}
                lines = [*cache_lines(10.0), *origin_lines("bucket", "s3", options)]
                (where / "musicfs.toml").write_text("\n".join(lines))
                return where / "musicfs.toml"

            yield Bench(proxy, {n: sha256(d) for n, d in files.items()}, {n: len(d) for n, d in files.items()},
                        config, aws_env(work / "aws-home"))
        finally:
            proxy.destroy()


def concurrently(func, items) -> float:
    """Run ``func`` on every item, each in its own thread, all released at once; wall seconds."""
    gate = threading.Barrier(len(items) + 1)
    errors = []

    def worker(item):
        gate.wait()
        try:
            func(item)
        except Exception as exc:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join(60)
    elapsed = time.perf_counter() - started
    assert not errors, errors[:3]
    return elapsed


def one_then_many(read: Callable[[str], bytes], names: list[str], expected: dict[str, str]) -> tuple[float, float]:
    """(median seconds of a read alone, seconds of the rest at once); every read checked afterwards."""
    results: dict[str, bytes] = {}
    singles = []
    for name in names[:SINGLES]:
        started = time.perf_counter()
        results[name] = read(name)
        singles.append(time.perf_counter() - started)

    def keep(name: str) -> None:
        results[name] = read(name)

    together = concurrently(keep, names[SINGLES:])
    assert {n: sha256(results[n]) for n in names} == {n: expected[n] for n in names}
    return statistics.median(singles), together


def read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@contextmanager
def slowed(proxy, latency_ms: int):
    proxy.add_toxic(name="slow", type="latency", attributes={"latency": latency_ms})
    try:
        yield
    finally:
        proxy.destroy_toxic("slow")


def through_mount(bench: Bench, work: Path, latency_ms: int, index: Path | None = None) -> tuple[float, float, Path]:
    """Mount with a cold cache, add the latency, read; (one, together, the scanned index to reuse)."""
    with mount_library(config=bench.config(work), work=work / "mount", index=index, env=bench.env) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        assert set(tracks) == set(bench.expected)
        with slowed(bench.proxy, latency_ms):
            one, together = one_then_many(lambda name: read_file(tracks[name]), sorted(tracks), bench.expected)
        assert one >= latency_ms / 1000, f"a cold read took {one * 1000:.0f} ms: the latency was not applied"
        assert mounted.alive()
    assert_cache_sound(mounted.cache_dir, bench.expected)
    kept = work / "index.db"
    shutil.copyfile(mounted.index, kept)
    return one, together, kept


def straight_to_origin(bench: Bench, latency_ms: int) -> float:
    """The same reads from a thread pool through the origin class itself, no mount: the floor's ratio."""
    origin = bench.origin()
    try:
        origin.health()  # connected before the clock starts, as the mount is
        with slowed(bench.proxy, latency_ms):
            one, together = one_then_many(lambda name: origin.read_range(name, 0, bench.sizes[name]),
                                          sorted(bench.expected), bench.expected)
    finally:
        origin.close()
    return together / one


@pytest.mark.req("ASYNC-2")
def test_a_hundred_cold_reads_take_about_as_long_as_one(sftp_bench, tmp_path, record_requirement,
                                                        requirement_catalogue):
    count = FILES - SINGLES
    also_one, also_together, index = through_mount(sftp_bench, tmp_path / "also", ALSO_MS)
    one, together, _ = through_mount(sftp_bench, tmp_path / "judged", JUDGED_MS, index=index)
    floors = {ms: straight_to_origin(sftp_bench, ms) for ms in (JUDGED_MS, ALSO_MS)}
    assert floors[JUDGED_MS] < FLOOR_BOUND, (
        f"a hundred reads straight through the SFTP origin took {floors[JUDGED_MS]:.2f}x one: "
        "they did not all fit one round trip")
    target = requirement_catalogue["ASYNC-2"].target
    # the machine's own floor can be above the target: then no daemon could show it here, and
    # the report says so beside the figure instead of the target looking like the daemon's miss
    floor_note = (f"; this machine's floor is above the {target:g}x target, so the target cannot "
                  f"be shown here (through the mount: {together / one / floors[JUDGED_MS]:.2f}x "
                  "the floor)" if floors[JUDGED_MS] > target else "")
    record_requirement(
        "ASYNC-2", together / one, samples=count,
        detail=f"{count} cold reads of {SIZE // 1024} KiB from SFTP at once through +{JUDGED_MS} ms: "
               f"{together * 1000:.0f} ms, one alone {one * 1000:.0f} ms (the same reads straight to the "
               f"origin, no mount: {floors[JUDGED_MS]:.2f}x); at +{ALSO_MS} ms: "
               f"{also_together / also_one:.2f}x ({also_together * 1000:.0f} / {also_one * 1000:.0f} ms; "
               f"no mount: {floors[ALSO_MS]:.2f}x){floor_note}")


def test_a_hundred_cold_reads_from_a_bucket_wait_side_by_side(s3_bench, tmp_path):
    one, together, _ = through_mount(s3_bench, tmp_path, S3_MS)
    ratio = together / one
    print(f"\nS3: {FILES - SINGLES} cold reads at once through +{S3_MS} ms: {together * 1000:.0f} ms, "
          f"one alone {one * 1000:.0f} ms ({ratio:.2f}x)")
    assert ratio < S3_BOUND, f"a hundred cold reads from S3 took {ratio:.1f}x one: they queued"
