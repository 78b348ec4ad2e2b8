"""The S3 origin, against moto's standalone server on a loopback port.

It passes the origin contract unchanged, writes included (with a small page
size, so listings page, and an origin prefix, so keys outside it must stay
invisible). Beyond that: a put that fails leaves no unfinished multipart
upload and is retried whole or not at all, options are checked, credentials
never leak into messages or logs, refused credentials are reloaded (moto
enforcing IAM authentication, keys rotated in the file or the environment),
keys that may only read are refused writes saying so, expiring ones renewed
before they expire (:mod:`musicfs.origins.s3creds`), 429/503 carry ``Retry-After`` to the
retry schedule, missing buckets and dead endpoints are unavailability (not
missing files), and :class:`RangeFile` lets mutagen parse a remote FLAC while
fetching only a small part of it.

Error responses moto cannot be asked for (503 with ``Retry-After``, a server
ignoring ``Range``) are produced by a botocore ``before-send`` hook on the
origin's client, which answers instead of the network: everything after it
(parsing, error mapping) is the real code path.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import socket
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import mutagen
import pytest
import trio
from botocore.awsrequest import AWSResponse
from mutagen.flac import FLAC, Picture

from fixtures.audio import AudioSpec, encode, unavailable_formats
from musicfs.errors import ConfigError, NotFound, NotRepeatable, OriginUnavailable
from musicfs.origins.base import Checksum, OriginBusy, create
from musicfs.origins.local import LocalOrigin
from musicfs.origins.rangefile import RangeFile
from musicfs.origins.retry import call_with_retry
from musicfs.origins.s3 import PART_SIZE, S3Origin, _retry_after
from musicfs.origins.s3creds import CredentialRenewer, renewal_time
from musicfs.testing.origin_contract import OriginContract
from musicfs.testing.write_contract import BIG, MiB, Source, SourceBroke, read_all
from tests.s3server import isolate_aws_env, moto_server, write_credentials

PREFIX = "music/"
SECRET = "CANARYsecretQ7w9zXv2Lm4Np8Rt6Yk3Hd5Jf1Gs0"
TOKEN = "CANARYtokenB4n6Mq8Wc1Ze3Ux5Ta7Ri9Po2Ly0Kv"


@pytest.fixture(scope="module")
def server():
    """One moto server for the tests that leave it as they found it."""
    with moto_server() as running:
        yield running


@pytest.fixture
def own_server():
    """A private moto server, for tests that enforce authentication or add IAM users."""
    with moto_server() as running:
        yield running


@pytest.fixture(autouse=True)
def aws(monkeypatch, tmp_path):
    """Dummy keys in this test's environment only; no ~/.aws, no instance metadata."""
    isolate_aws_env(monkeypatch, tmp_path)


@pytest.fixture
def connect():
    """``connect(server, bucket, **options)``: an S3Origin built from config options; closed afterwards."""
    origins = []

    def make(server, bucket: str, **overrides) -> S3Origin:
        options = {"endpoint": server.endpoint, "bucket": bucket, "prefix": PREFIX, "page_size": 7,
                   "timeout": 5.0}
        options.update(overrides)
        origin = create("bucket", "s3", {k: v for k, v in options.items() if v is not None})
        origins.append(origin)
        return origin

    yield make
    for origin in origins:
        origin.close()


class TestS3Origin(OriginContract):
    pages_listings = True  # page_size 7 (see connect), PAGE_FILES 23: four pages

    @pytest.fixture
    def make_origin(self, server, connect):
        def make(files):
            bucket = server.create_bucket(files, prefix=PREFIX)
            # outside the origin's prefix, or not files: none of these may show up
            server.upload(bucket, {"musicbox.flac": b"x", "other/e.flac": b"y", "music/dir/": b""})
            return connect(server, bucket)
        return make


