"""Plugins on a real mount (G6): packages musicfs does not know, installed beside it, found through
their entry points. An origin (PH-4.1) named in a config serves a library of album archives; a
metadata source (META-1) gives the tags of a beets library; an audio format adds WavPack to the tree.

The example plugins (``examples/``) are installed with pip into a folder of their own that the
daemon is given on ``PYTHONPATH``: the environment musicfs runs in is left as it was. A package
whose import fails is installed the same way: ``musicfs plugins`` names it and its error, a
library that uses it is refused with that error, and one that does not mounts as usual; a format
that fails costs only its files.
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
from fixtures import images
from fixtures.audio import unavailable_formats
from fixtures.media import short_track
from tests.harness import NO_PREFETCH, mount_library, mounted_tracks, musicfs_cmd, scan, settled

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def install(name: str, tmp_path_factory) -> Path:
    """An example plugin installed (a wheel built from its folder) into a folder of its own."""
    target = tmp_path_factory.mktemp(name)
    build = tmp_path_factory.mktemp(f"{name}-build")
    shutil.copytree(EXAMPLES / name, build / "src", ignore=shutil.ignore_patterns("tests", "conftest.py",
                                                                                 "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(build / "src")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return target


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    return install("musicfs-zip-origin", tmp_path_factory)


def broken_plugin(folder: Path, group: str = "musicfs.origins", name: str = "broken",
                  module: str = "broken_origin", version: str = "0.3", needs: str = "libfoo") -> Path:
    """An installed package declaring a plugin (an origin kind) whose module fails to import."""
    folder.mkdir(parents=True, exist_ok=True)
    info = folder / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {module}:Plugin\n")
    (folder / f"{module}.py").write_text(f"raise ImportError('needs {needs}, which is not installed')\n")
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


@pytest.mark.req("PH-4.1", "NFR-7.1", "G6")
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


# -- a metadata plugin: tags from a beets library ---------------------------------------------------
def beet(beetsdir: Path, *args: str) -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "beet"), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "BEETSDIR": str(beetsdir)}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def tree_dirs(mountpoint: Path) -> set[str]:
    return {str(p.relative_to(mountpoint)) for p in mountpoint.glob("*/*") if p.is_dir()}


@pytest.mark.req("META-1", "G6")
def test_tags_from_a_beets_library_show_in_the_tree_and_follow_beet_modify(tmp_path_factory, tmp_path):
    """A library imported into beets as it is, then corrected in beets' database only (``beet modify
    -W``: no file is written): the mount shows beets' tags, and a second correction shows after a
    rescan; the files' bytes are the files' all along."""
    from conformance.test_control_cli import ok_text

    plugin = install("musicfs-beets-metadata", tmp_path_factory)
    env = env_with(plugin)
    code, listed = plugins(env)
    found = {(item["group"], item["name"]): item for item in listed}
    assert code == 0 and found[("musicfs.metadata", "beets")]["package"] == "musicfs-beets-metadata"
    assert found[("musicfs.metadata", "beets")]["loads"]
    library, beetsdir = tmp_path / "music", tmp_path / "beets"
    beetsdir.mkdir()
    for n in range(1, 4):
        short_track(library, f"A/Kind/{n:02d}.flac", "flac", n, album="Kind", cover=None)
    original = {p.name: sha256_of(p) for p in (library / "A" / "Kind").iterdir()}
    (beetsdir / "config.yaml").write_text(
        f"directory: {library}\nlibrary: {beetsdir / 'library.db'}\nplugins: []\n"
        "import:\n  copy: no\n  move: no\n  write: no\n  autotag: no\n")
    beet(beetsdir, "import", "-q", "-A", str(library))
    beet(beetsdir, "modify", "-y", "-W", "album:Kind", "artist=The Corrected", "albumartist=The Corrected")
    config = tmp_path / "musicfs.toml"
    config.write_text(f'[metadata]\nsource = "beets"\nlibrary = "{beetsdir / "library.db"}"\n\n'
                      f'[[origins]]\nid = "music"\ntype = "local"\npath = "{library}"\n')
    with mount_library(config=config, work=tmp_path / "work", env=env) as mounted:
        mnt = mounted.mountpoint
        assert tree_dirs(mnt) == {"The Corrected/Kind (2001) [FLAC]"}, tree_dirs(mnt)
        tracks = mounted_tracks(mnt)
        assert len(tracks) == 3
        for path in tracks.values():
            assert os.getxattr(path, "user.musicfs.artist").decode() == "The Corrected"
        assert {sha256_of(p) for p in tracks.values()} == set(original.values())  # the files, untouched

        beet(beetsdir, "modify", "-y", "-W", "album:Kind", "album=Kind of Blue")
        ok_text(mounted.state_dir, "origin", "rescan", "music")
        assert tree_dirs(mnt) == {"The Corrected/Kind of Blue (2001) [FLAC]"}, tree_dirs(mnt)
        assert {sha256_of(p) for p in mounted_tracks(mnt).values()} == set(original.values())
    assert {p.name: sha256_of(p) for p in (library / "A" / "Kind").iterdir()} == original


@pytest.mark.req("META-1")
def test_a_metadata_source_that_is_not_installed_is_a_config_error_with_its_line(tmp_path):
    library = tmp_path / "music"
    short_track(library, "A/Album/01.flac", "flac", 1, album="Album", cover=None)
    config = tmp_path / "musicfs.toml"
    config.write_text(f'[[origins]]\nid = "x"\ntype = "local"\npath = "{library}"\n\n'
                      '[metadata]\nsource = "nowhere"\n')
    done = subprocess.run(musicfs_cmd("--state-dir", str(tmp_path / "state"), "scan", "--config", str(config)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "musicfs.toml:7: unknown metadata source 'nowhere'" in done.stderr, done.stderr


# -- a format plugin: WavPack ---------------------------------------------------------------------
needs_wavpack = pytest.mark.skipif("wv" in unavailable_formats(), reason="WavPack files are made with ffmpeg")


@pytest.fixture(scope="module")
def wavpack_path(tmp_path_factory) -> Path:
    return install("musicfs-wavpack-format", tmp_path_factory)


FLAC_ALBUM, WV_ALBUM = "A/Flac Album (2001) [FLAC]", "A/Pack Album (2001) [WV]"


def flac_and_wavpack(library: Path) -> dict[str, str]:
    """An album of FLAC tracks and one of WavPack tracks, each embedding a cover of its own; each
    track's title by its path in the library."""
    titles = {}
    for n in range(1, 4):
        short_track(library, f"flac/{n:02d}.flac", "flac", n, album="Flac Album", cover_key=1, cover_blocks=32)
        short_track(library, f"wv/{n:02d}.wv", "wv", 10 + n, album="Pack Album", cover_key=9, cover_blocks=48)
        titles[f"flac/{n:02d}.flac"], titles[f"wv/{n:02d}.wv"] = f"Song {n}", f"Song {10 + n}"
    return titles


