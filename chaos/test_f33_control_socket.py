"""FAULT-33: hostile clients of the control socket, on a real mount.

Another user cannot connect (the socket is 0600 in a 0700 folder), and if the
modes are opened up the daemon's peer-credential check still refuses them
and says so once in its log. Oversized, malformed, mistyped, huge, half-sent
and abandoned requests each get an error or are dropped, while the API
keeps answering and the filesystem keeps its latency. No route runs a
command, adds an origin or changes access: the API's own description lists
exactly the routes the design has. A socket left behind by a killed daemon
is replaced by the next mount.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conformance.measure import Latencies
from fixtures.bigfile import write_wav
from musicfs import daemon
from musicfs.control.client import ControlClient
from musicfs.control.sockets import reachable
from tests.harness import mount_library, mounted_tracks

NOBODY = 65534
IDLE_TIMEOUT = 10.0  # the server's: a connection idle before its request is complete is dropped
BODY_TIMEOUT = 10.0  # the API's: a body that stalls is answered 408
STATUS_BOUND = 1.0  # seconds: /v1/status answers within this while the socket is under attack

ROUTES = {  # the whole API: reads, a shutdown, a cache clear, rescans, the two feeds, searches and
    # saved searches (a name and a query text written to the index: nothing is run but a search)
    "/v1/status": {"get"}, "/v1/shutdown": {"post"}, "/v1/cache": {"get"}, "/v1/cache/clear": {"post"},
    "/v1/origins": {"get"}, "/v1/origins/{origin_id}": {"get"}, "/v1/origins/{origin_id}/rescan": {"post"},
    "/v1/events": {"get"}, "/metrics": {"get"},
    "/v1/search": {"get"}, "/v1/search/stream": {"get"},
    "/v1/collections": {"get", "post"}, "/v1/collections/{name}": {"delete"},
    "/v1/prefetch": {"post"},  # files fetched into the cache: what a read would fetch, nothing else
    # pins: files named in the mount kept whole in the cache (fetched as a read would), and let go
    "/v1/pins": {"get", "post"}, "/v1/pins/remove": {"post"},
    # a mount from a published catalog: its state, and a look at the pointer now (404 elsewhere)
    "/v1/catalog": {"get"}, "/v1/catalog/poll": {"post"},
}


def socket_of(mounted) -> Path:
    return Path(daemon.read_pidfile(daemon.RunFiles.for_mountpoint(mounted.state_dir, mounted.mountpoint))["socket"])


def small_library(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        write_wav(folder / f"take{i}.wav", 64 * 1024, seed=i)
    return folder


@contextmanager
def raw(path: Path, timeout: float = 15.0):
    """A plain Unix-socket connection to the daemon (for what no HTTP client would send)."""
    with reachable(path) as where:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(where)  # blocking: a full backlog makes a Unix socket's connect wait, not fail
            conn.settimeout(timeout)
            yield conn
        finally:
            conn.close()


def answer(conn: socket.socket) -> tuple[int | None, bytes]:
    """(status, body) of the reply on ``conn``, or (None, b"") if it was closed without one."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None, b""
            data += chunk
    except ConnectionResetError:
        return None, b""
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    try:
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
    except ConnectionResetError:
        pass
    return int(head.split(b" ")[1]), body


def send(path: Path, request: bytes) -> tuple[int | None, bytes]:
    with raw(path) as conn:
        try:
            conn.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return answer(conn)


