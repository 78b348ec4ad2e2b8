"""The SFTP origin, against Debian's OpenSSH ``sshd`` on a loopback port.

It passes the origin contract unchanged, writes included; beyond that these
tests check what an unattended network mount has to get right: host keys are
checked strictly, keys are refused cleanly, broken connections are replaced,
many calls share a few connections, a dead or hung server fails within the
timeout, and a put that fails midway leaves the old file and no temporary one.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from musicfs.errors import ConfigError, NotFound, OriginUnavailable
from musicfs.origins.base import create
from musicfs.origins.sftp import SftpOrigin
from musicfs.origins.sftppool import SHARE
from musicfs.origins.sftpwire import POSIX_RENAME, SAFE_WRITE_SIZE
from musicfs.testing.origin_contract import PAGE_FILES, OriginContract, add_hostile_links
from musicfs.testing.write_contract import BIG, MiB, Source
from tests.sshserver import SshServer, ssh_server


@pytest.fixture(scope="module")
def server():
    """One sshd for the tests that leave it running as they found it."""
    with ssh_server() as running:
        yield running


@pytest.fixture
def own_server():
    """A private sshd, for tests that drop its connections, freeze it or stop it."""
    with ssh_server() as running:
        yield running


@pytest.fixture
def connect():
    """``connect(server, **options)``: an SftpOrigin built from config options; all closed afterwards."""
    origins = []

    def make(server: SshServer, **overrides) -> SftpOrigin:
        origin = create("nas", "sftp", server.options(**overrides))
        origins.append(origin)
        return origin

    yield make
    for origin in origins:
        origin.close()


def populate(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


class TestSftpOrigin(OriginContract):
    @pytest.fixture
    def make_origin(self, server, tmp_path):
        def make(files):
            root = populate(tmp_path / "served", files)
            return SftpOrigin.from_options("nas", server.options(path=str(root), page_size=10))
        return make


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- host keys and client keys ---------------------------------------------------------------------

def fingerprint(public_key: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(public_key)], check=True, capture_output=True, text=True)
    return out.stdout.split()[1]  # "256 SHA256:... comment (ED25519)"


def test_an_unknown_host_key_is_refused(server, connect, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    origin = connect(server, known_hosts=str(empty))
    with pytest.raises(OriginUnavailable) as caught:
        origin.health()
    message = str(caught.value)
    assert "host key" in message and "not in known_hosts" in message
    assert fingerprint(server.dir / "ssh_host_ed25519_key.pub") in message
    assert f"[127.0.0.1]:{server.port}" in message
    assert origin.connections_opened == 0
    assert empty.read_text() == ""  # nothing was learned or written back


def test_a_changed_host_key_is_refused(server, connect, tmp_path):
    impostor = (server.other_key_file.with_suffix(".pub")).read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {impostor[0]} {impostor[1]}\n")
    with pytest.raises(OriginUnavailable, match="host key .* has CHANGED") as caught:
        connect(server, known_hosts=str(known)).stat("anything")
    assert fingerprint(server.dir / "ssh_host_ed25519_key.pub") in str(caught.value)


def test_a_missing_known_hosts_file_is_a_clear_error(server, connect, tmp_path):
    with pytest.raises(OriginUnavailable, match="known_hosts file .* does not exist"):
        connect(server, known_hosts=str(tmp_path / "nope")).health()


def test_a_key_the_server_does_not_accept_is_refused(server, connect):
    with pytest.raises(OriginUnavailable, match="refused key file") as caught:
        connect(server, key_file=str(server.other_key_file)).health()
    assert server.other_key_file.read_text().splitlines()[1] not in str(caught.value)


def test_an_rsa_key_works(server, connect, tmp_path):
    root = populate(tmp_path / "rsa", {"x.flac": b"rsa bytes"})
    origin = connect(server, key_file=str(server.rsa_key_file), path=str(root))
    origin.health()
    assert origin.read_range("x.flac", 4, 100) == b"bytes"


@pytest.mark.parametrize("kind", ["public", "encrypted", "missing"])
def test_an_unusable_key_file_is_reported_without_its_contents(server, connect, tmp_path, kind):
    key = tmp_path / "key"
    if kind == "public":
        key.write_text(server.key_file.with_suffix(".pub").read_text())
    elif kind == "encrypted":
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret phrase", "-f", str(key)],
                       check=True, capture_output=True)
    with pytest.raises(OriginUnavailable, match="key file") as caught:
        connect(server, key_file=str(key)).health()
    message = str(caught.value)
    assert str(key) in message
    if key.exists():
        body = [line for line in key.read_text().splitlines() if line and not line.startswith("-----")]
        assert not any(part in message for line in body for part in line.split() if len(part) > 20)


# -- configuration ---------------------------------------------------------------------------------

def test_the_kind_is_registered():
    origin = create("nas", "sftp", {"host": "127.0.0.1", "user": "music", "key_file": "k"})
    assert type(origin) is SftpOrigin and origin.kind == "sftp"
    assert SftpOrigin.required == {"host", "user", "key_file"}


@pytest.mark.parametrize(("change", "complaint"), [
    ({"host": None}, "needs 'host'"),
    ({"user": 7}, "user must be a string"),
    ({"key_file": ""}, "key_file must not be empty"),
    ({"port": "22"}, "port must be an integer"),
    ({"port": 70000}, "port must be between 1 and 65535"),
    ({"port": True}, "port must be an integer"),
    ({"pool_size": 0}, "pool_size must be between 1"),
    ({"timeout": -1}, "timeout must be more than 0"),
    ({"timeout": "5s"}, "timeout must be a number"),
    ({"page_size": 0}, "page_size must be at least 1"),
    ({"path": ["a"]}, "path must be a string"),
    ({"password": "hunter2"}, "unknown option"),
])
def test_bad_options_are_config_errors(change, complaint):
    options = {"host": "127.0.0.1", "user": "music", "key_file": "~/.ssh/id_ed25519"}
    options.update({k: v for k, v in change.items() if v is not None})
    for key in [k for k, v in change.items() if v is None]:
        del options[key]
    with pytest.raises(ConfigError, match=complaint) as caught:
        create("nas", "sftp", options)
    assert "'nas'" in str(caught.value)


def test_options_are_not_contacted_and_location_holds_no_secrets(server, connect):
    origin = connect(server, path="/srv/music", pool_size=2, timeout=3, page_size=50)
    assert origin.location == f"sftp://{server.user}@127.0.0.1:{server.port}/srv/music"
    assert origin.connections_opened == 0
    default = create("nas", "sftp", {"host": "::1", "user": "u", "key_file": "k"})
    assert default.location == "sftp://u@[::1]:22/~" and default.port == 22


def test_without_a_path_the_root_is_the_login_directory(server, connect):
    origin = connect(server, path="")
    origin.health()
    assert origin.location.endswith("/~")
    with pytest.raises(NotFound):
        origin.stat("surely/not/here.flac")


# -- files, listings, reads -----------------------------------------------------------------------

def test_a_missing_root_is_unavailable_not_missing(server, connect, tmp_path):
    origin = connect(server, path=str(tmp_path / "gone"))
    with pytest.raises(OriginUnavailable, match="root folder .* is missing"):
        origin.health()
    with pytest.raises(OriginUnavailable, match="is missing"):
        origin.stat("x.flac")
    with pytest.raises(OriginUnavailable, match="is missing"):
        origin.list_page("")


def test_mtime_is_whole_seconds_and_pages_are_page_size(server, connect, tmp_path):
    files = {f"many/t{i:02d}.flac": bytes([i]) * i for i in range(PAGE_FILES)}
    root = populate(tmp_path / "lib", files)
    os.utime(root / "many/t05.flac", ns=(1_700_000_000_123_456_789, 1_700_000_000_987_654_321))
    origin = connect(server, path=str(root), page_size=10)
    assert origin.stat("many/t05.flac").mtime_ns == 1_700_000_000_000_000_000
    tokens, token, names = [], None, []
    while True:
        page = origin.list_page("many", token)  # without the trailing '/' too
        names += [e.path for e in page.files]
        token = page.next_token
        tokens.append(token)
        if token is None:
            break
    assert tokens == ["10", "20", None]
    assert names == sorted(files)


def test_links_to_files_are_files_links_to_folders_are_skipped(server, connect, tmp_path):
    root = populate(tmp_path / "lib", {"real/a.flac": b"abc"})
    (root / "link.flac").symlink_to(root / "real/a.flac")
    (root / "dirlink").symlink_to(root / "real")
    (root / "dangling.flac").symlink_to(root / "nowhere.flac")
    page = connect(server, path=str(root)).list_page("")
    assert [(e.path, e.size) for e in page.files] == [("link.flac", 3)]
    assert page.dirs == ["real"]


@pytest.mark.req("FAULT-31")
def test_links_out_of_the_root_are_not_listed_nor_read_and_loops_end(server, connect, tmp_path):
    """The server follows any link for us: the origin asks where each leads and refuses the outside."""
    root = populate(tmp_path / "lib", {"real/a.flac": b"abc"})
    outside = populate(tmp_path / "outside", {"secret.flac": b"secret!"})
    add_hostile_links(root, outside)
    origin = connect(server, path=str(root))
    page = origin.list_page("")
    assert [(e.path, e.size) for e in page.files] == [("inside.flac", 3)]
    assert page.dirs == ["real"]
    assert [e.path for e in origin.walk()] == ["inside.flac", "real/a.flac"]
    assert origin.read_range("inside.flac", 0, 10) == b"abc"
    for path in ("abs.flac", "rel.flac", "chain.flac", "outdir/secret.flac"):
        with pytest.raises(NotFound):
            origin.read_range(path, 0, 10)
        with pytest.raises(NotFound):
            origin.stat(path)
    with pytest.raises((NotFound, OriginUnavailable)):
        origin.read_range("loop-a.flac", 0, 10)


@pytest.mark.req("FAULT-31")
def test_names_no_folder_can_hold_are_dropped_from_listings(server, connect, tmp_path, monkeypatch, caplog):
    """What a hostile server might list ('..', 'a/../../x', NUL) never becomes a path."""
    from musicfs.origins import sftp as sftp_module

    origin = connect(server, path=str(populate(tmp_path / "lib", {"real.flac": b"abc"})))
    real_listdir = sftp_module.SftpChannel.listdir

    def hostile(self, path, deadline):
        entries = real_listdir(self, path, deadline)
        attrs = entries[0][1]
        return entries + [(name, attrs) for name in ("..", ".", "", "../../etc/passwd", "a/b.flac", "x\x00y.flac")]

    monkeypatch.setattr(sftp_module.SftpChannel, "listdir", hostile)
    page = origin.list_page("")
    assert [e.path for e in page.files] == ["real.flac"] and page.dirs == []
    assert "names no folder can hold" in caplog.text
    with pytest.raises(ValueError):
        origin.read_range("../../etc/passwd", 0, 10)


def test_large_reads_at_odd_offsets(server, connect, tmp_path):
    data = random.Random(7).randbytes(3 * 1024 * 1024 + 17)
    origin = connect(server, path=str(populate(tmp_path / "lib", {"big.flac": data})))
    for offset, size in [(0, len(data)), (12_345, 1 << 20), (len(data) - 70_000, 1 << 20), (1, 32_768)]:
        assert origin.read_range("big.flac", offset, size) == data[offset:offset + size]


def ciphers(origin: SftpOrigin) -> tuple[str, str]:
    transport = origin._pool.connections[0].client.get_transport()
    return transport.local_cipher, transport.remote_cipher


def test_openssh_is_read_through_an_aead_cipher(server, connect, tmp_path):
    """AES-GCM is chosen where the server has it: no separate per-packet HMAC in Python (ASYNC-2)."""
    data = random.Random(8).randbytes(300_000)
    origin = connect(server, path=str(populate(tmp_path / "lib", {"a.flac": data})))
    assert origin.read_range("a.flac", 0, len(data)) == data
    assert ciphers(origin) == ("aes128-gcm@openssh.com", "aes128-gcm@openssh.com")


def test_a_server_without_aead_ciphers_is_read_all_the_same(connect, tmp_path):
    data = random.Random(9).randbytes(300_000)
    with ssh_server(extra=["Ciphers aes256-ctr,aes128-ctr"]) as older:
        origin = connect(older, path=str(populate(tmp_path / "lib", {"a.flac": data})))
        assert origin.read_range("a.flac", 0, len(data)) == data
        assert ciphers(origin) == ("aes128-ctr", "aes128-ctr")
        origin.close()


def test_paths_cannot_climb_out(server, connect):
    with pytest.raises(ValueError):
        connect(server).stat("../etc/passwd")


# -- the pool --------------------------------------------------------------------------------------

def test_a_closed_transport_is_replaced(server, connect, tmp_path):
    origin = connect(server, path=str(populate(tmp_path / "lib", {"a.flac": b"0123456789"})), pool_size=1)
    assert origin.read_range("a.flac", 2, 3) == b"234"
    origin._pool.connections[0].client.get_transport().close()
    try:
        origin.read_range("a.flac", 0, 1)
    except OriginUnavailable:
        pass  # the caller's retry deals with this one; the next call must work
    assert origin.read_range("a.flac", 5, 5) == b"56789"
    assert origin.connections_opened == 2


def test_connections_dropped_by_the_server_are_replaced(own_server, connect, tmp_path):
    origin = connect(own_server, path=str(populate(tmp_path / "lib", {"a.flac": b"0123456789"})),
                     pool_size=2)
    origin.health()
    assert own_server.drop_connections() > 0
    try:
        origin.stat("a.flac")
    except OriginUnavailable as exc:
        assert f"127.0.0.1:{own_server.port}" in str(exc)
    assert origin.read_range("a.flac", 0, 4) == b"0123"
    assert origin.connections_opened == 2


def test_concurrent_reads_are_right_and_bounded_by_the_pool(own_server, connect, tmp_path):
    rng = random.Random(3)
    files = {f"t{i}.flac": rng.randbytes(200_000 + i) for i in range(4)}
    origin = connect(own_server, path=str(populate(tmp_path / "lib", files)), pool_size=3)
    errors, peak, done = [], [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], own_server.connections())
            time.sleep(0.005)

    def reader(seed: int):
        local = random.Random(seed)
        try:
            for _ in range(25):
                name = local.choice(sorted(files))
                offset, size = local.randrange(0, 210_000), local.choice([1, 4096, 65_536, 150_000])
                if origin.read_range(name, offset, size) != files[name][offset:offset + size]:
                    errors.append((name, offset, size))
        except Exception as exc:  # reported by the assertion below, not swallowed
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    assert errors == []
    assert 1 <= origin.connections_opened <= 3
    assert 1 <= peak[0] <= 3
    origin.close()
    assert wait_until(lambda: own_server.connections() == 0), "close() left connections open"


def test_many_calls_at_once_share_few_connections(own_server, connect, tmp_path):
    """Fifty reads and stats at once over a pool of two: every answer right, never a third connection."""
    rng = random.Random(5)
    files = {f"t{i:02d}.flac": rng.randbytes(40_000 + 1000 * i) for i in range(50)}
    origin = connect(own_server, path=str(populate(tmp_path / "lib", files)), pool_size=2)
    gate = threading.Barrier(len(files))
    results: dict[str, object] = {}

    def call(name: str) -> None:
        gate.wait()
        try:
            results[name] = (origin.read_range(name, 1000, 200_000), origin.stat(name).size)
        except Exception as exc:  # reported by the assertion below, not swallowed
            results[name] = exc

    threads = [threading.Thread(target=call, args=(name,)) for name in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {name: (data[1000:], len(data)) for name, data in files.items()}
    assert 1 <= origin.connections_opened <= 2
    assert own_server.connections() <= 2


def test_a_busy_connection_gets_company_in_the_background(own_server, connect, tmp_path):
    """Once one connection carries SHARE calls, a second is opened without holding any call up."""
    files = {f"t{i:02d}.flac": bytes([i]) * 50_000 for i in range(SHARE + 4)}
    origin = connect(own_server, path=str(populate(tmp_path / "lib", files)), pool_size=2, timeout=5)
    origin.health()
    results: dict[str, bytes] = {}
    with own_server.frozen():  # nothing answers: the calls pile up on the one connection
        threads = [threading.Thread(target=lambda n=name: results.__setitem__(n, origin.read_range(n, 0, 60_000)))
                   for name in files]
        for thread in threads:
            thread.start()
        assert wait_until(lambda: origin._pool.connections[0].users == len(files))
    for thread in threads:
        thread.join(10)
    assert results == files
    assert wait_until(lambda: origin.connections_opened == 2 and len(origin._pool.connections) == 2)


def test_callers_wait_for_a_connection_being_opened_within_the_timeout(own_server, connect):
    """While the only connection is being opened (the server hangs), callers wait for it, boundedly."""
    origin = connect(own_server, pool_size=1, timeout=1)
    with own_server.frozen():
        outcomes: list[tuple[str, float]] = []

        def probe():
            started = time.monotonic()
            try:
                origin.health()
                outcomes.append(("ok", time.monotonic() - started))
            except OriginUnavailable as exc:
                outcomes.append((str(exc), time.monotonic() - started))

        threads = [threading.Thread(target=probe) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert len(outcomes) == 3
    assert all(message != "ok" and seconds < 2.5 for message, seconds in outcomes), outcomes
    origin.health()  # the server is back
    assert origin.connections_opened == 1


# -- a server that is gone or hung -----------------------------------------------------------------

def test_a_stopped_server_fails_health_within_the_timeout(own_server, connect):
    origin = connect(own_server, timeout=2)
    origin.health()
    own_server.stop()
    for probe in (origin, connect(own_server, timeout=2)):  # a pooled connection, then none
        started = time.monotonic()
        with pytest.raises(OriginUnavailable, match=f"127.0.0.1:{own_server.port}"):
            probe.health()
        assert time.monotonic() - started < 2.5


def test_a_hung_server_fails_health_within_the_timeout(own_server, connect):
    pooled, fresh = connect(own_server, timeout=1), connect(own_server, timeout=1)
    pooled.health()
    with own_server.frozen():
        for probe in (pooled, fresh):
            started = time.monotonic()
            with pytest.raises(OriginUnavailable, match="no answer within 1 s"):
                probe.health()
            assert time.monotonic() - started < 2.5
    pooled.health()  # the server is back: the timed-out connection was replaced
    assert pooled.connections_opened == 2


# -- writes ----------------------------------------------------------------------------------------

def test_a_put_uses_the_servers_largest_writes(server, connect, tmp_path):
    root = populate(tmp_path / "lib", {"a.flac": b"a"})
    origin = connect(server, path=str(root), pool_size=1)
    data = random.Random(30).randbytes(BIG)
    origin.put("index/snapshot.db", Source(data))
    assert (root / "index/snapshot.db").read_bytes() == data
    assert origin._pool.connections[0].sftp.write_size > SAFE_WRITE_SIZE  # limits@openssh.com was read


def test_a_connection_dropped_midway_fails_the_put_and_leaves_nothing(own_server, connect, tmp_path):
    """The server's end goes away mid-put: the old file stays, the temporary file is removed over a
    new connection, and the source is rewound for the retry."""
    root = populate(tmp_path / "lib", {"index/snapshot.db": b"old snapshot"})
    origin = connect(own_server, path=str(root))
    source = Source(random.Random(31).randbytes(BIG), during=lambda _n: own_server.drop_connections(),
                    during_at=4 * MiB)
    with pytest.raises(OriginUnavailable, match="put 'index/snapshot.db' failed: the connection broke"):
        origin.put("index/snapshot.db", source)
    assert source.tell() == 0
    assert os.listdir(root / "index") == ["snapshot.db"]
    assert (root / "index/snapshot.db").read_bytes() == b"old snapshot"
    assert origin.connections_opened == 2
    origin.put("index/snapshot.db", source)  # called again, it stores all of it
    assert (root / "index/snapshot.db").read_bytes() == source.data


def test_a_server_that_stops_answering_midway_fails_the_put_within_the_timeout(own_server, connect, tmp_path,
                                                                                caplog):
    """Frozen mid-put, the server stops reading and its window fills, so a send would block for ever:
    the put gives up after the timeout instead. Its temporary file cannot be removed while the server
    is frozen: that is logged, with the name."""
    root = populate(tmp_path / "lib", {"index/snapshot.db": b"old snapshot"})
    origin = connect(own_server, path=str(root), timeout=1)
    failed: list[BaseException] = []

    def put() -> None:
        try:
            origin.put("index/snapshot.db", source)
        except Exception as exc:  # checked below
            failed.append(exc)

    with contextlib.ExitStack() as stack:  # the server runs again when this ends, whatever happened
        source = Source(bytes(4 * BIG), during=lambda _n: stack.enter_context(own_server.frozen()),
                        during_at=2 * MiB)
        started = time.monotonic()
        thread = threading.Thread(target=put)
        thread.start()
        thread.join(10)
        elapsed = time.monotonic() - started
    thread.join(30)
    assert elapsed < 5, f"the put was still going after {elapsed:.1f} s"
    assert len(failed) == 1 and isinstance(failed[0], OriginUnavailable), failed
    assert "no answer within 1 s" in str(failed[0])
    assert (root / "index/snapshot.db").read_bytes() == b"old snapshot"
    leftovers = [name for name in os.listdir(root / "index") if name != "snapshot.db"]
    assert all(name in caplog.text and name.startswith(".") for name in leftovers)
    origin.put("index/snapshot.db", Source(b"new snapshot"))  # the server is back
    assert (root / "index/snapshot.db").read_bytes() == b"new snapshot"


def test_without_posix_rename_the_old_file_is_moved_aside_then_replaced(server, connect, tmp_path):
    """A server that does not offer posix-rename@openssh.com: SFTP's own rename, which will not replace
    a file, so the old one goes aside first; the file is whole either way and nothing is left."""
    root = populate(tmp_path / "lib", {"index/snapshot.db": b"old snapshot"})
    origin = connect(server, path=str(root), pool_size=1)
    origin.health()
    origin._pool.connections[0].sftp.extensions.pop(POSIX_RENAME)
    origin.put("index/snapshot.db", Source(b"new snapshot"))
    origin.put("index/pointer.json", Source(b"{}"))  # nothing to replace: one rename
    assert sorted(os.listdir(root / "index")) == ["pointer.json", "snapshot.db"]
    assert (root / "index/snapshot.db").read_bytes() == b"new snapshot"
    assert POSIX_RENAME not in origin._pool.connections[0].sftp.extensions  # the same connection did it


def test_a_server_that_refuses_writes_says_so(connect, tmp_path):
    """OpenSSH's internal-sftp -R serves files read-only: every write is refused, and said to be."""
    with ssh_server("-R") as server:
        root = populate(tmp_path / "lib", {"index/snapshot.db": b"old snapshot"})
        origin = connect(server, path=str(root))
        assert origin.read_range("index/snapshot.db", 0, 100) == b"old snapshot"
        for call in (lambda: origin.put("index/snapshot.db", Source(b"new")),
                     lambda: origin.put("new/folder/x.bin", Source(b"new")),
                     lambda: origin.remove("index/snapshot.db")):
            with pytest.raises(OriginUnavailable, match=f"permission denied: the server does not let "
                                                        f"'{server.user}' write there"):
                call()
        assert sorted(os.listdir(root)) == ["index"] and os.listdir(root / "index") == ["snapshot.db"]
        assert (root / "index/snapshot.db").read_bytes() == b"old snapshot"


def test_writes_follow_no_link_out_of_the_root(server, connect, tmp_path):
    """The server follows links for us: a put or remove through one leading out is refused, and no
    folder is made out there."""
    root = populate(tmp_path / "lib", {"real/a.flac": b"abc"})
    outside = populate(tmp_path / "outside", {"secret.flac": b"secret!"})
    add_hostile_links(root, outside)
    origin = connect(server, path=str(root))
    for path in ("outdir/x.bin", "outdir/new/x.bin", "abs.flac", "rel.flac", "chain.flac", "outdir/secret.flac"):
        with pytest.raises(ValueError, match="escapes the origin"):
            origin.put(path, Source(b"planted"))
        with pytest.raises(ValueError, match="escapes the origin"):
            origin.remove(path)
    assert sorted(os.listdir(outside)) == ["secret.flac"]
    assert (outside / "secret.flac").read_bytes() == b"secret!"
    assert not [name for name in os.listdir(root) if name.startswith(".")]
    origin.put("inside.flac", Source(b"a file now"))  # a link inside the root is replaced itself
    assert not (root / "inside.flac").is_symlink() and (root / "inside.flac").read_bytes() == b"a file now"
    assert (root / "real/a.flac").read_bytes() == b"abc"