# -- options -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "message"), [
    ({}, "needs 'bucket'"),
    ({"bucket": 5}, "bucket must be a string"),
    ({"bucket": "a/b"}, "bare bucket name"),
    ({"bucket": "b", "endpoint": "ftp://host"}, "http:// or https://"),
    ({"bucket": "b", "endpoint": "http://"}, "http:// or https://"),
    ({"bucket": "b", "endpoint": "http://host:99999"}, "not a valid URL"),
    ({"bucket": "b", "endpoint": "http://host/path"}, "just scheme://host"),
    ({"bucket": "b", "prefix": "a/../b"}, "'.' or '..'"),
    ({"bucket": "b", "page_size": 0}, "between 1 and 1000"),
    ({"bucket": "b", "page_size": 1001}, "between 1 and 1000"),
    ({"bucket": "b", "page_size": "7"}, "page_size must be an integer"),
    ({"bucket": "b", "timeout": 0}, "more than 0"),
    ({"bucket": "b", "timeout": True}, "number of seconds"),
    ({"bucket": "b", "region": ""}, "region must not be empty"),
    ({"bucket": "b", "colour": "red"}, "unknown option(s) colour"),
    ({"bucket": "b", "credentials_file": "/nonexistent/creds"}, "does not exist"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match="s3 origin 'o'") as info:
        S3Origin.from_options("o", options)
    assert message in str(info.value)


@pytest.mark.parametrize("key", ["secret_access_key", "aws_access_key_id", "session_token"])
def test_credentials_in_the_config_are_refused_without_echoing_them(key):
    with pytest.raises(ConfigError, match="not read from the musicfs config") as info:
        S3Origin.from_options("o", {"bucket": "b", key: SECRET})
    assert SECRET not in str(info.value)


def test_endpoint_with_a_password_is_refused_without_echoing_it():
    with pytest.raises(ConfigError, match="user name or password") as info:
        S3Origin.from_options("o", {"bucket": "b", "endpoint": f"http://me:{SECRET}@127.0.0.1:9"})
    assert SECRET not in str(info.value)


def test_location_and_repr(server, connect):
    origin = connect(server, server.create_bucket())
    assert origin.location == f"s3://{origin.bucket}/music/ @ {server.endpoint}"
    assert origin.location in repr(origin)
    assert origin.kind == "s3" and origin.client.meta.config.retries["total_max_attempts"] == 1


# -- versions and listing ------------------------------------------------------------------------

def test_the_etag_is_the_version(server, connect):
    bucket = server.create_bucket({"x.flac": b"first"}, prefix=PREFIX)
    origin = connect(server, bucket)
    entry = origin.stat("x.flac")
    assert entry.version == hashlib.md5(b"first").hexdigest()  # a single-part upload's ETag
    assert entry.version_key == entry.version
    (listed,) = origin.list_page("").files
    assert listed == entry  # listing and HEAD agree on size, whole-second mtime and version
    server.upload(bucket, {"x.flac": b"second"}, prefix=PREFIX)
    assert origin.stat("x.flac").version == hashlib.md5(b"second").hexdigest()


@pytest.mark.req("B2-2")
def test_a_prefix_bigger_than_a_page_lists_completely_with_each_key_once(server, connect):
    """ListObjectsV2 with prefix, delimiter and continuation tokens, over several pages.

    The folder holds 40 files and 12 sub-folders (the sub-folders' keys are
    not files of it) and the page is 7 keys, so both files and common
    prefixes run across pages; every one must come back once, none from
    outside the prefix or below the delimiter, and the pages counted are the
    requests the server answered.
    """
    files = {f"big/track {i:02d}.flac": b"x" * i for i in range(40)}
    files.update({f"big/disc {d:02d}/{n}.flac": b"y" for d in range(12) for n in ("a", "b")})
    files.update({"big.flac": b"not in it", "bigger/z.flac": b"nor this", "other/big/w.flac": b"nor this"})
    origin = connect(server, server.create_bucket(files, prefix=PREFIX), page_size=7)
    requests = []
    origin.client.meta.events.register("before-send.s3.ListObjectsV2",
                                       lambda request, **_: requests.append(request.url))
    seen_files, seen_dirs, token, pages = [], [], None, 0
    while True:
        page = origin.list_page("big", token)
        pages += 1
        seen_files += [e.path for e in page.files]
        seen_dirs += page.dirs
        assert len(page.files) + len(page.dirs) <= 7  # a page never holds more than page_size keys
        token = page.next_token
        if token is None:
            break
    assert pages == len(requests) >= (40 + 12) // 7 + 1 > 1  # every page was a request; several of them
    assert all("delimiter=%2F" in url and "prefix=music%2Fbig%2F" in url for url in requests)
    assert sum("continuation-token=" in url for url in requests) == pages - 1
    assert sorted(seen_files) == sorted(p for p in files if p.startswith("big/") and p.count("/") == 1)
    assert len(seen_files) == len(set(seen_files)) == 40
    assert sorted(seen_dirs) == [f"disc {d:02d}" for d in range(12)] and len(set(seen_dirs)) == 12
    # list_all, which the raw view and the scan use, gives the same, and asks as many pages
    before = origin.list_requests
    all_files, all_dirs = origin.list_all("big/")
    assert sorted(e.path for e in all_files) == sorted(seen_files) and sorted(all_dirs) == sorted(seen_dirs)
    assert origin.list_requests - before == pages