@needs_wavpack
@pytest.mark.req("G6")
def test_a_format_plugin_from_another_package_adds_wavpack_tracks_to_the_tree(wavpack_path, tmp_path):
    env = env_with(wavpack_path)
    code, listed = plugins(env)
    found = {(item["group"], item["name"]): item for item in listed}
    wv = found[("musicfs.formats", "wv")]
    assert code == 0 and wv["loads"] and wv["package"] == "musicfs-wavpack-format" and wv["extensions"] == [".wv"]
    assert found[("musicfs.formats", "flac")]["package"] == "musicfs"  # the built-in formats are found the same way

    library = tmp_path / "music"
    titles = flac_and_wavpack(library)
    with mount_library(origin=library, work=tmp_path / "work", env=env, extra_args=NO_PREFETCH) as mounted:
        mnt = mounted.mountpoint
        assert tree_dirs(mnt) == {FLAC_ALBUM, WV_ALBUM}, tree_dirs(mnt)
        tracks = mounted_tracks(mnt)
        assert set(tracks) == set(titles), sorted(tracks)
        for real, path in tracks.items():
            assert path.name.endswith(Path(real).suffix) and path.parent.name in (Path(FLAC_ALBUM).name,
                                                                                   Path(WV_ALBUM).name), path
            assert os.getxattr(path, "user.musicfs.title").decode() == titles[real]
            assert sha256_of(path) == sha256_of(library / real), real  # byte for byte the origin's
        assert {p.name for p in (mnt / WV_ALBUM).iterdir()} == {"11 - Song 11.wv", "12 - Song 12.wv",
                                                                "13 - Song 13.wv", "cover.jpg"}
        assert (mnt / WV_ALBUM / "cover.jpg").read_bytes() == images.jpeg(9, 48)
        assert (mnt / FLAC_ALBUM / "cover.jpg").read_bytes() == images.jpeg(1, 32)
        assert mounted.alive()


@needs_wavpack
@pytest.mark.req("G6")
def test_without_the_format_plugin_wavpack_files_are_not_audio(tmp_path):
    library = tmp_path / "music"
    flac_and_wavpack(library)
    done = scan(library, tmp_path / "state", tmp_path / "index.db", "--json")
    report = json.loads(done.stdout)["scans"][0]
    assert (report["added"], report["ignored"], report["skipped"]) == (3, 3, 0), report
    with mount_library(origin=library, index=tmp_path / "index.db", work=tmp_path / "work") as mounted:
        assert tree_dirs(mounted.mountpoint) == {FLAC_ALBUM}
        assert {Path(real).suffix for real in mounted_tracks(mounted.mountpoint)} == {".flac"}


@needs_wavpack
@pytest.mark.req("G6")
def test_a_format_plugin_that_fails_to_load_is_said_once_and_costs_only_its_files(wavpack_path, tmp_path):
    broken = broken_plugin(tmp_path / "broken", group="musicfs.formats", name="ape", module="broken_format",
                           version="0.2", needs="libmac")
    env = env_with(wavpack_path, broken)
    code, listed = plugins(env)
    found = {(item["group"], item["name"]): item for item in listed}
    assert code == 1 and found[("musicfs.formats", "wv")]["loads"] and not found[("musicfs.formats", "ape")]["loads"]
    assert "broken-format 0.2" in found[("musicfs.formats", "ape")]["error"]

    library = tmp_path / "music"
    flac_and_wavpack(library)
    done = subprocess.run(musicfs_cmd("--state-dir", str(tmp_path / "state"), "scan", "--origin", str(library),
                                      "--index", str(tmp_path / "index.db"), "--json"),
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "audio format 'ape'" in line]
    assert len(said) == 1 and "broken-format 0.2" in said[0] and "needs libmac" in said[0], done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)["scans"][0]
    assert (report["added"], report["ignored"], report["skipped"]) == (6, 0, 0), report