def as_other_user(path: Path) -> dict:
    """Connect to ``path`` as uid 65534 (a forked child): what happened, as the child saw it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, try, report, exit (no Python cleanup in a fork)
        result: dict = {}
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(10)
            try:
                conn.connect(str(path))
            except OSError as exc:
                result = {"connect": exc.errno}
            else:
                try:
                    conn.sendall(b"GET /v1/status HTTP/1.1\r\nHost: musicfs\r\n\r\n")
                    result = {"connect": 0, "reply": conn.recv(65536).decode("latin-1")}
                except OSError as exc:
                    result = {"connect": 0, "reply": "", "error": exc.errno}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.fixture
def runtime_dir():
    """An ``XDG_RUNTIME_DIR`` another user may pass through (the socket's own folder stays 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="musicfs-run-"))
    os.chmod(folder, 0o711)
    try:
        yield folder
    finally:
        for inner in sorted(folder.rglob("*"), reverse=True):
            inner.rmdir() if inner.is_dir() and not inner.is_symlink() else inner.unlink()
        folder.rmdir()


@pytest.mark.req("FAULT-33", "B2-7")
def test_f33_another_user_is_refused_by_the_modes_and_by_the_peer_check(tmp_path, runtime_dir):
    lib = small_library(tmp_path / "lib")
    with mount_library(origin=lib, work=tmp_path / "work", env={"XDG_RUNTIME_DIR": str(runtime_dir)}) as mounted, \
            ControlClient.for_mount(mounted.state_dir, mounted.mountpoint) as api:
        path = socket_of(mounted)
        assert path.parent == runtime_dir / "musicfs"
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.stat().st_uid == os.getuid() and stat.S_ISSOCK(path.stat().st_mode)
        assert api.get("/v1/status")["control"]["connections_refused"] == 0

        # the kernel keeps another user out: it cannot even reach the socket
        assert as_other_user(path) == {"connect": 13}  # EACCES

        # modes opened up (as a careless admin might): the daemon still refuses, and logs it
        os.chmod(path.parent, 0o711)
        os.chmod(path, 0o666)
        try:
            seen = as_other_user(path)
        finally:
            os.chmod(path, 0o600)
            os.chmod(path.parent, 0o700)
        assert seen["connect"] == 0 and not seen["reply"].startswith("HTTP"), seen
        assert api.get("/v1/status")["control"]["connections_refused"] == 1
        refusals = [line for line in mounted.log_text().splitlines() if "control socket: refused" in line]
        assert len(refusals) == 1 and f"uid {NOBODY}" in refusals[0], refusals
        assert api.get("/v1/status")["state"] == "ready"  # its owner is served as before


@pytest.mark.req("FAULT-33")
def test_f33_a_socket_left_by_a_killed_daemon_is_replaced(mount_factory, tmp_path):
    lib = small_library(tmp_path / "lib")
    killed = mount_factory(origin=lib, work=tmp_path / "work")
    path = socket_of(killed)
    killed.proc.kill()
    try:
        killed.proc.wait(5)
    except subprocess.TimeoutExpired:  # a thread of its own in a request to its own mount: free it
        daemon.abort_connection(killed.mountpoint)
        killed.proc.wait(10)
    daemon.fusermount_unmount(killed.mountpoint, lazy=True)  # the stale FUSE mount (FAULT-25's matter)
    assert stat.S_ISSOCK(path.stat().st_mode), "the killed daemon's socket should still be there"
    with pytest.raises(OSError), raw(path) as conn:  # nothing answers on it
        conn.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        answer(conn)
    again = mount_factory(origin=lib, work=tmp_path / "work", index=killed.index)
    assert socket_of(again) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with ControlClient(path) as api:
        assert api.get("/v1/status")["pid"] == again.pid


class Watch(threading.Thread):
    """While hostile clients do their worst: the API's status, a read and a listing, timed."""

    def __init__(self, api_socket: Path, track: Path, folder: Path):
        super().__init__(daemon=True)
        self.api_socket, self.track, self.folder = api_socket, track, folder
        self.status = Latencies("GET /v1/status under attack")
        self.read = Latencies("open+read of a cached track under attack")
        self.listing = Latencies("listing under attack")
        self.errors: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with ControlClient(self.api_socket, timeout=STATUS_BOUND * 5) as api:
            while not self.halt.is_set():
                try:
                    for timed, operation in ((self.status, lambda: api.get("/v1/status")),
                                             (self.read, self._read),
                                             (self.listing, lambda: os.listdir(self.folder))):
                        started = time.perf_counter_ns()
                        operation()
                        timed.ms.append((time.perf_counter_ns() - started) / 1e6)
                except Exception as exc:  # noqa: BLE001 - recorded, and the test fails on it
                    self.errors.append(exc)
                self.halt.wait(0.01)  # a p99 wants a few hundred samples over the attack

    def _read(self) -> None:
        fd = os.open(self.track, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # from the daemon, not the page cache
            assert len(os.read(fd, 65536)) == 65536
        finally:
            os.close(fd)


@pytest.mark.req("FAULT-33", "B2-7")
def test_f33_hostile_requests_get_an_error_and_the_daemon_keeps_serving(tmp_path, requirement_catalogue):
    lib = small_library(tmp_path / "lib")
    with mount_library(origin=lib, work=tmp_path / "work") as mounted, ExitStack() as held:
        path = socket_of(mounted)
        tracks = mounted_tracks(mounted.mountpoint)
        track = tracks["take0.wav"]
        assert track.read_bytes() == (lib / "take0.wav").read_bytes()
        status = ControlClient(path)
        held.callback(status.close)
        status.get("/v1/status")  # the API is loaded on first use: not while the watch times it
        watch = Watch(path, track, track.parent)
        watch.start()
        subscribers = status.get("/v1/status")["events"]["subscribers"]

        # 200 connections opened and left idle; two half-sent requests (headers, then a body)
        idle = [held.enter_context(raw(path)) for _ in range(200)]
        half_head = held.enter_context(raw(path, timeout=IDLE_TIMEOUT + 10))
        half_head.sendall(b"GET /v1/sta")
        half_body = held.enter_context(raw(path, timeout=BODY_TIMEOUT + 10))
        half_body.sendall(b"POST /v1/cache/clear HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"dry_run\"")
        stalled_at = time.monotonic()

        # each bad request gets its error, with a JSON detail where the API itself answers
        post = b"POST /v1/cache/clear HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"

        def body(data: bytes) -> bytes:
            return post + b"Content-Length: %d\r\n\r\n" % len(data) + data

        def chunked(size: int) -> bytes:
            return post + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % size + b" " * size + b"\r\n0\r\n\r\n"

        cases = {
            "declared body over the limit": (post + b"Content-Length: 10000000\r\n\r\n", 413, "over 65536"),
            "streamed body over the limit": (chunked(200_000), 413, "over 65536"),
            "malformed JSON": (body(b'{"dry_run": tru'), 422, "JSON decode error"),
            "wrong type": (body(b'{"dry_run": "perhaps"}'), 422, "dry_run"),
            "not an object": (body(b'[1, 2, 3]'), 422, "valid dictionary"),
            "a field the route does not take": (body(b'{"command": "rm -rf /", "dry_run": true}'), 422,
                                                "Extra inputs are not permitted"),
            "huge query string": (b"GET /v1/status?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431, ""),
            "huge headers": (b"GET /v1/status HTTP/1.1\r\nHost: x\r\n" + b"".join(
                b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(100)) + b"\r\n", 431, ""),
            "thousands of parameters": (b"GET /v1/events?" + b"type=FileAccessed&" * 800 + b" HTTP/1.1\r\n"
                                        b"Host: x\r\n\r\n", 422, "at most 50 items"),
            "unknown event type": (b"GET /v1/events?type=" + b"X" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                                   400, "unknown event type"),
            "not HTTP": (b"\x00\xff\xfe\x16\x03\x01 hello\r\n\r\n", 400, ""),
            "unknown route": (b"GET /v1/exec?cmd=id HTTP/1.1\r\nHost: x\r\n\r\n", 404, "Not Found"),
            "unknown method": (b"DELETE /v1/origins/local HTTP/1.1\r\nHost: x\r\n\r\n", 405, "Not Allowed"),
            "adding an origin": (b"POST /v1/origins HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 405, ""),
            "unknown origin": (b"POST /v1/origins/%2E%2E/rescan HTTP/1.1\r\nHost: x\r\n\r\n", 404,
                               "no origin '..'"),
        }
        for name, (request, expected, detail) in cases.items():
            code, reply = send(path, request)
            assert code == expected, (name, code, reply[:300])
            if detail:
                assert detail in str(json.loads(reply)["detail"]), (name, reply[:300])

        # clients that hang up in the middle of a stream: the events feed, a rescan
        with raw(path) as conn:
            conn.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer(conn)[0] == 200
            deadline = time.monotonic() + 5
            while status.get("/v1/status")["events"]["subscribers"] == subscribers:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        write_wav(lib / "take9.wav", 64 * 1024, seed=9)
        with raw(path) as conn:
            conn.sendall(b"POST /v1/origins/local/rescan HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer(conn)[0] == 200
        deadline = time.monotonic() + 10
        while (status.get("/v1/status")["events"]["subscribers"] != subscribers
               or status.get("/v1/status")["sync"]["running"]):
            assert time.monotonic() < deadline, "a hung-up stream left something behind"
            time.sleep(0.05)
        assert "take9.wav" in mounted_tracks(mounted.mountpoint)  # the rescan went on without its client

        # the half-sent requests: the body is answered 408, the head is dropped
        assert answer(half_body)[0] == 408
        assert answer(half_head) == (None, b"")
        assert time.monotonic() - stalled_at < IDLE_TIMEOUT + 10
        for conn in idle[:10]:  # the idle ones were dropped too, without a word
            assert conn.recv(1) == b""
        watch.halt.set()
        watch.join(10)

        assert mounted.alive() and not watch.errors, watch.errors
        assert status.get("/v1/status")["state"] == "ready"
        for timed in (watch.status, watch.read, watch.listing):
            print(f"\n{timed.summary()}")
        assert max(watch.status.ms) <= STATUS_BOUND * 1000, watch.status.summary()
        catalogue = requirement_catalogue
        assert watch.read.p(99) <= catalogue["NFR-1.3"].maximum + catalogue["NFR-1.4"].maximum, \
            watch.read.summary()
        assert watch.listing.p(99) <= catalogue["NFR-1.2"].maximum, watch.listing.summary()
    assert "Traceback" not in mounted.log_text()


@pytest.mark.req("FAULT-33")
def test_f33_there_is_no_route_that_runs_commands_or_widens_access(sample_mount):
    with ControlClient.for_mount(sample_mount.state_dir, sample_mount.mountpoint) as api:
        described = api.get("/openapi.json")
    routes = {path: set(methods) for path, methods in described["paths"].items()}
    assert routes == ROUTES
    schemas = described["components"]["schemas"]
    bodies = {name: set(schemas[name]["properties"])
              for name in ("ShutdownBody", "ClearBody", "CollectionBody", "PrefetchBody")}
    assert bodies == {"ShutdownBody": {"force", "drain_timeout_ms"}, "ClearBody": {"origin", "tier", "dry_run"},
                      "CollectionBody": {"name", "query"}, "PrefetchBody": {"paths", "query", "strategy"}}
    assert all(schemas[name]["additionalProperties"] is False for name in bodies)
    parameters = {p["name"] for item in described["paths"].values() for operation in item.values()
                  for p in operation.get("parameters", [])}
    assert parameters == {"origin_id", "type", "origin", "q", "limit", "offset", "fields", "name"}


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                  max_size=4), max_leaves=10)
TARGETS = [("GET", "/v1/status"), ("GET", "/v1/cache"), ("POST", "/v1/cache/clear"), ("GET", "/v1/origins"),
           ("GET", "/v1/origins/{}"), ("POST", "/v1/origins/{}/rescan"), ("GET", "/v1/events"),
           ("GET", "/metrics"), ("GET", "/v1/search"), ("GET", "/v1/search/stream"), ("GET", "/v1/collections"),
           ("POST", "/v1/collections"), ("DELETE", "/v1/collections/{}"), ("POST", "/v1/prefetch"),
           ("GET", "/v1/pins"), ("POST", "/v1/pins"), ("POST", "/v1/pins/remove"),
           ("GET", "/v1/catalog"), ("POST", "/v1/catalog/poll"),
           ("PUT", "/v1/status"), ("POST", "/v1/{}"), ("GET", "/{}")]


@pytest.mark.req("FAULT-33")
def test_f33_fuzzed_requests_get_answers_never_a_failure(tmp_path):
    """Random methods, paths, parameters and bodies (the shutdown route left out: any valid body
    stops the mount): every answer is a 2xx or a 4xx with a JSON detail, never a 5xx, and the
    daemon is the same afterwards."""
    lib = small_library(tmp_path / "lib", count=2)
    with mount_library(origin=lib, work=tmp_path / "work") as mounted, reachable(socket_of(mounted)) as where, \
            httpx.Client(transport=httpx.HTTPTransport(uds=where), base_url="http://musicfs", timeout=10) as http:

        @settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(target=st.sampled_from(TARGETS), word=st.text(max_size=30),
               params=st.dictionaries(st.sampled_from(["type", "origin", "force", "x", "dry_run"]),
                                      st.text(max_size=40) | st.lists(st.text(max_size=15), max_size=5),
                                      max_size=3),
               body=st.none() | JSONISH | st.binary(max_size=200))
        def ask(target, word, params, body):
            method, template = target
            url = template.format(quote(word, safe="") or "x")
            assume(unquote(url).rstrip("/") != "/v1/shutdown")
            content = (body if isinstance(body, bytes) else json.dumps(body).encode()) if body is not None else None
            request = http.build_request(method, url, params=params, content=content,
                                         headers={"content-type": "application/json"})
            response = http.send(request, stream=True)
            try:
                if response.status_code == 200 and url == "/v1/events":
                    return  # a feed: it streams until the client hangs up, which this does now
                response.read()
                assert response.status_code < 500, (method, url, params, body, response.text[:300])
                if response.status_code >= 400:
                    assert "detail" in response.json(), response.text[:300]
            finally:
                response.close()

        ask()
        assert http.get("/v1/status").json()["state"] in ("ready", "syncing")
        assert mounted.alive()
    assert "Traceback" not in mounted.log_text()


@pytest.mark.req("FAULT-33")
def test_f33_numbers_json_answers_cannot_carry_are_a_422_not_an_internal_error(tmp_path):
    """Python's JSON (and so many clients) writes Infinity and NaN; a body holding them is refused
    as any bad body is, with what was wrong, the value shown as text."""
    lib = small_library(tmp_path / "lib", count=1)
    with mount_library(origin=lib, work=tmp_path / "work") as mounted, reachable(socket_of(mounted)) as where, \
            httpx.Client(transport=httpx.HTTPTransport(uds=where), base_url="http://musicfs", timeout=10) as http:
        for body in (b"Infinity", b'{"dry_run": NaN}', b'{"origin": -Infinity}', b"[1e999]"):
            response = http.post("/v1/cache/clear", content=body, headers={"content-type": "application/json"})
            assert response.status_code == 422, (body, response.status_code, response.text[:300])
            assert response.json()["detail"], body
        assert http.get("/v1/status").json()["state"] in ("ready", "syncing")
        assert mounted.alive()
    assert "Traceback" not in mounted.log_text()


@pytest.mark.req("FAULT-33")
def test_f33_a_request_answered_before_its_body_arrived_leaves_the_connection_usable(tmp_path):
    """A route that needs no body (a GET sent with one, here also a 404) is not answered before
    its body is in: answering early made the server drop the kept-alive connection, and a client
    already sending its next request on it got a reset instead of an answer."""
    lib = small_library(tmp_path / "lib", count=1)
    with mount_library(origin=lib, work=tmp_path / "work") as mounted, raw(socket_of(mounted)) as conn:
        conn.sendall(b"GET /v1/events?origin=nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        time.sleep(0.5)  # the head alone, long enough for any early answer to be sent
        try:
            conn.sendall(b"{}")
            first = answer(conn)
            conn.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            second = answer(conn)
        except (BrokenPipeError, ConnectionResetError) as gone:
            pytest.fail(f"the connection was dropped after the first answer: {gone!r}")
        assert first[0] == 404 and b"nowhere" in first[1], first
        assert second[0] == 200 and json.loads(second[1])["state"] in ("ready", "syncing"), second
    assert "Traceback" not in mounted.log_text()
