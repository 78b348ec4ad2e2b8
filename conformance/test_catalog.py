"""One scan, every machine (issue 17), on real mounts over S3 (moto), two machines on this one.

Machine A (its own state and cache) scans the bucket and publishes its index into the bucket.
Machine B (another state and cache) mounts from that catalog through a proxy that records
every request: it serves every track without one read of an audio object. Then the faults:
the bucket unreachable (B starts from the catalog it has; a new machine cannot), a bad
catalog (refused, B keeps its own), a forged pointer (refused with a key).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from chaos.httpfaults import http_fault_proxy
from chaos.remote import cache_lines, origin_lines
from fixtures.media import short_track
from musicfs.index.formats import installed
from tests.harness import mount_library, mount_status, mounted_tracks, musicfs_cmd
from tests.s3server import aws_env, moto_server

PREFIX = "music/"
KEY = "a shared key of more than sixteen bytes"


def config_text(bucket: str, endpoint: str, *, mount: bool, key_file: Path | None = None) -> str:
    catalog = ["[catalog]", 'origin = "b2"', f"mount = {str(mount).lower()}"]
    if key_file is not None:
        catalog.append(f'key_file = "{key_file}"')
    return "\n".join([*cache_lines(), *catalog, "",
                      *origin_lines("b2", "s3", {"bucket": bucket, "endpoint": endpoint, "prefix": PREFIX,
                                                 "region": "us-east-1"})])


def cli(env: dict, state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(musicfs_cmd("--state-dir", str(state), *args), capture_output=True, text=True,
                          timeout=180, env=env, stdin=subprocess.DEVNULL)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result


@pytest.fixture
def lab(tmp_path):
    """A bucket of six tracks, machine A's config (direct), and a recording proxy in front of it."""
    music = tmp_path / "music"
    for n in range(1, 7):
        short_track(music, f"Band/Album {n % 2}/{n:02}.flac", "flac", n, album=f"Album {n % 2}", cover=None)
    files = {str(p.relative_to(music)): p.read_bytes() for p in music.rglob("*") if p.is_file()}
    with moto_server() as server, http_fault_proxy(server.endpoint) as proxy:
        bucket = server.create_bucket(files, prefix=PREFIX)
        env = aws_env(tmp_path / "aws-home")
        a_config = tmp_path / "a.toml"
        a_config.write_text(config_text(bucket, server.endpoint, mount=False))
        yield {"server": server, "proxy": proxy, "bucket": bucket, "env": env, "a": a_config,
               "files": files, "work": tmp_path}


def machine_b(lab: dict, name: str = "b", key_file: Path | None = None) -> Path:
    config = lab["work"] / f"{name}.toml"
    config.write_text(config_text(lab["bucket"], lab["proxy"].endpoint, mount=True, key_file=key_file))
    return config


def audio_gets(proxy) -> list[str]:
    """Requests for an audio object's bytes that reached the bucket."""
    return [seen.path for seen in proxy.requests("GET")
            if installed().for_path(seen.path.split("?")[0]) is not None]


@pytest.mark.req("CAT-1", "CAT-2")
def test_machine_b_mounts_machine_a_catalog_without_reading_one_audio_object(lab):
    env, state_a = lab["env"], lab["work"] / "state-a"
    ok(cli(env, state_a, "scan", "--config", str(lab["a"])))
    dry = json.loads(ok(cli(env, state_a, "publish", "--config", str(lab["a"]), "--dry-run", "--json")).stdout)
    assert dry["dry_run"] and dry["pointer"]["tracks"] == 6
    published = json.loads(ok(cli(env, state_a, "publish", "--config", str(lab["a"]), "--json")).stdout)
    assert published["uploaded"] and published["pointer"]["hash"] == dry["pointer"]["hash"]
    keys = {o["Key"] for o in lab["server"].client().list_objects_v2(Bucket=lab["bucket"])["Contents"]}
    assert f"{PREFIX}.musicfs-catalog/catalog.json" in keys
    assert f"{PREFIX}.musicfs-catalog/snapshots/{published['pointer']['hash']}.db.zst" in keys
    again = json.loads(ok(cli(env, state_a, "publish", "--config", str(lab["a"]), "--json")).stdout)
    assert not again["uploaded"]  # the same index: the snapshot is there already

    proxy = lab["proxy"]
    proxy.reset()
    with mount_library(config=machine_b(lab), work=lab["work"] / "b", env=env) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        assert set(tracks) == set(lab["files"])  # every track, from the catalog
        assert audio_gets(proxy) == [], "mounting from the catalog read audio objects"
        assert "scanned" not in mounted.log_text()
        for real, path in tracks.items():  # and they play: the bytes come from the bucket as ever
            assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(lab["files"][real]).digest()
        status = ok(cli(env, mounted.state_dir, "catalog", "status", "--config", str(machine_b(lab)),
                        "--index", str(mounted.index), "--json"))
        shown = json.loads(status.stdout)
        assert shown["up_to_date"] and shown["mount"]["mountpoint"] == str(mounted.mountpoint)
        assert shown["mount"]["in_use"]["hash"] == published["pointer"]["hash"]
        rescan = cli(env, mounted.state_dir, "origin", "rescan", "b2")  # scanned where it is published
        assert rescan.returncode != 0 and "mounted from the catalog" in rescan.stdout + rescan.stderr


