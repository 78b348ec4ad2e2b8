"""Concurrent client processes: per-client latency degrades linearly, and gently (NFR-3.6).

What the check must tell apart: a daemon that serves its clients side by side from one
that serves one request at a time. Both look alike on warm metadata (the daemon is
CPU-bound either way, and two cores cap any speed-up), and "latency(N) <= N x latency(1)"
is exactly what the serialised one does, so neither tells them apart. What does is an
operation that *waits*: while one client's read waits on the origin, a concurrent daemon
answers the others.

Workload: what a player starting a new track does. Each client process opens a track that
nobody has read yet, reads it whole, stats it and lists its album; the read goes to an
SFTP origin (OpenSSH) behind the chaos proxy with +100 ms on every answer, so one
client's operation takes about two round trips. Levels of 1 to 100 clients (the seed:
target 10, stretch 100+) run one after another, all clients of a level released at once.

Judged: ``L(N)``, the median latency of the operation over all clients at level N, and
the contention ``sigma(N) = (L(N) / L(1) - 1) / (N - 1)``: the share of one client's
latency that each added client adds (the contention term of Gunther's universal
scalability law; latency grows linearly in N with slope ``sigma x L(1)``). A daemon that
serves one request at a time has ``sigma`` = 1 (every client waits for all the others'
round trips); measured with the daemon's origin fetches limited to one at a time: 0.82,
0.83, 0.86 at 3, 10 and 30 clients, and at 100 its reads ran past the read timeout. A
concurrent one pays only its CPU per operation: musicfs measured ~0.05 up to 100
clients. A level holds when ``sigma(N) <= MAX_CONTENTION``; the value recorded is the
largest level that holds with every level below it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos.proxy import toxiproxy_server
from chaos.remote import cache_lines, origin_lines
from conformance.measure import median, proc_status_mb
from fixtures.bigfile import write_wav
from tests.harness import mount_library, mounted_tracks
from tests.sshserver import ssh_server

LATENCY_MS = 100  # added to every answer of the origin
FILE_BYTES = 32 * 1024  # one read of the whole file: a single range request
SINGLE_ROUNDS = 8  # operations of the lone client: L(1) is their median
MAX_CONTENTION = 0.25  # sigma: each added client may add a quarter of one client's latency
CLIENT_TIMEOUT = 120.0  # seconds a level may take before the test gives up on it


@dataclass
class SlowOrigin:
    """A library on sshd, reached through a proxy that delays every answer."""

    config: Path
    proxy: object  # toxiproxy-python Proxy
    expected: dict[str, str]  # real path -> sha256


def _files_needed(levels: tuple[int, ...], rounds: int) -> int:
    return 1 + SINGLE_ROUNDS + rounds * sum(n for n in levels if n > 1)  # 1: the warm-up read


@pytest.fixture(scope="module")
def slow_origin(perf_size, tmp_path_factory):
    from toxiproxy import Toxiproxy

    work = tmp_path_factory.mktemp("slow-origin")
    count = _files_needed(perf_size.client_levels, perf_size.client_rounds)
    with ssh_server() as server, toxiproxy_server() as api:
        expected = {}
        for i in range(count):
            real = f"Artist {i // 20:03d}/take {i:04d}.wav"
            (server.root / real).parent.mkdir(exist_ok=True)
            data = write_wav(server.root / real, FILE_BYTES, seed=i).read_bytes()
            expected[real] = hashlib.sha256(data).hexdigest()
        client = Toxiproxy()
        client.update_api_consumer(api.host, api.port)
        proxy = client.create(upstream=f"127.0.0.1:{server.port}", name="slow-sftp", listen="127.0.0.1:0")
        try:
            options = server.options_via(proxy.listen, work, timeout=10.0)
            config = work / "musicfs.toml"
            config.write_text("\n".join([*cache_lines(10.0), *origin_lines("remote", "sftp", options)]))
            yield SlowOrigin(config, proxy, expected)
        finally:
            proxy.destroy()


def _client(paths: list[str], barrier, out) -> None:
    """One client process: for each track, open + read it whole + close, stat it, list its
    album; sends (per-operation ms, {path: sha256 of what was read}) or the error."""
    try:
        barrier.wait(CLIENT_TIMEOUT)
        latencies, digests = [], {}
        for path in paths:
            started = time.perf_counter_ns()
            with open(path, "rb") as f:
                data = f.read()
            os.stat(path)
            os.listdir(os.path.dirname(path))
            latencies.append((time.perf_counter_ns() - started) / 1e6)
            digests[path] = hashlib.sha256(data).hexdigest()
        out.put((latencies, digests))
    except BaseException as exc:  # noqa: BLE001 - reported by the test, which must not hang
        out.put(exc)


def _run_level(ctx, batches: list[list[str]]) -> tuple[list[float], dict[str, str]]:
    """Start one client per batch, release them together; every operation's latency (ms) and
    the sha256 of what was read of each path."""
    barrier, out = ctx.Barrier(len(batches)), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(batch, barrier, out)) for batch in batches]
    for proc in procs:
        proc.start()
    try:
        got = [out.get(timeout=CLIENT_TIMEOUT) for _ in procs]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    errors = [g for g in got if isinstance(g, BaseException)]
    assert not errors, f"{len(errors)} of {len(batches)} clients failed: {errors[:3]!r}"
    return [ms for latencies, _ in got for ms in latencies], {p: d for _, ds in got for p, d in ds.items()}


@pytest.mark.req("NFR-3.6", "NFR-4.3")
def test_concurrent_clients(slow_origin, perf_size, tmp_path, results, record_requirement,
                            requirement_catalogue, capsys):
    levels, rounds = perf_size.client_levels, perf_size.client_rounds
    ctx = multiprocessing.get_context("fork")
    with mount_library(config=slow_origin.config, work=tmp_path / "m") as mounted:
        tracks = mounted_tracks(mounted.mountpoint)  # scanned through the proxy, before the latency
        assert set(tracks) == set(slow_origin.expected)
        order = sorted(tracks)
        random.Random(7).shuffle(order)
        slow_origin.proxy.add_toxic(name="slow", type="latency", attributes={"latency": LATENCY_MS})
        try:
            warmup = order.pop()  # connects the origin (an SSH handshake) before any clock runs
            with open(tracks[warmup], "rb") as f:
                f.read()
            per_level: dict[int, list[float]] = {}
            read: dict[str, str] = {}
            for n in levels:
                each = SINGLE_ROUNDS if n == 1 else rounds
                batches = [order[i * each:(i + 1) * each] for i in range(n)]  # unread tracks
                order = order[n * each:]
                latencies, digests = _run_level(ctx, [[str(tracks[r]) for r in b] for b in batches])
                per_level[n] = latencies
                read.update({real: digests[str(tracks[real])] for b in batches for real in b})
        finally:
            slow_origin.proxy.destroy_toxic("slow")
        peak = proc_status_mb(mounted.pid, "VmHWM")
    assert read == {real: slow_origin.expected[real] for real in read}, "a client read wrong bytes"
    one = median(per_level[1])
    assert one >= LATENCY_MS, f"a cold read took {one:.0f} ms: the latency was not applied"

    typical = {n: median(values) for n, values in per_level.items()}
    contention = {n: (typical[n] / one - 1) / (n - 1) for n in levels if n > 1}
    linear = 1
    for n in levels[1:]:
        if contention[n] > MAX_CONTENTION:
            break
        linear = n
    section = f"concurrent clients (first read from SFTP at +{LATENCY_MS} ms, stat, readdir)"
    for n in levels:
        p90 = statistics.quantiles(per_level[n], n=10)[-1] if len(per_level[n]) > 1 else typical[n]
        results.add(section, f"{n} clients: per-client median / p90 latency, contention",
                    f"{typical[n]:,.0f} / {p90:,.0f} ms, {contention.get(n, 0):.3f}",
                    req="NFR-3.6" if n == linear else "")
    figures = ", ".join(f"{n}: {typical[n]:.0f} ms" + (f" ({contention[n]:.3f})" if n > 1 else "")
                        for n in levels)
    with capsys.disabled():
        print(f"\nclients, median per-client latency (contention): {figures}")
    record_requirement("NFR-3.6", linear, samples=sum(len(v) for v in per_level.values()),
                       detail=f"largest N with contention (L(N)/L(1) - 1)/(N - 1) <= {MAX_CONTENTION} "
                              f"for it and every smaller level; first reads from SFTP at "
                              f"+{LATENCY_MS} ms: {figures}")
    record_requirement("NFR-4.3", peak, detail=f"VmHWM of the daemon after {levels[-1]} concurrent clients")
    assert linear >= requirement_catalogue["NFR-3.6"].maximum, (
        f"per-client latency grew faster than linearly with slope {MAX_CONTENTION}: {figures}")
