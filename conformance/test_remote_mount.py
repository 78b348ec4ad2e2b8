"""Libraries on remote origins index, mount and read like a local one (PH-2.2, NFR-1.6)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest

from chaos.remote import write_origin
from tests.harness import mount_library, mounted_tracks
from tests.sshserver import ssh_server


def read_every_track(mountpoint, expected: dict[str, str]) -> list[float]:
    """Read each track whole, check it, and return the first-read latencies in ms."""
    tracks = mounted_tracks(mountpoint)
    assert set(tracks) == set(expected)
    latencies = []
    for real, path in tracks.items():
        with open(path, "rb") as f:
            started = time.perf_counter()
            first = f.read(128 * 1024)  # the first read of an uncached file: a remote fetch
            latencies.append((time.perf_counter() - started) * 1000)
            rest = f.read()
        assert hashlib.sha256(first + rest).hexdigest() == expected[real]
    return latencies


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * len(ordered) + 0.5)) - 1)]


@pytest.fixture
def sftp_library(sample_library, tmp_path):
    with ssh_server() as server:
        root = server.root / "music"
        shutil.copytree(sample_library[0], root)
        config = tmp_path / "musicfs.toml"
        write_origin(config, "nas", "sftp", server.options(path=str(root)))
        yield server, config


@pytest.mark.req("PH-2.2", "NFR-1.6", "B2-6")
def test_sftp_library_mounts_by_tags_and_raw(sftp_library, good_files, record_requirement, tmp_path):
    server, config = sftp_library
    expected = {f["path"]: f["sha256"] for f in good_files}
    with mount_library(config=config, work=tmp_path / "work") as mounted:
        latencies = read_every_track(mounted.mountpoint, expected)
        record_requirement("NFR-1.6", p99(latencies), samples=len(latencies),
                           detail=f"first 128 KiB read of each track over SFTP (loopback sshd); "
                                  f"median {sorted(latencies)[len(latencies) // 2]:.1f} ms")
        raw = mounted.mountpoint / ".origins" / "nas"
        some = next(iter(expected))
        with open(raw / some, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == expected[some]
        status = json.loads((mounted.mountpoint / ".musicfs" / "status.json").read_text())
        origin = status["origins"][0]
        assert origin["kind"] == "sftp" and origin["location"].startswith(f"sftp://{server.user}@")
        assert origin["state"] == "healthy"


@pytest.fixture
def s3_library(sample_library, tmp_path):
    from tests.s3server import aws_env, moto_server

    files = {}
    for dirpath, _dirs, names in os.walk(sample_library[0]):
        for name in names:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                files[os.path.relpath(full, sample_library[0])] = f.read()
    with moto_server() as server:
        bucket = server.create_bucket(files, prefix="music/")
        config = tmp_path / "musicfs.toml"
        write_origin(config, "bucket", "s3", {"bucket": bucket, "endpoint": server.endpoint,
                                               "prefix": "music/", "region": "us-east-1"})
        yield server, config, aws_env(tmp_path / "aws-home")


@pytest.mark.req("PH-2.2", "NFR-1.6", "B2-6", "B2-1")
def test_s3_bucket_mounts_by_tags_and_raw(s3_library, good_files, record_requirement, tmp_path):
    server, config, env = s3_library
    expected = {f["path"]: f["sha256"] for f in good_files}
    with mount_library(config=config, work=tmp_path / "work", env=env) as mounted:
        latencies = read_every_track(mounted.mountpoint, expected)
        record_requirement("NFR-1.6", p99(latencies), samples=len(latencies),
                           detail="first 128 KiB read of each track from an S3 bucket (moto, loopback)")
        raw = mounted.mountpoint / ".origins" / "bucket"
        listed = {os.path.relpath(os.path.join(d, n), raw) for d, _s, ns in os.walk(raw) for n in ns}
        assert set(expected) <= listed  # the bucket as it is, broken files and extras included
        some = sorted(expected)[0]
        with open(raw / some, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == expected[some]
        status = json.loads((mounted.mountpoint / ".musicfs" / "status.json").read_text())
        origin = status["origins"][0]
        assert origin["kind"] == "s3" and origin["state"] == "healthy"
        assert server.endpoint.split("//")[1] in origin["location"]
    log = (tmp_path / "work" / "daemon.log").read_text()
    assert "AWS_SECRET" not in log and env["AWS_SECRET_ACCESS_KEY"] not in log
