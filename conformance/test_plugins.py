"""Origin plugins on a real mount (PH-4.1): a package musicfs does not know, installed beside it,
found through its entry point, named in a config, serving a library of album archives.

The example plugin (``examples/musicfs-zip-origin``) is installed with pip into a folder of its
own that the daemon is given on ``PYTHONPATH``: the environment musicfs runs in is left as it was.
A package whose import fails is installed the same way: ``musicfs plugins`` names it and its
error, a library that uses it is refused with that error, and one that does not mounts as usual.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conformance.expected import sha256_of
from fixtures.media import short_track
from tests.harness import NO_PREFETCH, mount_library, mounted_tracks, musicfs_cmd, settled

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "musicfs-zip-origin"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """The example plugin installed (wheel built from its folder) into a folder of its own."""
    target = tmp_path_factory.mktemp("plugins")
    build = tmp_path_factory.mktemp("plugin-build")
    shutil.copytree(PLUGIN, build / "src", ignore=shutil.ignore_patterns("tests", "conftest.py", "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(build / "src")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return target


def broken_plugin(folder: Path) -> Path:
    """An installed package declaring an origin kind whose module fails to import."""
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / "broken_origin-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-origin\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[musicfs.origins]\nbroken = broken_origin:BrokenOrigin\n")
    (folder / "broken_origin.py").write_text("raise ImportError('needs libfoo, which is not installed')\n")
    return folder


def env_with(*paths: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join([*(str(p) for p in paths), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def plugins(env: dict) -> tuple[int, list[dict]]:
    done = subprocess.run(musicfs_cmd("plugins", "--json"), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    return done.returncode, json.loads(done.stdout)


def album_archives(folder: Path, work: Path) -> dict[str, bytes]:
    """Two albums as a music store sells them (one stored, one compressed), a loose track beside
    them; what each track's bytes are, by the path the origin shows."""
    made = {}
    for album, method in (("Stored", zipfile.ZIP_STORED), ("Deflated", zipfile.ZIP_DEFLATED)):
        tracks = work / album
        with zipfile.ZipFile(folder / f"A - {album}.zip", "w", method) as zf:
            for n in range(1, 4):
                track = short_track(tracks, f"{n:02d} Song.flac", "flac", 10 * len(made) + n, album=album,
                                    cover=None, seconds=3.0)
                zf.write(track, f"{n:02d} Song.flac")
                made[f"A - {album}/{n:02d} Song.flac"] = track.read_bytes()
    loose = short_track(folder, "Single.flac", "flac", 77, album="Single", cover=None)
    made["Single.flac"] = loose.read_bytes()
    return made


@pytest.mark.req("PH-4.1", "NFR-7.1")
def test_an_origin_plugin_from_another_package_serves_a_library_of_archives(plugin_path, tmp_path):
    env = env_with(plugin_path)
    code, listed = plugins(env)
    kinds = {item["name"]: item for item in listed}
    assert code == 0 and {"local", "s3", "sftp", "zip"} <= set(kinds), listed
    assert kinds["zip"]["package"] == "musicfs-zip-origin" and kinds["zip"]["version"] == "0.1.0"
    assert kinds["zip"]["loads"] and kinds["zip"]["target"] == "musicfs_zip_origin:ZipOrigin"
    assert kinds["local"]["package"] == "musicfs"  # the built-in kinds are found the same way

    folder = tmp_path / "purchases"
    folder.mkdir()
    made = album_archives(folder, tmp_path / "tracks")
    config = tmp_path / "musicfs.toml"
    config.write_text(f'[[origins]]\nid = "store"\ntype = "zip"\npath = "{folder}"\n')
    with mount_library(config=config, work=tmp_path / "work", env=env, extra_args=NO_PREFETCH) as mounted:
        tracks = mounted_tracks(mounted.mountpoint)
        assert set(tracks) == set(made), sorted(tracks)
        assert {p.parent.name for p in tracks.values()} >= {"Stored (2001) [FLAC]", "Deflated (2001) [FLAC]"}
        for real, path in tracks.items():  # stored members read in place, compressed ones inflated
            assert sha256_of(path) == sha256_of_bytes(made[real]), real
        settled(mounted.mountpoint)
        shutil.rmtree(folder)  # the archives gone: what was read plays from the cache
        for real, path in tracks.items():
            assert sha256_of(path) == sha256_of_bytes(made[real]), real
        assert mounted.alive()


def sha256_of_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.mark.req("PH-4.1")
def test_a_plugin_that_fails_to_load_is_named_and_costs_only_the_libraries_using_it(plugin_path, tmp_path):
    broken = broken_plugin(tmp_path / "broken")
    env = env_with(plugin_path, broken)
    code, listed = plugins(env)
    kinds = {item["name"]: item for item in listed}
    assert code == 1 and kinds["zip"]["loads"] and not kinds["broken"]["loads"]
    assert "broken-origin 0.3" in kinds["broken"]["error"] and "needs libfoo" in kinds["broken"]["error"]

    library = tmp_path / "music"
    short_track(library, "A/Album/01.flac", "flac", 1, album="Album", cover=None)
    uses = tmp_path / "uses.toml"
    uses.write_text(f'[[origins]]\nid = "x"\ntype = "broken"\npath = "{library}"\n')
    refused = subprocess.run(musicfs_cmd("--state-dir", str(tmp_path / "state"), "scan", "--config", str(uses)),
                             capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert refused.returncode == 2 and "origin type 'broken' (broken-origin 0.3)" in refused.stderr, refused.stderr
    assert "needs libfoo" in refused.stderr and "Traceback" not in refused.stderr
    with mount_library(origin=library, work=tmp_path / "work", env=env) as mounted:  # a library not using it
        assert len(mounted_tracks(mounted.mountpoint)) == 1
