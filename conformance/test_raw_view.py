"""Raw views: /.origins/<id>/ shows an origin as it is, read-only (B2-6)."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness import mount_library, mount_status


@pytest.mark.req("B2-6", "FS-4")
def test_raw_view_mirrors_the_origin(sample_mount, sample_library):
    root, manifest = sample_library
    raw = sample_mount.mountpoint / ".origins" / "local"
    assert ".origins" not in os.listdir(sample_mount.mountpoint)  # hidden, like /.musicfs
    assert os.listdir(sample_mount.mountpoint / ".origins") == ["local"]
    listed = {}
    for dirpath, _dirnames, filenames in os.walk(raw):
        for name in filenames:
            listed[os.path.relpath(os.path.join(dirpath, name), raw)] = os.path.join(dirpath, name)
    on_disk = {os.path.relpath(os.path.join(d, n), root) for d, _, fs in os.walk(root) for n in fs}
    assert set(listed) == on_disk  # every file, audio or not, broken or not
    for entry in manifest["files"][:40]:
        with open(listed[entry["path"]], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == entry["sha256"]
        assert os.stat(listed[entry["path"]]).st_size == entry["size"]
        assert os.getxattr(listed[entry["path"]], "user.musicfs.real_path").decode() == entry["path"]
    with pytest.raises(OSError) as failure:
        open(raw / "new.flac", "wb")
    assert failure.value.errno == errno.EROFS
    with pytest.raises(FileNotFoundError):
        os.stat(sample_mount.mountpoint / ".origins" / "nope")


# -- an S3 bucket's raw view: paged listings (B2-2) and the listing TTL (B2-5) --------------------------

MANY = 2100  # keys in one folder: three S3 pages of 1000, the page size S3, B2 and moto use


@pytest.fixture(scope="module")
def bucket_lab(tmp_path_factory):
    """A bucket behind the fault proxy (which records every request): a folder of ``MANY`` small
    objects, and a small folder the B2-5 test changes. No audio: the raw view shows what is stored."""
    from chaos.s3lab import PREFIX, s3_lab

    work = tmp_path_factory.mktemp("rawbucket")
    with s3_lab(work, {"box/one.txt": b"1", "box/two.txt": b"22"}) as lab:
        client = lab.server.client()
        many = {f"many/item {i:04d}.txt": f"object {i}\n".encode() for i in range(MANY)}
        with ThreadPoolExecutor(8) as pool:  # one PUT at a time would take most of a minute
            list(pool.map(lambda item: client.put_object(Bucket=lab.bucket, Key=PREFIX + item[0],
                                                         Body=item[1]), many.items()))
        lab.many = many
        yield lab


def bucket_lists(lab) -> int:
    """ListObjectsV2 requests the bucket has answered (GET /bucket?list-type=2...; objects are below it),
    health probes (one-key listings) included."""
    return sum(1 for seen in lab.proxy.requests("GET") if seen.path.rstrip("/") == f"/{lab.bucket}")


def listing_pages(mounted) -> int:
    """ListObjectsV2 pages the mount's S3 origin has asked for to list folders (not its health probes)."""
    return mount_status(mounted.mountpoint)["origins"][0]["list_requests"]


def mount_bucket(lab, tmp_path, raw: dict | None = None):
    from tests.s3server import aws_env

    config = lab.config(tmp_path / "musicfs.toml", 5.0, health_interval=86400)
    if raw:
        with config.open("a") as f:
            f.write("\n[raw]\n" + "".join(f"{key} = {value}\n" for key, value in raw.items()))
    return mount_library(config=config, work=tmp_path / "work", env=aws_env(tmp_path / "aws"))