def test_a_missing_bucket_is_unavailable_not_missing(server, connect):
    origin = connect(server, "musicfs-no-such-bucket")
    with pytest.raises(OriginUnavailable, match="does not exist"):
        origin.health()
    for call in (lambda: origin.stat("a.flac"), lambda: origin.read_range("a.flac", 0, 10),
                 lambda: origin.list_page("")):
        with pytest.raises(OriginUnavailable) as info:
            call()
        assert not isinstance(info.value, NotFound)


def test_paths_cannot_leave_the_prefix(server, connect):
    origin = connect(server, server.create_bucket({"a.flac": b"a"}, prefix=PREFIX))
    for path in ("../secret.flac", "dir/../../x", "./a.flac", "/a.flac", ""):
        with pytest.raises(ValueError):
            origin.read_range(path, 0, 1)


# -- reads ---------------------------------------------------------------------------------------

def test_reads_ask_for_exactly_the_range(server, connect):
    data = random.Random(1).randbytes(200_000)
    origin = connect(server, server.create_bucket({"a.flac": data}, prefix=PREFIX))
    ranges = []
    origin.client.meta.events.register("before-send.s3.GetObject",
                                       lambda request, **_: ranges.append(request.headers["Range"]))
    assert origin.read_range("a.flac", 1000, 65536) == data[1000:66536]
    assert ranges == [b"bytes=1000-66535"]


def test_a_server_that_ignores_range_still_gives_the_right_bytes(server, connect):
    data = random.Random(2).randbytes(10_000)
    origin = connect(server, server.create_bucket({"a.flac": data}, prefix=PREFIX))
    origin.client.meta.events.register("before-send.s3.GetObject", answer(200, data, {"etag": '"a1"'}))
    assert origin.read_range("a.flac", 3000, 100) == data[3000:3100]
    assert origin.read_range("a.flac", 9990, 100) == data[9990:]


@pytest.mark.parametrize("headers", [{"content-type": "text/html; charset=utf-8", "etag": '"5f1a-19"'},
                                     {"content-type": "application/octet-stream"}])
def test_a_page_instead_of_the_object_is_an_error_not_data(server, connect, headers):
    """A captive portal answers every request with 200 and its login page: never taken for the file."""
    origin = connect(server, server.create_bucket({"a.flac": b"x" * 10_000}, prefix=PREFIX))
    origin.client.meta.events.register("before-send.s3.GetObject",
                                       answer(200, b"<html>Please Login</html>", headers))
    with pytest.raises(OriginUnavailable, match="not the object"):
        origin.read_range("a.flac", 0, 4096)


@pytest.mark.parametrize(("status", "code"), [(400, "ExpiredToken"), (401, "expired_auth_token")])
def test_an_expired_token_reloads_the_credentials_once(server, connect, status, code):
    data = b"still here"
    origin = connect(server, server.create_bucket({"a.flac": data}, prefix=PREFIX))
    origin.client.meta.events.register("before-send.s3.GetObject", answer(status, s3_error(code), times=1))
    with pytest.raises(OriginUnavailable, match="credentials refused"):
        origin.read_range("a.flac", 0, 100)
    assert origin.credential_reloads == 1
    assert origin.read_range("a.flac", 0, 100) == data  # signed by the new client: accepted
    assert origin.credential_reloads == 1


def test_parallel_reads_share_the_client(server, connect):
    data = random.Random(6).randbytes(1_000_000)
    origin = connect(server, server.create_bucket({"a.flac": data}, prefix=PREFIX))
    spans = [(random.Random(i).randrange(len(data)), random.Random(-i).randrange(1, 200_000))
             for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda span: origin.read_range("a.flac", *span), spans))
    assert got == [data[offset:offset + size] for offset, size in spans]


