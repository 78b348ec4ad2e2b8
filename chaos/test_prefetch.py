"""Prefetch on a real mount, measured: a listening session replayed on a cold cache (PH-3.1).

The library is in a bucket (moto's S3 server) behind the chaos proxy, with
latency added to every answer. The session is scripted: two albums played in
order (one track skipped after a few seconds' worth), then a shuffled
playlist played, and played again later (the cache cleared and the kernel's
pages of the mount dropped between the two: what is learned must then bring
the tracks back, not what is still cached). A player reads each track front to
back in 64 KiB reads at a listening pace. The session is replayed twice, each
time on a mount with an empty cache and the same scanned index: prefetch off,
then on. What is counted is the reads that had to wait for the origin (the
reader's cache misses: what a player sees as a stall), and the time to the
first byte of each track opened.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import time
from pathlib import Path

import pytest

from chaos.remote import cache_lines, origin_lines
from conformance.measure import drop_page_cache
from conformance.test_control_cli import ok_json
from fixtures.media import short_track
from tests.harness import mount_library, mount_status, mounted_tracks
from tests.s3server import aws_env, moto_server

LATENCY_MS = 60
READ = 64 * 1024
PACE = 0.03  # seconds between a player's reads: ~2 MB/s, several times a track's bitrate
SKIP_AFTER = 3  # reads of a skipped track
WHOLE_AFTER = 0.3  # [prefetch] whole_after in this test: tracks here last about a second


def library(root: Path) -> list[str]:
    """Three albums of four FLAC tracks of about 1.4 MB (real paths)."""
    paths = []
    for album in range(3):
        for n in range(1, 5):
            path = f"Artist/Album {album}/{n:02d}.flac"
            short_track(root, path, "flac", album * 10 + n, album=f"Album {album}", cover=None, seconds=8.0)
            paths.append(path)
    return paths


def session(paths: list[str]) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """(real path, skipped) in the order a listener opens them: the albums and the playlist's first
    play, then (later) its second play."""
    albums = [(p, p == paths[5]) for p in paths[:8]]  # album 0, then album 1 with its 2nd track skipped
    playlist = [(p, False) for p in random.Random(7).sample(paths[8:] + paths[:2], 6)]  # album 2 and two more
    return albums + playlist, playlist


def play(path: Path, skipped: bool) -> float:
    """Read a track as a player does; seconds to its first byte."""
    started = time.perf_counter()
    first = None
    with open(path, "rb") as f:
        reads = 0
        while f.read(READ):
            if first is None:
                first = time.perf_counter() - started
            reads += 1
            if skipped and reads >= SKIP_AFTER:
                break
            time.sleep(PACE)
    return first or 0.0


def listen(work: Path, config: Path, index: Path, order: tuple[list, list], env: dict) -> dict:
    """One replay on a cold cache: misses, times to first byte, and what prefetch did."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copyfile(index, work / "index.db")
    with mount_library(config=config, work=work, index=work / "index.db", env=env) as mounted:
        mnt = mounted.mountpoint
        tracks = mounted_tracks(mnt)
        before = mount_status(mnt)["cache"]["misses"]
        firsts = [play(tracks[real], skipped) for real, skipped in order[0]]
        # later: nothing of it cached any more, only what was learned (heat.json writes it out)
        assert json.loads((mnt / ".musicfs" / "heat.json").read_bytes())["opens"] == len(order[0])
        assert ok_json(mounted.state_dir, "cache", "clear")["manifests"] > 0
        assert drop_page_cache(), "the kernel's pages of the mount must go (root)"
        firsts += [play(tracks[real], skipped) for real, skipped in order[1]]
        status = mount_status(mnt)
        return {"misses": status["cache"]["misses"] - before, "first_byte": firsts,
                "prefetch": status["prefetch"], "fetched": status["reader"]["origin_bytes"]}


@pytest.mark.req("PH-3.1")
def test_prefetch_halves_the_stalls_of_a_listening_session(toxiproxy, tmp_path, record_requirement):
    root = tmp_path / "music"
    paths = library(root)
    order = session(paths)
    env = aws_env(tmp_path / "aws")
    with moto_server() as server:
        bucket = server.create_bucket({p: (root / p).read_bytes() for p in paths})
        proxy = toxiproxy.create(upstream=f"127.0.0.1:{server.port}", name="slow-music", listen="127.0.0.1:0")
        options = {"bucket": bucket, "endpoint": f"http://{proxy.listen}"}

        def config(enabled: bool) -> Path:
            path = tmp_path / f"prefetch-{enabled}.toml"
            path.write_text("\n".join([*cache_lines(10.0, prefetch=True), *origin_lines("music", "s3", options),
                                       "[prefetch]", f"enabled = {str(enabled).lower()}",
                                       f"whole_after = {WHOLE_AFTER}", ""]))
            return path

        with mount_library(config=config(False), work=tmp_path / "scan", env=env) as scanned:
            assert set(mounted_tracks(scanned.mountpoint)) == set(paths)
        index = tmp_path / "scanned.db"
        shutil.copyfile(scanned.index, index)
        proxy.add_toxic(name="slow", type="latency", attributes={"latency": LATENCY_MS})
        off = listen(tmp_path / "off", config(False), index, order, env)
        on = listen(tmp_path / "on", config(True), index, order, env)

    opens = len(order[0]) + len(order[1])
    assert off["misses"] >= len(paths), f"without prefetch every track should wait at least once: {off}"
    assert off["prefetch"]["bytes"] == 0 and on["prefetch"]["bytes"] > 0
    reduction = 100 * (1 - on["misses"] / off["misses"])
    nexts = slice(1, None)  # every track but the first is a "next track"
    first_off = statistics.median(off["first_byte"][nexts]) * 1000
    first_on = statistics.median(on["first_byte"][nexts]) * 1000
    detail = (f"{opens} opens ({len(paths)} tracks of ~1.4 MB in S3 behind {LATENCY_MS} ms of latency, "
              f"two albums in order with a skip, a shuffled playlist twice, the cache cleared between): {off['misses']} reads waited "
              f"for the origin without prefetch, {on['misses']} with it; time to the next track's first byte "
              f"median {first_off:.0f} ms -> {first_on:.0f} ms; prefetched {on['prefetch']['bytes'] / 1e6:.1f} MB "
              f"({on['prefetch']['hits']} prefetched tracks opened, {on['prefetch']['unused_bytes'] / 1e6:.1f} MB "
              f"never opened)")
    print(f"\nPH-3.1 {reduction:.0f} % fewer stalls: {detail}")
    record_requirement("PH-3.1", reduction, samples=opens, detail=detail)
