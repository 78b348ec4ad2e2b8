"""The control API of a real mount, over its Unix socket: status, shutdown, cache, origins (B2-7).

Each test talks to the daemon the way the CLI does (musicfs.control.client)
and checks the answer against what the mount itself shows.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from chaos.checks import assert_exact
from chaos.s3lab import s3_lab
from conformance.expected import sha256_of
from fixtures.bigfile import write_wav
from musicfs import daemon
from musicfs.control.client import ControlClient, ControlError
from musicfs.store.inspect import cached_files
from tests.harness import NO_PREFETCH, mount_library, mount_status, mounted_tracks, settled
from tests.s3server import aws_env


def client_of(mounted) -> ControlClient:
    return ControlClient.for_mount(mounted.state_dir, mounted.mountpoint)


@pytest.mark.req("B2-7")
def test_status_over_the_socket_matches_the_mount(sample_mount, good_files):
    info = daemon.read_pidfile(daemon.RunFiles.for_mountpoint(sample_mount.state_dir, sample_mount.mountpoint))
    sock = Path(info["socket"])
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    with client_of(sample_mount) as api:
        status = api.get("/v1/status")
    assert status["state"] == "ready" and status["pid"] == sample_mount.pid
    assert status["mountpoint"] == str(daemon.canonical(sample_mount.mountpoint))
    assert status["version"] and status["uptime_seconds"] > 0
    assert status["index"]["tracks"] == len(good_files)
    assert status["fuse_ops_total"] > 0 and status["open_handles"] == 0
    from_file = mount_status(sample_mount.mountpoint)["index"]  # one status, two doors
    assert {k: v for k, v in status["index"].items() if k != "age_seconds"} == \
        {k: v for k, v in from_file.items() if k != "age_seconds"}


@pytest.mark.req("B2-7")
def test_origins_and_errors_say_what_was_wrong(sample_mount, good_files):
    with client_of(sample_mount) as api:
        (origin,) = api.get("/v1/origins")
        assert origin["state"] == "healthy" and origin["tracks"] == len(good_files)
        assert origin["bytes"] == sum(f["size"] for f in good_files) and origin["last_sync"]
        one = api.get(f"/v1/origins/{origin['id']}")
        assert one["id"] == origin["id"] and one["tracks"] == origin["tracks"]
        with pytest.raises(ControlError, match=r"404.*no origin 'nope'"):
            api.get("/v1/origins/nope")
        with pytest.raises(ControlError, match=r"404"):
            api.get("/v1/no/such/route")
        with pytest.raises(ControlError, match=r"400.*no cache tier 'metadata"):
            api.post("/v1/cache/clear", {"tier": "metadata", "dry_run": True})
        with pytest.raises(ControlError, match=r"422.*dry_run"):
            api.post("/v1/cache/clear", {"dry_run": "perhaps"})
        with pytest.raises(ControlError, match=r"422.*now: Extra inputs are not permitted"):
            api.post("/v1/shutdown", {"force": False, "now": True})
    assert sample_mount.alive() and mount_status(sample_mount.mountpoint)["state"] == "ready"


def two_origins(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """Folders "a" and "b", three takes each; a.wav in a is b's shared.wav too (same bytes)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, seed in ((a, 10), (b, 20)):
        folder.mkdir()
        for i in range(3):
            write_wav(folder / f"{folder.name}{i}.wav", 2 * 1024 * 1024, seed=seed + i)
    shutil.copyfile(a / "a0.wav", b / "shared.wav")
    expected = {p.name: sha256_of(p) for p in (*a.iterdir(), *b.iterdir())}
    return a, b, expected