# -- busy servers and Retry-After -----------------------------------------------------------------

class _Raw(io.BytesIO):
    """The raw body botocore reads a canned response from (``stream`` for errors, ``read`` for data)."""

    def stream(self, **_):
        yield self.getvalue()


def answer(status: int, body: bytes = b"", headers: dict | None = None, times: int | None = None):
    """A ``before-send`` hook answering ``status`` instead of the server (the first ``times`` requests)."""
    calls = []

    def hook(request, **_):
        calls.append(time.monotonic())
        if times is not None and len(calls) > times:
            return None  # let it through to moto
        return AWSResponse(request.url, status, {"content-length": str(len(body)), **(headers or {})},
                           _Raw(body))

    hook.calls = calls
    return hook


def s3_error(code: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>canned</Message></Error>").encode()


def test_503_slow_down_carries_retry_after(server, connect):
    origin = connect(server, server.create_bucket({"a.flac": b"abc"}, prefix=PREFIX))
    origin.client.meta.events.register("before-send.s3.GetObject",
                                       answer(503, s3_error("SlowDown"), {"Retry-After": "3"}))
    with pytest.raises(OriginBusy, match="HTTP 503 SlowDown") as info:
        origin.read_range("a.flac", 0, 3)
    assert info.value.retry_after == 3.0


@pytest.mark.parametrize(("status", "code", "headers", "busy", "retry_after"), [
    (429, "TooManyRequests", {}, True, None),
    (503, "ServiceUnavailable", {"Retry-After": "0.5"}, True, 0.5),
    (500, "InternalError", {}, False, None),
    (502, "BadGateway", {}, False, None),
])
def test_server_errors_are_busy_or_unavailable(server, connect, status, code, headers, busy, retry_after):
    origin = connect(server, server.create_bucket({"a.flac": b"abc"}, prefix=PREFIX))
    for event in ("before-send.s3.HeadObject", "before-send.s3.ListObjectsV2"):
        origin.client.meta.events.register(event, answer(status, s3_error(code), headers))
    for call in (lambda: origin.stat("a.flac"), lambda: origin.list_page("")):
        with pytest.raises(OriginUnavailable, match=f"HTTP {status}") as info:
            call()
        assert isinstance(info.value, OriginBusy) == busy
        assert getattr(info.value, "retry_after", None) == retry_after


def test_call_with_retry_waits_for_retry_after(server, connect):
    data = b"after the wait"
    origin = connect(server, server.create_bucket({"a.flac": data}, prefix=PREFIX))
    hook = answer(503, s3_error("SlowDown"), {"Retry-After": "1"}, times=1)
    origin.client.meta.events.register("before-send.s3.GetObject", hook)
    errors = []

    async def main():
        return await call_with_retry(origin.read_range, "a.flac", 0, 100, deadline=trio.current_time() + 10,
                                     limiter=trio.CapacityLimiter(1),
                                     on_error=lambda failure: errors.append(failure.error))

    assert trio.run(main) == data
    assert len(hook.calls) == 2 and hook.calls[1] - hook.calls[0] >= 1.0  # not the schedule's 100 ms
    assert [type(e) for e in errors] == [OriginBusy] and errors[0].retry_after == 1.0


def test_retry_after_as_an_http_date():
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 28 <= _retry_after({"retry-after": soon}) <= 30
    assert _retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert _retry_after({"retry-after": "soon"}) is None and _retry_after({}) is None


# -- unreachable endpoints -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nobody_listening_is_unavailable(connect, server):
    origin = connect(server, "bucket", endpoint=f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(OriginUnavailable, match="EndpointConnectionError"):
        origin.health()


def test_a_server_that_never_answers_times_out(connect, server):
    with socket.socket() as hole:  # accepts connections (the kernel's backlog) and never replies
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        origin = connect(server, "bucket", endpoint=f"http://127.0.0.1:{hole.getsockname()[1]}",
                         timeout=0.5)
        started = time.monotonic()
        with pytest.raises(OriginUnavailable, match="ReadTimeoutError"):
            origin.read_range("a.flac", 0, 10)
        assert time.monotonic() - started < 3


# -- credentials -----------------------------------------------------------------------------------

def _everything_said(origin, exc: BaseException, caplog) -> str:
    return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(origin),
                      origin.location, caplog.text])


