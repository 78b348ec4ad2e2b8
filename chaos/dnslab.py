"""A mount whose S3 origin is named by a host name that a broken resolver cannot resolve (FAULT-12).

Run by ``chaos/test_dns_faults.py`` as::

    unshare --mount --propagation private -- python -m chaos.dnslab --work DIR --mode MODE --outside NS

inside a mount namespace of its own, where ``/etc/resolv.conf`` is bound to a
file naming a resolver this script runs on a loopback address: one that
never answers (``silent``) or answers every query SERVFAIL (``servfail``) or
NXDOMAIN (``nxdomain``). No name is ever sent anywhere but that loopback
resolver, and the machine's own ``resolv.conf`` is untouched: the binding
exists in this namespace only, and the script refuses to run in the
namespace it was started from (``--outside``). Everything it mounts lives and
dies in the namespace too.

The library is scanned with the bucket reached by address; the mount then
reaches it by a name (the resolver is asked) beside a local replica that
holds every track but one. The script reads every track the replica holds,
times each read, the tree walk, the mount and how long the bucket took to be
reported unreachable, reads the track only the bucket holds (EIO expected,
timed), and prints one JSON object on stdout for the test to judge.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chaos.remote import build_library, cache_lines, origin_lines
from conformance.expected import sha256_of
from tests.harness import mount_library, mount_status, mounted_tracks, musicfs_cmd
from tests.s3server import aws_env, moto_server

HOST = "s3.musicfs-dns-fault.test"  # only ever asked of the resolver below
ONLY_IN_BUCKET = "Only/in the bucket.wav"
READ_TIMEOUT = 8.0  # longer than a stalled lookup would let a read take with fast failures
RCODES = {"servfail": 2, "nxdomain": 3}


def refusal(query: bytes, rcode: int) -> bytes | None:
    """The answer to a DNS query that only says ``rcode``: its header flipped to a reply, its question."""
    if len(query) < 12:
        return None
    position = 12
    for _ in range(int.from_bytes(query[4:6], "big")):  # skip each question: a name, type and class
        while True:
            if position >= len(query):
                return None
            length = query[position]
            position += 1
            if length == 0:
                break
            if length & 0xC0:  # a compression pointer ends the name
                position += 1
                break
            position += length
        position += 4
    if position > len(query):
        return None
    flags = bytes([0x80 | (query[2] & 0x79), 0x80 | rcode])  # QR, opcode and RD kept, RA, rcode
    return query[:2] + flags + query[4:6] + bytes(6) + query[12:position]


@contextmanager
def resolver(mode: str) -> Iterator[str]:
    """A resolver on a random loopback address, port 53: silent, or refusing every query; yields it."""
    for _ in range(20):
        address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((address, 53))
            break
        except OSError:
            sock.close()
    else:
        raise RuntimeError("no free loopback address for the resolver")
    stop = threading.Event()
    queries = []

    def serve() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            queries.append(time.monotonic())
            answer = refusal(query, RCODES[mode]) if mode in RCODES else None
            if answer is not None:
                sock.sendto(answer, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield address
    finally:
        stop.set()
        thread.join(5)
        sock.close()
        print(json.dumps({"resolver_queries": len(queries)}), file=sys.stderr)


@contextmanager
def resolv_conf(work: Path, address: str) -> Iterator[None]:
    """``/etc/resolv.conf`` naming only ``address`` (with the C library's default timeouts), in this
    mount namespace only."""
    conf = work / "resolv.conf"
    conf.write_text(f"nameserver {address}\noptions timeout:5 attempts:2\n")
    subprocess.run(["mount", "--bind", str(conf), "/etc/resolv.conf"], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "/etc/resolv.conf"], check=False)


def lookup_seconds(host: str, bound: float) -> float | None:
    """How long the C library takes to fail resolving ``host`` (None: still trying after ``bound`` s)."""
    done = threading.Event()

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, 80)
        except OSError:
            pass
        done.set()

    started = time.monotonic()
    threading.Thread(target=resolve, daemon=True).start()
    return time.monotonic() - started if done.wait(bound) else None


def config(path: Path, endpoint: str, bucket: str, backup: Path) -> Path:
    lines = [*cache_lines(READ_TIMEOUT), "[health]", "interval = 0.5", ""]
    lines += origin_lines("cloud", "s3", {"bucket": bucket, "endpoint": endpoint, "prefix": "music/",
                                          "region": "us-east-1", "timeout": 5.0}, priority=1)
    lines += origin_lines("backup", "local", {"path": str(backup)}, priority=2)
    path.write_text("\n".join(lines))
    return path


def run(work: Path, mode: str, sample: Path, files: list[dict]) -> dict:
    library = work / "library"
    expected = build_library(library, sample, files, count=6)
    objects = {p: (library / p).read_bytes() for p in expected}
    objects[ONLY_IN_BUCKET] = objects["Recordings/take 0.wav"][:1_000_000]
    env = aws_env(work / "aws-home")
    with moto_server() as s3, resolver(mode) as address, resolv_conf(work, address):
        bucket = s3.create_bucket(objects, prefix="music/")
        index = work / "index.db"
        scan = config(work / "scan.toml", s3.endpoint, bucket, library)  # by address: no resolver
        subprocess.run(musicfs_cmd("--state-dir", str(work / "scan-state"), "scan", "--config", str(scan),
                                   "--index", str(index)), check=True, capture_output=True,
                       env={**os.environ, **env})
        named = config(work / "musicfs.toml", f"http://{HOST}:{s3.port}", bucket, library)
        result: dict = {"mode": mode, "lookup_seconds": lookup_seconds(HOST, 3.0), "reads": []}
        started = time.monotonic()
        with mount_library(config=named, work=work / "mount", index=index, env=env) as mounted:
            result["mount_seconds"] = time.monotonic() - started
            tracks = mounted_tracks(mounted.mountpoint)
            for real in sorted(expected, key=lambda r: (not r.startswith("Recordings/"), r)):
                began = time.monotonic()
                digest = sha256_of(tracks[real])
                result["reads"].append({"path": real, "seconds": time.monotonic() - began,
                                        "exact": digest == expected[real]})
            began = time.monotonic()
            for _ in os.walk(mounted.mountpoint):
                pass
            result["walk_seconds"] = time.monotonic() - began
            result["unreachable_after"] = None  # seconds from the mount until status says so
            while time.monotonic() - started < 15:
                states = {o["id"]: o["state"] for o in mount_status(mounted.mountpoint)["origins"]}
                if states["cloud"] == "unhealthy":
                    result["unreachable_after"] = time.monotonic() - started - result["mount_seconds"]
                    break
                time.sleep(0.05)
            began = time.monotonic()
            try:
                sha256_of(tracks[ONLY_IN_BUCKET])
                result["only_in_bucket"] = {"errno": None}
            except OSError as exc:
                result["only_in_bucket"] = {"errno": exc.errno}
            result["only_in_bucket"]["seconds"] = time.monotonic() - began
            status = mount_status(mounted.mountpoint)
            result["origins"] = {o["id"]: {"state": o["state"], "error": o["error"]} for o in status["origins"]}
            result["reader"] = status["reader"]
            result["alive"] = mounted.alive()
            log = mounted.log_text()
        result["log_lines"] = len(log.splitlines())
        result["log_names_the_host"] = HOST in log
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.dnslab", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--mode", choices=["silent", *RCODES], required=True)
    parser.add_argument("--outside", required=True, help="the mount namespace this must not run in")
    parser.add_argument("--sample", type=Path, required=True, help="the sample library folder")
    parser.add_argument("--files", type=Path, required=True, help="JSON list of its good files")
    args = parser.parse_args(argv)
    if os.readlink("/proc/self/ns/mnt") == args.outside:
        parser.error("run me in a mount namespace of my own (unshare --mount): I bind /etc/resolv.conf")
    args.work.mkdir(parents=True, exist_ok=True)
    result = run(args.work, args.mode, args.sample, json.loads(args.files.read_text()))
    print(json.dumps(result))
    shutil.rmtree(args.work / "mount" / "cache", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