@pytest.mark.req("B2-7", "NFR-5.2")
def test_cache_clear_removes_only_what_was_asked_and_never_an_open_file(tmp_path):
    a, b, expected = two_origins(tmp_path)
    config = tmp_path / "musicfs.toml"
    config.write_text(f'[[origins]]\nid = "a"\ntype = "local"\npath = "{a}"\n\n'
                      f'[[origins]]\nid = "b"\ntype = "local"\npath = "{b}"\n')
    with mount_library(config=config, work=tmp_path / "work", extra_args=NO_PREFETCH) as mounted, \
            client_of(mounted) as api:
        tracks = mounted_tracks(mounted.mountpoint)
        for real, path in tracks.items():
            assert_exact(expected, path, real)
        settled(mounted.mountpoint)
        before = api.get("/v1/cache")
        assert before["manifests"] == 7 and before["tiers"]["chunks"]["manifests"] == 7

        dry = api.post("/v1/cache/clear", {"origin": "a", "dry_run": True})
        assert dry["dry_run"] and dry["manifests"] == 3 and dry["bytes_freed"] == 0
        assert api.get("/v1/cache")["chunks"] == before["chunks"], "a dry run removed something"

        with open(tracks["a1.wav"], "rb") as held:  # a file being read is never cleared
            held.read(1024)
            done = api.post("/v1/cache/clear", {"origin": "a"})
            assert done["manifests"] == 2 and done["bytes_freed"] > 0
            assert done["entries"] == done["manifests"] + done["chunks"]
            assert held.read() == (a / "a1.wav").read_bytes()[1024:]
        left = {(origin, real) for origin, real, _size, _complete in cached_files(mounted.cache_dir)}
        assert left == {("a", "a1.wav"), ("b", "b0.wav"), ("b", "b1.wav"), ("b", "b2.wav"),
                        ("b", "shared.wav")}
        status = mount_status(mounted.mountpoint)
        assert status["cache"]["missing"] == 0 and status["reader"]["origin_requests"] > 0
        for real, path in tracks.items():  # b's copy of a0 still reads from its chunks
            assert_exact(expected, path, real)
        settled(mounted.mountpoint)  # the reads above fetched a's files again: their maps count now
        held = api.get("/v1/cache")["manifests"]
        assert held >= 5
        everything = api.post("/v1/cache/clear", {})
        assert everything["manifests"] == held and api.get("/v1/cache")["chunks"] == 0
    assert mounted.log_text().count("Traceback") == 0


@pytest.mark.req("B2-7", "FS-5")
def test_shutdown_lets_reads_in_flight_finish_then_unmounts_cleanly(tmp_path):
    """A read is waiting on its origin when the API asks for a shutdown: it gets all its bytes,
    then the filesystem unmounts and the daemon exits 0; the socket goes with it."""
    data = {"take.wav": write_wav(tmp_path / "take.wav", 3 * 1024 * 1024, seed=5).read_bytes()}
    with s3_lab(tmp_path, data) as lab:
        config = lab.config(tmp_path / "musicfs.toml", read_timeout=10.0)
        with mount_library(config=config, work=tmp_path / "work", env=aws_env(tmp_path / "aws")) as mounted:
            track = mounted_tracks(mounted.mountpoint)["take.wav"]
            socket = Path(daemon.read_pidfile(daemon.RunFiles.for_mountpoint(
                mounted.state_dir, mounted.mountpoint))["socket"])
            lab.proxy.hold(method="GET", path_prefix=lab.object_path("take.wav"))
            result: dict = {}

            def read() -> None:
                try:
                    with open(track, "rb") as f:
                        result["data"] = f.read()
                except OSError as exc:
                    result["error"] = exc

            reader = threading.Thread(target=read)
            reader.start()
            lab.proxy.wait_held(1)
            with ControlClient(socket) as api:
                answer = api.post("/v1/shutdown", {"drain_timeout_ms": 8000})
                assert answer == {"state": "unmounting", "force": False, "drain_timeout_ms": 8000}
                assert api.get("/v1/status")["state"] == "unmounting"
            time.sleep(0.5)
            assert daemon.is_mounted(mounted.mountpoint), "unmounted with a read in flight"
            lab.proxy.release()
            reader.join(15)
            assert result.get("data") == data["take.wav"], result.get("error")
            assert mounted.proc.wait(15) == 0
            assert not daemon.is_mounted(mounted.mountpoint)
            assert not socket.exists()


@pytest.mark.req("NFR-4.1")
def test_the_api_costs_nothing_until_it_is_used(sample_library, tmp_path, capsys):
    """The socket is there at once, FastAPI is loaded by the first request (in a worker thread, so
    the mount answers meanwhile); the memory that costs is printed for the requirement report."""
    with mount_library(origin=sample_library[0], work=tmp_path / "work") as mounted:
        before = mounted.rss_mb()
        with client_of(mounted) as api:
            api.get("/v1/status")
            assert api.get("/v1/status")["control"]["api_loaded"] is True
        after = mounted.rss_mb()
        with capsys.disabled():
            print(f"\ncontrol API: daemon RSS {before:.1f} MB before its first request, {after:.1f} MB after")
        assert before < after
        os.stat(mounted.mountpoint)