@pytest.mark.parametrize(("wrong", "expected"), [("unknown key and token", "InvalidAccessKeyId"),
                                                  ("wrong secret", "SignatureDoesNotMatch")])
def test_credentials_never_appear_in_errors_or_logs(own_server, connect, monkeypatch, tmp_path, caplog,
                                                    wrong, expected):
    key_id, secret = own_server.add_user("musicfs")
    bucket = own_server.create_bucket({"a.flac": b"abc"}, prefix=PREFIX)
    used_id = "AKIAUNKNOWNUNKNOWN01" if wrong.startswith("unknown") else key_id
    isolate_aws_env(monkeypatch, tmp_path, key_id=used_id, secret=SECRET)
    if wrong.endswith("token"):
        monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    origin = connect(own_server, bucket)
    with own_server.enforce_auth():
        for call, says in ((origin.health, expected), (lambda: origin.stat("a.flac"), "HTTP 403"),
                           (lambda: origin.list_page(""), expected),
                           (lambda: origin.read_range("a.flac", 0, 3), expected)):
            with pytest.raises(OriginUnavailable) as info:
                call()
            said = _everything_said(origin, info.value, caplog)
            assert says in str(info.value)  # a HEAD (stat) answers a bare 403, without a code
            for secret_text in (SECRET, TOKEN, used_id, secret):
                assert secret_text not in said
    assert "credentials were refused" in caplog.text  # the log was captured, and it held no secret
    assert not [r for r in caplog.records if r.name.startswith("botocore") and r.levelno < logging.INFO]


def test_a_bad_profile_is_a_config_error_without_secrets(tmp_path):
    creds = write_credentials(tmp_path / "credentials", "AKIAMUSICFSPROFILE01", SECRET, profile="music")
    with pytest.raises(ConfigError, match="profile 'other'") as info:
        S3Origin.from_options("o", {"bucket": "b", "credentials_file": str(creds), "profile": "other"})
    assert SECRET not in str(info.value) and "AKIAMUSICFSPROFILE01" not in str(info.value)


def _retrying(origin, errors: list):
    """A blocking read that retries on the schedule, as the FUSE layer's reads do."""
    def read(path: str, offset: int, size: int) -> bytes:
        async def main():
            return await call_with_retry(origin.read_range, path, offset, size,
                                         deadline=trio.current_time() + 10, limiter=trio.CapacityLimiter(1),
                                         on_error=lambda failure: errors.append(failure.error))
        return trio.run(main)
    return read


@pytest.mark.parametrize("source", ["credentials_file", "environment"])
def test_rotated_credentials_are_reloaded_without_disturbing_open_files(own_server, connect, monkeypatch,
                                                                        tmp_path, source):
    data = random.Random(3).randbytes(300_000)
    old = own_server.add_user("musicfs")
    bucket = own_server.create_bucket({"a.flac": data}, prefix=PREFIX)
    creds = tmp_path / "credentials"
    if source == "credentials_file":
        write_credentials(creds, *old)
        # wrong keys in the environment: a named credentials file is the one source
        isolate_aws_env(monkeypatch, tmp_path, key_id="AKIAENVIRONMENTKEY01", secret="not-this-one")
        origin = connect(own_server, bucket, credentials_file=str(creds))
    else:
        isolate_aws_env(monkeypatch, tmp_path, *old)
        origin = connect(own_server, bucket)
    errors: list[BaseException] = []
    with own_server.enforce_auth():
        handle = RangeFile(origin, "a.flac", len(data), read=_retrying(origin, errors))
        first = handle.read(100_000)
        with own_server.auth_paused():  # the key is rotated: a new one made, the old one deleted
            new = own_server.new_key("musicfs")
            own_server.delete_key("musicfs", old[0])
        if source == "credentials_file":
            write_credentials(creds, *new)
        else:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", new[0])
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", new[1])
        assert first + handle.read() == data  # the open file reads on, after one refused attempt
        assert origin.stat("a.flac").size == len(data)
    assert origin.credential_reloads == 1
    assert len(errors) == 1 and "InvalidAccessKeyId" in str(errors[0])


