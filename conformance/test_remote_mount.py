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
@pytest.mark.alone
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
        yield server, config, aws_env(tmp_path / "aws-home"), files


@pytest.mark.req("PH-2.2", "NFR-1.6", "B2-6", "B2-1")
@pytest.mark.alone
def test_s3_bucket_mounts_by_tags_and_raw(s3_library, good_files, record_requirement, tmp_path):
    server, config, env, files = s3_library
    expected = {f["path"]: f["sha256"] for f in good_files}
    with mount_library(config=config, work=tmp_path / "work", env=env) as mounted:
        latencies = read_every_track(mounted.mountpoint, expected)
        record_requirement("NFR-1.6", p99(latencies), samples=len(latencies),
                           detail="first 128 KiB read of each track from an S3 bucket (moto, loopback)")
        raw = mounted.mountpoint / ".origins" / "bucket"
        listed = {os.path.relpath(os.path.join(d, n), raw) for d, _s, ns in os.walk(raw) for n in ns}
        assert listed == set(files)  # the bucket as it is: every object, broken, not audio, extras
        some = sorted(expected)[0]
        with open(raw / some, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == expected[some]
        assert (raw / "incoming" / "README.txt").read_bytes() == files["incoming/README.txt"]  # not audio
        assert "incoming/README.txt" not in {str(p) for p in mounted_tracks(mounted.mountpoint)}
        status = json.loads((mounted.mountpoint / ".musicfs" / "status.json").read_text())
        origin = status["origins"][0]
        assert origin["kind"] == "s3" and origin["state"] == "healthy"
        assert server.endpoint.split("//")[1] in origin["location"]
    log = (tmp_path / "work" / "daemon.log").read_text()
    assert "AWS_SECRET" not in log and env["AWS_SECRET_ACCESS_KEY"] not in log


LIFETIME = 12.0  # seconds the lab's temporary keys live (STS: an hour; B2's tokens: 24 h)
ADMIN_POLICY = json.dumps({"Version": "2012-10-17",
                           "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


@pytest.mark.req("B2-4")
def test_expiring_credentials_are_renewed_before_they_expire_while_reads_go_on(tmp_path):
    """Keys from a ``credential_process`` that live 12 s, deleted from the server the moment they expire.

    The mount reads through the raw view without caching (every read is a
    ranged GET) for 3.3 lifetimes. Each key must be replaced by a new one
    before it expires (renewed a sixth of its lifetime ahead, as 24 h tokens
    after 20 h, but at least a minute ahead: half-way through keys this
    short), on the schedule rather than before every request, and the
    mount must sign with the new key in time: no request refused, no read
    failed, no reload after a refusal, reads going on across every expiry.
    The lab's strictness is checked too: an expired key is refused.
    """
    import random

    from botocore.exceptions import ClientError

    from chaos.s3lab import s3_lab
    from tests.harness import mount_status
    from tests.s3server import aws_env
    from tests.tempkeys import KeyIssuer

    rng = random.Random(44)
    data = {f"takes/take-{i}.bin": rng.randbytes(2 * 1024 * 1024) for i in range(3)}
    size = 64 * 1024
    with s3_lab(tmp_path / "lab", data) as lab:
        iam = lab.server.client(service="iam")
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=ADMIN_POLICY)
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        credentials = tmp_path / "credentials"
        with KeyIssuer(tmp_path / "keys", lab.server.endpoint, (key["AccessKeyId"], key["SecretAccessKey"]),
                       LIFETIME) as issuer, lab.server.enforce_auth():
            credentials.write_text(f"[default]\ncredential_process = {issuer.credential_process()}\n")
            config = lab.config(tmp_path / "musicfs.toml", 5.0, health_interval=86400, cache="never",
                                credentials_file=str(credentials))
            env = aws_env(tmp_path / "aws", key_id=None, secret=None)  # the process is the only source
            with mount_library(config=config, work=tmp_path / "work", env=env) as mounted:
                raw = mounted.mountpoint / ".origins" / "bucket"
                clock = time.time() - time.monotonic()  # the proxy's times are monotonic
                first_seen: dict[float, float] = {}  # the mount's credentials' expiry -> first seen (epoch)
                reads, began = 0, time.time()
                end, next_status = time.monotonic() + 2.3 * LIFETIME, 0.0
                while time.monotonic() < end:
                    real = rng.choice(sorted(data))
                    offset = rng.randrange(len(data[real]) - size)
                    with open(raw / real, "rb") as f:
                        f.seek(offset)
                        chunk = f.read(size)
                        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # the next read is a GET
                    assert chunk == data[real][offset:offset + size], f"{real} at {offset}: wrong bytes"
                    reads += 1
                    if time.monotonic() >= next_status:
                        expires = mount_status(mounted.mountpoint)["origins"][0]["credentials_expire_at"]
                        first_seen.setdefault(expires, time.time())
                        next_status = time.monotonic() + 0.2
                finished = time.time()
                origin = mount_status(mounted.mountpoint)["origins"][0]
                assert mounted.alive()
            refused = [(s.status, s.path) for s in lab.proxy.requests() if s.status in (400, 401, 403)]
            keys, listed = issuer.issued(), time.time()
            chain = sorted((k for k in keys if any(abs(k.expires - e) < 0.01 for e in first_seen if e)),
                           key=lambda k: k.issued)
            assert chain, f"the mount's credentials ({sorted(first_seen)}) were not issued by the lab: {keys}"
            with pytest.raises(ClientError) as refusal:  # the lab is strict: an expired key is refused
                lab.server.client(chain[0].key_id, chain[0].secret).list_objects_v2(Bucket=lab.bucket)
            assert refusal.value.response["Error"]["Code"] == "InvalidAccessKeyId"
        gets = [s.at + clock for s in lab.proxy.requests("GET", lab.object_path()) if s.status == 206]

    assert not refused, f"requests refused: {refused}"
    assert origin["credential_reloads"] == 0, "credentials were reloaded after a refusal"
    assert reads >= 100 and len(gets) >= reads // 2, f"{reads} reads, {len(gets)} GETs: not reading the origin"
    assert len(chain) >= 3 and origin["credential_renewals"] >= 2, (  # two lifetimes and more
        f"{len(chain)} keys used in {finished - began:.0f} s of {LIFETIME:g} s keys: {chain}")
    margins = []
    for old, new in zip(chain, chain[1:]):
        margins.append(old.expires - new.issued)
        assert new.issued < old.expires, f"key {new.key_id} made {-margins[-1]:.2f} s after the last expired"
        assert new.started >= old.started + LIFETIME / 3, "renewed long before it was due: not on a schedule"
        in_use = min(t for e, t in first_seen.items() if e and abs(e - new.expires) < 0.01)
        assert in_use < old.expires, "the mount signed with the old key until it expired"
        if old.expires < listed - 0.5:
            assert old.deleted is not None and old.deleted - old.expires < 0.5, "the lab kept an expired key"
        if old.expires < finished - 1:
            after = [t for t in gets if old.expires < t < old.expires + 1.0]
            assert after, f"no read reached the bucket in the second after {old.key_id} expired"
    print(f"B2-4: {reads} reads, {len(gets)} GETs over {finished - began:.0f} s; renewed "
          f"{', '.join(f'{m:.2f}' for m in margins)} s before expiry")