@pytest.mark.req("CAT-4", "CAT-5")
def test_offline_start_and_a_bad_catalog_leave_b_on_the_one_it_has(lab):
    env, state_a = lab["env"], lab["work"] / "state-a"
    ok(cli(env, state_a, "scan", "--config", str(lab["a"])))
    ok(cli(env, state_a, "publish", "--config", str(lab["a"])))
    b = machine_b(lab)
    with mount_library(config=b, work=lab["work"] / "b", env=env) as mounted:
        assert len(mounted_tracks(mounted.mountpoint)) == 6

    proxy = lab["proxy"]
    proxy.drop()  # the bucket unreachable
    with mount_library(config=b, work=lab["work"] / "b", env=env) as mounted:
        assert len(mounted_tracks(mounted.mountpoint)) == 6  # offline start from its catalog
        assert "not reachable" in mounted.log_text()
    new = lab["work"] / "c"  # a machine that never had this library's catalog
    (new / "mnt").mkdir(parents=True)
    refused = subprocess.run(musicfs_cmd("--state-dir", str(new / "state"), "mount", "--foreground", "--config",
                                         str(machine_b(lab, "c")), "--cache-dir", str(new / "cache"),
                                         str(new / "mnt")), capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 2 and "not reachable" in refused.stderr and "no index" in refused.stderr
    proxy.clear()

    # a pointer of a format from the future, then a snapshot that is not what its pointer says
    client, bucket = lab["server"].client(), lab["bucket"]
    pointer_key = f"{PREFIX}.musicfs-catalog/catalog.json"
    good = client.get_object(Bucket=bucket, Key=pointer_key)["Body"].read()
    for bad in (json.dumps({**json.loads(good), "format": 99}).encode(),
                json.dumps({**json.loads(good), "hash": "0" * 64}).encode()):
        client.put_object(Bucket=bucket, Key=pointer_key, Body=bad)
        with mount_library(config=b, work=lab["work"] / "b", env=env) as mounted:
            assert len(mounted_tracks(mounted.mountpoint)) == 6  # the catalog it has
            assert "refused" in mounted.log_text()


@pytest.mark.req("CAT-6")
def test_with_a_key_a_forged_pointer_is_refused(lab):
    env, state_a = lab["env"], lab["work"] / "state-a"
    key_file = lab["work"] / "catalog.key"
    key_file.write_text(KEY)
    lab["a"].write_text(lab["a"].read_text().replace("mount = false", f'mount = false\nkey_file = "{key_file}"'))
    ok(cli(env, state_a, "scan", "--config", str(lab["a"])))
    ok(cli(env, state_a, "publish", "--config", str(lab["a"])))
    b = machine_b(lab, key_file=key_file)
    with mount_library(config=b, work=lab["work"] / "b", env=env) as mounted:
        assert len(mounted_tracks(mounted.mountpoint)) == 6
    # whoever can write the bucket but has no key changes the pointer (its signature is now wrong)
    client, bucket = lab["server"].client(), lab["bucket"]
    pointer_key = f"{PREFIX}.musicfs-catalog/catalog.json"
    pointer = json.loads(client.get_object(Bucket=bucket, Key=pointer_key)["Body"].read())
    client.put_object(Bucket=bucket, Key=pointer_key, Body=json.dumps({**pointer, "tracks": 1}).encode())
    with mount_library(config=b, work=lab["work"] / "b", env=env) as mounted:
        assert len(mounted_tracks(mounted.mountpoint)) == 6
        assert "signature does not verify" in mounted.log_text()


@pytest.mark.req("CAT-3")
def test_a_new_catalog_reaches_a_running_mount_within_a_poll(lab):
    """A adds two tracks and removes one, rescans and publishes; B, mounted all along with
    ``poll = 2``, shows the change within a poll: the same inodes for unchanged tracks, and a
    file open across the swap reads on."""
    env, state_a = lab["env"], lab["work"] / "state-a"
    ok(cli(env, state_a, "scan", "--config", str(lab["a"])))
    ok(cli(env, state_a, "publish", "--config", str(lab["a"])))
    b = machine_b(lab)
    b.write_text(b.read_text().replace("mount = true", "mount = true\npoll = 2"))
    client, bucket = lab["server"].client(), lab["bucket"]
    with mount_library(config=b, work=lab["work"] / "b", env=env) as mounted:
        before = mounted_tracks(mounted.mountpoint)
        assert len(before) == 6
        inodes = {real: path.stat().st_ino for real, path in before.items()}
        kept, gone = "Band/Album 1/01.flac", "Band/Album 0/02.flac"
        reading = open(before[kept], "rb")  # noqa: SIM115 - read across the swap, closed below
        try:
            first = reading.read(1000)
            extra = lab["work"] / "extra"
            for n in (7, 8):
                short_track(extra, f"Band/Album 2/{n:02}.flac", "flac", n, album="Album 2", cover=None)
            for path in extra.rglob("*.flac"):
                client.put_object(Bucket=bucket, Key=PREFIX + str(path.relative_to(extra)), Body=path.read_bytes())
            client.delete_object(Bucket=bucket, Key=PREFIX + gone)
            ok(cli(env, state_a, "scan", "--config", str(lab["a"])))
            ok(cli(env, state_a, "publish", "--config", str(lab["a"])))
            published = time.monotonic()
            while True:
                now = mounted_tracks(mounted.mountpoint)
                if len(now) == 7:
                    break
                assert time.monotonic() - published < 2 * 2 + 5, f"not within a poll: {sorted(now)}"
                time.sleep(0.2)
            assert gone not in now and {"Band/Album 2/07.flac", "Band/Album 2/08.flac"} <= set(now)
            assert {real: now[real].stat().st_ino for real in now if real in inodes} == \
                {real: ino for real, ino in inodes.items() if real != gone}  # unchanged: the same inodes
            assert first + reading.read() == lab["files"][kept]  # the open file read on
        finally:
            reading.close()
        assert now["Band/Album 2/07.flac"].read_bytes() == (extra / "Band/Album 2/07.flac").read_bytes()
        status = json.loads((mounted.mountpoint / ".musicfs" / "status.json").read_text())["catalog"]
        assert status["updates"] == 1 and status["in_use"]["tracks"] == 7
        polled = json.loads(ok(cli(env, mounted.state_dir, "catalog", "poll", "--json")).stdout)
        assert polled["result"] == "unchanged" and polled["polls"] >= 2


@pytest.mark.req("CAT-1")
def test_the_publishing_mount_publishes_after_a_rescan_that_changed_something(lab):
    """``[catalog] publish = true`` on machine A, which mounts and scans: a rescan that finds a new
    track is followed by a publish, with no musicfs publish run by anyone."""
    env = lab["env"]
    lab["a"].write_text(lab["a"].read_text().replace("mount = false", "mount = false\npublish = true"))
    client, bucket = lab["server"].client(), lab["bucket"]
    pointer_key = f"{PREFIX}.musicfs-catalog/catalog.json"
    with mount_library(config=lab["a"], work=lab["work"] / "a", env=env) as mounted:
        extra = lab["work"] / "extra"
        short_track(extra, "Band/Album 2/07.flac", "flac", 7, album="Album 2", cover=None)
        client.put_object(Bucket=bucket, Key=PREFIX + "Band/Album 2/07.flac",
                          Body=(extra / "Band/Album 2/07.flac").read_bytes())
        ok(cli(env, mounted.state_dir, "origin", "rescan", "b2"))
        deadline = time.monotonic() + 30
        while True:
            try:
                pointer = json.loads(client.get_object(Bucket=bucket, Key=pointer_key)["Body"].read())
                if pointer["tracks"] == 7:
                    break
            except client.exceptions.NoSuchKey:
                pass
            assert time.monotonic() < deadline, "no catalog of seven tracks published after the rescan"
            time.sleep(0.2)
        # the pointer is in the bucket a moment before the publisher counts its upload done
        while (status := mount_status(mounted.mountpoint)["catalog_publisher"])["published"] < 1:
            assert time.monotonic() < deadline + 5, f"the publish is not counted: {status}"
            time.sleep(0.05)
        assert status["failed"] == 0, status