def test_refused_credentials_stay_refused_until_they_change(own_server, connect, monkeypatch, tmp_path):
    old = own_server.add_user("musicfs")
    bucket = own_server.create_bucket({"a.flac": b"abc"}, prefix=PREFIX)
    creds = write_credentials(tmp_path / "credentials", *old)
    origin = connect(own_server, bucket, credentials_file=str(creds))
    with own_server.enforce_auth():
        assert origin.read_range("a.flac", 0, 3) == b"abc"
        with own_server.auth_paused():
            own_server.delete_key("musicfs", old[0])
        for _ in range(2):
            with pytest.raises(OriginUnavailable, match="InvalidAccessKeyId"):
                origin.read_range("a.flac", 0, 3)
        assert origin.credential_reloads == 2  # reloaded each time, found the same dead key


# -- RangeFile -------------------------------------------------------------------------------------

def tagged_flac(seconds: float = 20.0, cover: int = 150_000) -> bytes:
    buf = io.BytesIO(encode(AudioSpec(7, seconds, 44100, 2), "flac"))
    audio = FLAC(buf)
    audio.update({"title": "Remote Song", "artist": "Bucket Band", "album": "Over HTTP",
                  "tracknumber": "4", "date": "2021"})
    picture = Picture()
    picture.type, picture.mime, picture.data = 3, "image/jpeg", random.Random(4).randbytes(cover)
    audio.add_picture(picture)
    buf.seek(0)
    audio.save(buf)
    return buf.getvalue()


def test_mutagen_parses_a_flac_in_the_bucket_through_range_file(server, connect):
    data = tagged_flac()
    origin = connect(server, server.create_bucket({"album/04 song.flac": data}, prefix=PREFIX))
    entry = origin.stat("album/04 song.flac")
    handle = RangeFile(origin, entry.path, entry.size)
    audio = mutagen.File(handle)
    assert isinstance(audio, FLAC)
    assert audio["title"] == ["Remote Song"] and audio["artist"] == ["Bucket Band"]
    assert audio["tracknumber"] == ["4"] and audio.pictures[0].data == random.Random(4).randbytes(150_000)
    assert audio.info.sample_rate == 44100 and abs(audio.info.length - 20.0) < 0.01
    # the tags and the cover, not the audio: a few requests, a fraction of the file
    assert handle.requests <= 4 and handle.bytes_fetched < 400_000 < len(data)


@pytest.mark.skipif("mp3" in unavailable_formats(), reason="this libsndfile cannot write MP3")
def test_mutagen_parses_an_mp3_reading_its_start_and_end(server, connect):
    from mutagen.id3 import ID3, TIT2
    from mutagen.mp3 import MP3

    buf = io.BytesIO(encode(AudioSpec(8, 30.0, 22050, 1), "mp3"))
    tags = ID3()
    tags.add(TIT2(encoding=3, text="Remote MP3"))
    tags.save(buf, v1=2)  # ID3v2 at the start and ID3v1 at the end
    data = buf.getvalue()
    origin = connect(server, server.create_bucket({"a.mp3": data}, prefix=PREFIX))
    handle = RangeFile(origin, "a.mp3", len(data))
    audio = mutagen.File(handle)
    assert isinstance(audio, MP3) and audio["TIT2"].text == ["Remote MP3"]
    assert handle.bytes_fetched < len(data)


def test_range_file_behaves_like_a_local_file(tmp_path):
    """Random seeks and reads of every size give what io.BytesIO gives, across block edges."""
    rng = random.Random(5)
    data = rng.randbytes(1000)
    (tmp_path / "f.bin").write_bytes(data)
    handle = RangeFile(LocalOrigin("local", tmp_path), "f.bin", len(data), block_size=64, cache_blocks=2)
    model = io.BytesIO(data)
    for _ in range(2000):
        op = rng.randrange(3)
        if op == 0:
            offset, whence = rng.choice([(rng.randrange(-50, 1100), io.SEEK_SET),
                                         (rng.randrange(-200, 200), io.SEEK_CUR),
                                         (rng.randrange(-1100, 50), io.SEEK_END)])
            target = {io.SEEK_SET: 0, io.SEEK_CUR: model.tell(), io.SEEK_END: len(data)}[whence] + offset
            if target < 0:  # refused, as lseek would (BytesIO would clamp to 0 instead)
                with pytest.raises(ValueError):
                    handle.seek(offset, whence)
                continue
            assert handle.seek(offset, whence) == model.seek(offset, whence)
        elif op == 1:
            n = rng.choice([0, 1, 7, 63, 64, 65, 200, 999, -1])
            assert handle.read(n) == model.read(n)
        else:
            buf = bytearray(rng.randrange(0, 150))
            expected = bytearray(len(buf))
            assert handle.readinto(buf) == model.readinto(expected) and buf == expected
        assert handle.tell() == model.tell()
    assert len(handle._blocks) <= 2
    handle.close()
    with pytest.raises(ValueError):
        handle.read(1)