@pytest.mark.req("B2-2", "B2-6")
def test_a_bucket_folder_of_several_pages_lists_completely_through_the_mount(bucket_lab, tmp_path):
    """2,500 keys under one prefix, listed through /.origins with the default page size of 1000.

    The listing must be the whole folder, each key once, and must have taken
    exactly three ListObjectsV2 requests (prefix, delimiter '/', continuation
    tokens): one request would mean a truncated listing was taken as whole.
    """
    lab = bucket_lab
    with mount_bucket(lab, tmp_path) as mounted:
        assert mount_status(mounted.mountpoint)["raw_views"]["ttl"] == 300  # seed 000's 5 minutes
        assert mount_status(mounted.mountpoint)["raw_views"]["idle"] == 60
        raw = mounted.mountpoint / ".origins" / "bucket"
        assert sorted(os.listdir(raw)) == ["box", "many"]  # delimiter: the folders, not their keys
        before, answered = listing_pages(mounted), bucket_lists(lab)
        names = os.listdir(raw / "many")
        pages = listing_pages(mounted) - before
        assert bucket_lists(lab) - answered >= pages  # every page was a request the bucket answered
        assert len(names) == len(set(names)) == MANY
        assert {f"many/{name}" for name in names} == set(lab.many)
        assert pages == -(-MANY // 1000) == 3, f"{pages} ListObjectsV2 requests for {MANY} keys"
        last = max(lab.many)  # on the last page
        assert (raw / last).read_bytes() == lab.many[last]
        assert os.stat(raw / last).st_size == len(lab.many[last])
        assert sorted(os.listdir(raw / "many")) == sorted(names)
        assert listing_pages(mounted) - before == pages  # listed again within the TTL: from the cache


@pytest.mark.req("B2-5")
def test_bucket_listings_are_cached_for_the_ttl_and_idle_time_then_fetched_again(bucket_lab, tmp_path):
    """``[raw] ttl = 6, idle = 2``: a folder listed again and again within both bounds is not asked of the
    bucket again, and an object added meanwhile is not shown; once the TTL has passed (though the listing
    was in use) it is asked and shown; a listing left unused for the idle time is asked again too."""
    from chaos.s3lab import PREFIX

    lab, ttl, idle = bucket_lab, 6.0, 2.0
    with mount_bucket(lab, tmp_path, {"ttl": ttl, "idle": idle}) as mounted:
        assert mount_status(mounted.mountpoint)["raw_views"]["ttl"] == ttl
        top = mounted.mountpoint / ".origins" / "bucket"
        box = top / "box"

        def listing() -> list[str]:
            """The bucket's root and its box/ folder (a lookup of box needs the root's listing, so both
            are listed each time and share one life)."""
            assert sorted(os.listdir(top)) == ["box", "many"]
            return sorted(os.listdir(box))

        before = listing_pages(mounted)
        started = time.monotonic()  # the listings are fetched after this: fresh until started + ttl
        assert listing() == ["one.txt", "two.txt"]
        fetched = time.monotonic()  # ... and fetched before this: stale from fetched + ttl
        assert listing_pages(mounted) - before == 2
        lab.server.upload(lab.bucket, {"box/three.txt": b"333"}, prefix=PREFIX)
        repeats = 0
        while time.monotonic() < started + ttl - 0.8:  # used every 0.4 s: never idle, within the TTL
            assert listing() == ["one.txt", "two.txt"], "a change showed within the TTL"
            repeats += 1
            time.sleep(0.4)
        assert repeats >= 8 and listing_pages(mounted) - before == 2, "a listing within the TTL reached the bucket"

        time.sleep(max(0.0, fetched + ttl + 0.2 - time.monotonic()))  # the TTL has passed, though in use
        assert listing() == ["one.txt", "three.txt", "two.txt"]
        assert listing_pages(mounted) - before == 4

        lab.server.upload(lab.bucket, {"box/four.txt": b"4444"}, prefix=PREFIX)
        assert listing() == ["one.txt", "three.txt", "two.txt"]  # fresh and in use: kept
        time.sleep(idle + 0.3)  # unused for longer than idle, well within the TTL
        assert listing() == ["four.txt", "one.txt", "three.txt", "two.txt"]
        assert listing_pages(mounted) - before == 6
        assert mount_status(mounted.mountpoint)["raw_views"]["listings_fetched"] >= 3