def test_range_file_fetches_neighbouring_blocks_at_once_and_reuses_them():
    calls = []
    data = bytes(range(256)) * 100

    class Origin:
        def read_range(self, path, offset, size):
            calls.append((offset, size))
            return data[offset:offset + size]

    handle = RangeFile(Origin(), "x", len(data), block_size=1000, cache_blocks=3)
    assert handle.read(2500) == data[:2500] and calls == [(0, 3000)]
    handle.seek(500)
    assert handle.read(100) == data[500:600] and len(calls) == 1  # cached
    handle.seek(-10, io.SEEK_END)
    assert handle.read() == data[-10:] and calls[-1] == (25000, 600)  # the short last block


def test_range_file_passes_origin_errors_through_and_notices_changed_files(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"x" * 100)
    origin = LocalOrigin("local", tmp_path)
    with pytest.raises(NotFound):
        RangeFile(origin, "missing.bin", 100).read(10)
    with pytest.raises(OriginUnavailable, match="changed while it was read"):
        RangeFile(origin, "f.bin", 200).read()  # listed as 200 bytes, now 100


# -- renewing credentials that expire (B2-4) --------------------------------------------------------

def test_credentials_are_due_a_sixth_of_their_lifetime_early_and_at_least_a_minute():
    hour = 3600.0
    assert renewal_time(0.0, 24 * hour) == 20 * hour  # seed 000: 24 h tokens renewed after 20 h
    assert renewal_time(0.0, hour) == 50 * 60.0  # an hour's STS credentials, 10 minutes early
    assert renewal_time(0.0, 300.0) == 240.0  # at least a minute early
    assert renewal_time(0.0, 12.0) == 6.0  # short-lived: half-way through


def test_a_failed_renewal_keeps_the_old_credentials_and_is_tried_again(monkeypatch):
    """The renewer calls renew() when due, retries after a failure, and stops when closed."""
    monkeypatch.setattr("musicfs.origins.s3creds.RETRY_MIN", 0.05)
    calls = []

    def renew():
        calls.append(time.time())
        if len(calls) == 1:
            raise OSError("the credential process failed")
        renewer.schedule(time.time(), time.time() + 3600)  # new credentials: due in 50 minutes

    renewer = CredentialRenewer("test", renew)
    renewer.schedule(time.time() - 10, time.time() + 0.2)  # due now (half of the 10.2 s already passed)
    deadline = time.time() + 5
    while renewer.renewals == 0 and time.time() < deadline:
        time.sleep(0.01)
    renewer.close()
    assert len(calls) == 2 and renewer.failures == 1 and renewer.renewals == 1
    assert renewer.last_margin is not None and renewer.last_margin < 0.2
    assert renewer.expires > time.time() + 3000


def test_static_keys_start_no_renewal_thread():
    renewer = CredentialRenewer("test", lambda: None)
    renewer.schedule(time.time(), None)
    assert renewer._thread is None
    renewer.close()


# -- writes ----------------------------------------------------------------------------------------

def count_requests(origin) -> Counter:
    """How many requests of each operation the origin's client sends from now on (all go on to moto)."""
    sent: Counter = Counter()
    origin.client.meta.events.register("before-send.s3",
                                       lambda event_name, **_: sent.update([event_name.rsplit(".", 1)[1]]))
    return sent


def unfinished_uploads(server, bucket: str) -> list[str]:
    return [u["Key"] for u in server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


@pytest.mark.parametrize("seekable", [True, False], ids=["rewindable", "stream"])
def test_a_large_put_that_fails_leaves_no_unfinished_upload(server, connect, seekable):
    bucket = server.create_bucket({"index/snapshot.db": b"old snapshot"}, prefix=PREFIX)
    origin = connect(server, bucket)
    sent = count_requests(origin)
    source = Source(random.Random(21).randbytes(BIG), seekable=seekable, fail_at=BIG - MiB)
    with pytest.raises(SourceBroke if seekable else NotRepeatable):
        origin.put("index/snapshot.db", source)
    # it went as far as a multipart upload, which was aborted: no parts are left to pay for
    assert sent["CreateMultipartUpload"] == 1 and sent["AbortMultipartUpload"] == 1
    assert sent["CompleteMultipartUpload"] == 0
    assert unfinished_uploads(server, bucket) == []
    assert origin.read_range("index/snapshot.db", 0, 100) == b"old snapshot"


def test_a_part_refused_midway_fails_the_put_and_the_retry_stores_it_whole(server, connect):
    """The server fails one part: that attempt is aborted, the source rewound, and the retry helper's
    next attempt uploads everything again (not the rest of it)."""
    bucket = server.create_bucket({"index/snapshot.db": b"old snapshot"}, prefix=PREFIX)
    origin = connect(server, bucket)
    hook = answer(500, s3_error("InternalError"), times=1)
    origin.client.meta.events.register("before-send.s3.UploadPart", hook)
    sent = count_requests(origin)
    data = random.Random(22).randbytes(BIG)
    failures = []

    async def main():
        await call_with_retry(origin.put, "index/snapshot.db", Source(data), deadline=trio.current_time() + 60,
                              limiter=trio.CapacityLimiter(1), on_error=failures.append)

    trio.run(main)
    assert [(f.final, type(f.error)) for f in failures] == [(False, OriginUnavailable)]
    assert "HTTP 500 InternalError" in str(failures[0].error)
    assert sent["CreateMultipartUpload"] == 2 and sent["AbortMultipartUpload"] == 1
    assert hashlib.sha256(read_all(origin, "index/snapshot.db")).digest() == hashlib.sha256(data).digest()
    assert unfinished_uploads(server, bucket) == []


def test_a_stream_that_failed_midway_is_not_retried(server, connect):
    bucket = server.create_bucket(prefix=PREFIX)
    origin = connect(server, bucket)
    origin.client.meta.events.register("before-send.s3.UploadPart", answer(500, s3_error("InternalError"), times=1))
    sent = count_requests(origin)

    async def main():
        await call_with_retry(origin.put, "index/snapshot.db", Source(bytes(BIG), seekable=False),
                              deadline=trio.current_time() + 60, limiter=trio.CapacityLimiter(1))

    with pytest.raises(NotRepeatable, match="cannot be rewound") as info:
        trio.run(main)
    assert isinstance(info.value.__cause__, OriginUnavailable)
    assert sent["CreateMultipartUpload"] == 1  # one attempt: another would have stored the rest only
    with pytest.raises(NotFound):
        origin.stat("index/snapshot.db")
    assert unfinished_uploads(server, bucket) == []


def test_the_etag_of_a_put_is_checked_and_a_multipart_one_is_not_taken_for_an_md5(server, connect):
    origin = connect(server, server.create_bucket(prefix=PREFIX))
    origin.put("small.bin", Source(b"small"))
    assert origin.whole_checksum(origin.stat("small.bin").version) == Checksum(
        "md5", hashlib.md5(b"small").hexdigest(), "ETag")
    origin.put("big.bin", Source(bytes(BIG)))
    version = origin.stat("big.bin").version
    assert version.endswith(f"-{-(-BIG // PART_SIZE)}") and origin.whole_checksum(version) is None


def test_credentials_that_may_only_read_are_refused_writes_saying_so(own_server, connect, monkeypatch,
                                                                     tmp_path):
    reader = own_server.add_user("reader", ["s3:GetObject", "s3:ListBucket"])
    bucket = own_server.create_bucket({"a.flac": b"abc"}, prefix=PREFIX)
    isolate_aws_env(monkeypatch, tmp_path, *reader)
    origin = connect(own_server, bucket)
    with own_server.enforce_auth():
        assert origin.read_range("a.flac", 0, 3) == b"abc"
        for call in (lambda: origin.put("a.flac", Source(b"new")), lambda: origin.put("big.bin", Source(bytes(BIG))),
                     lambda: origin.remove("a.flac")):
            with pytest.raises(OriginUnavailable, match="permission denied: the credentials may not write") as info:
                call()
            assert "HTTP 403 AccessDenied" in str(info.value) and reader[1] not in str(info.value)
        assert origin.read_range("a.flac", 0, 3) == b"abc"
    assert origin.credential_reloads == 0  # a refusal of the action, not of the keys
