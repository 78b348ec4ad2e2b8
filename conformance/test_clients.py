"""Ordinary programs on the mount: ls, tree, find, du, cp, tar, a tag reader, ffprobe and ffmpeg."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tarfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mutagen
import pytest
from mutagen.id3 import ID3

from conformance.expected import assign, mounted_covers, sha256_of, walk_dirs, walk_files
from musicfs.index.library import LibraryIndex
from musicfs.vfs.resolver import Resolver


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    tool = shutil.which(cmd[0])
    assert tool, f"{cmd[0]} is not installed (make setup installs it)"
    result = subprocess.run(cmd, check=False, capture_output=True, cwd=cwd, timeout=120)
    assert result.returncode == 0 and not result.stderr, (
        f"{' '.join(cmd)} exited {result.returncode}: {result.stderr.decode(errors='replace')[:2000]}")
    return result


def lines(result: subprocess.CompletedProcess) -> list[str]:
    return [os.fsdecode(line) for line in result.stdout.split(b"\n") if line]


@pytest.mark.req("PH-1.1")
def test_ls_tree_and_find_see_every_track(sample_mount, sample_library, good_files):
    """Every track, and every album's cover (ART-2), as the tools list them."""
    mnt = sample_mount.mountpoint
    files = walk_files(mnt, covers=True)
    covers = mounted_covers(mnt, sample_library[1])

    listing = lines(run("ls", "-lR", "--quoting-style=literal", str(mnt)))
    assert not [ln for ln in listing if "?" in ln.split(" ", 1)[0]], "ls could not stat some entries"
    assert sum(ln.startswith("-r--r--r--") for ln in listing) == len(good_files) + len(covers)
    assert sum(ln.startswith("dr-xr-xr-x") for ln in listing) == len(walk_dirs(mnt)) - 1

    tree = lines(run("tree", "-a", "-f", "-i", "--noreport", "--charset=ascii", "-N", str(mnt)))
    assert sorted(os.path.relpath(p, mnt) for p in tree[1:] if os.path.isfile(p)) == files

    found = lines(run("find", str(mnt), "-type", "f", "-printf", "%s\\t%P\\n"))
    sizes = {p: int(s) for s, p in (ln.split("\t", 1) for ln in found)}
    expected = {path: entry["size"] for path, entry in assign(mnt, good_files).items()}
    assert sizes == {**expected, **covers}
    flac = lines(run("find", str(mnt), "-type", "f", "-iname", "*.flac"))
    assert len(flac) == sum(e["format"] == "flac" for e in good_files)


@pytest.mark.req("PH-1.1", "FS-5")
def test_du_counts_exactly_the_tracks(sample_mount, sample_library, good_files):
    """The tracks' bytes and the albums' covers', nothing else."""
    mnt = sample_mount.mountpoint
    sizes = [e["size"] for e in good_files] + list(mounted_covers(mnt, sample_library[1]).values())
    apparent = int(lines(run("du", "-s", "--apparent-size", "--block-size=1", str(mnt)))[0].split()[0])
    assert apparent == sum(sizes)
    blocks = int(lines(run("du", "-s", "--block-size=512", str(mnt)))[0].split()[0])
    assert blocks == sum((size + 511) // 512 for size in sizes)


@pytest.mark.req("PH-1.1", "FS-5")
def test_cp_r_copies_a_byte_identical_tree(sample_mount, good_files, tmp_path):
    mnt = sample_mount.mountpoint
    dest = tmp_path / "copy"
    run("cp", "-r", f"{mnt}/.", str(dest))
    assert walk_files(dest, covers=True) == walk_files(mnt, covers=True)
    assert walk_dirs(dest) == walk_dirs(mnt)
    for path, entry in assign(mnt, good_files).items():
        assert sha256_of(dest / path) == entry["sha256"], path


@pytest.mark.req("PH-1.1", "FS-5")
def test_tar_archives_the_mount(sample_mount, sample_library, good_files, tmp_path):
    mnt = sample_mount.mountpoint
    covers = mounted_covers(mnt, sample_library[1])
    archive = tmp_path / "library.tar"
    run("tar", "-C", str(mnt), "-cf", str(archive), ".")
    names = {os.path.normpath(n) for n in lines(run("tar", "--quoting-style=literal", "-tf", str(archive)))}
    assert names == {"."} | set(walk_dirs(mnt)[1:]) | set(walk_files(mnt, covers=True))
    with tarfile.open(archive) as tar:
        members = {os.path.normpath(m.name): m for m in tar.getmembers() if m.isfile()}
    expected = assign(mnt, good_files)
    assert {p: m.size for p, m in members.items()} == {**{p: e["size"] for p, e in expected.items()}, **covers}

    out = tmp_path / "extracted"
    out.mkdir()
    run("tar", "-C", str(out), "-xf", str(archive))
    for path, entry in expected.items():
        assert sha256_of(out / path) == entry["sha256"], path


_ID3_KEYS = {"title": "TIT2", "artist": "TPE1", "album": "TALB", "albumartist": "TPE2", "genre": "TCON",
             "date": "TDRC", "tracknumber": "TRCK", "discnumber": "TPOS"}


def client_tags(path: Path) -> dict[str, str]:
    """Tags as a music player reads them with mutagen's easy interface (first values)."""
    audio = mutagen.File(path, easy=True)
    assert audio is not None, f"mutagen does not recognise {path}"
    tags = audio.tags
    if tags is None:
        return {}
    if isinstance(tags, ID3):  # WAV with ID3: no easy wrapper
        return {key: str(tags[frame].text[0]) for key, frame in _ID3_KEYS.items() if frame in tags}
    return {key: str(values[0]) for key, values in tags.items() if values}


@pytest.mark.req("PH-1.1", "FS-5")
def test_tag_reader_sees_the_manifest_tags(sample_mount, good_files):
    mnt = sample_mount.mountpoint
    wrong = []
    for path, entry in assign(mnt, good_files).items():
        got = client_tags(mnt / path)
        for key in ("title", "artist", "album", "albumartist", "genre"):
            if key in entry["tags"] and got.get(key) != entry["tags"][key]:
                wrong.append((path, key, entry["tags"][key], got.get(key)))
        for key, tag in (("year", "date"), ("track", "tracknumber"), ("disc", "discnumber")):
            if key in entry["tags"]:
                text = got.get(tag, "")
                value = text[:4] if key == "year" else text.split("/")[0]
                if not value.isdigit() or int(value) != entry["tags"][key]:
                    wrong.append((path, key, entry["tags"][key], text))
        if not entry["tags"]:
            assert not {k for k in got if k in ("title", "artist", "album")}, path
    assert not wrong, f"tags read through the mount differ from the manifest: {wrong}"


@pytest.mark.req("PH-1.1")
def test_ffprobe_opens_every_track(sample_mount, good_files):
    mnt = sample_mount.mountpoint
    assert shutil.which("ffprobe"), "ffprobe is not installed (make setup installs ffmpeg)"

    def probe(path: str) -> tuple[str, int, str, str]:
        result = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                                 "-of", "default=nw=1:nk=1", str(mnt / path)],
                                check=False, capture_output=True, text=True, timeout=60)
        return path, result.returncode, result.stdout.strip(), result.stderr.strip()

    expected = assign(mnt, good_files)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(probe, sorted(expected)))
    failed = [r for r in results if r[1] != 0 or r[3]]
    assert not failed, f"ffprobe failed on: {failed}"
    for path, _, duration, _ in results:
        audio = expected[path]["audio"]
        # the whole stream is there: as long as what was encoded, plus the padding MP3 frames add
        # (encoder delay and a partly filled last frame: up to ~0.15 s at low sample rates)
        slack = 0.15 if expected[path]["format"] == "mp3" else 0.01
        assert -0.01 <= float(duration) - audio["seconds"] <= slack, (path, duration, audio["seconds"])


@pytest.mark.req("PH-1.1")
def test_ffmpeg_decodes_one_track_of_every_format(sample_mount, good_files):
    """A player's whole-file decode, for one track of each format (all of them would be slow)."""
    mnt = sample_mount.mountpoint
    assert shutil.which("ffmpeg"), "ffmpeg is not installed (make setup installs it)"
    chosen: dict[str, str] = {}
    for path, entry in sorted(assign(mnt, good_files).items()):
        chosen.setdefault(entry["format"], path)
    assert set(chosen) == {e["format"] for e in good_files}
    for path in chosen.values():
        run("ffmpeg", "-nostdin", "-v", "error", "-i", str(mnt / path), "-f", "null", "-")


@pytest.mark.req("CAS-5")
def test_xattrs_match_the_index(sample_mount, good_files):
    mnt = sample_mount.mountpoint
    expected = assign(mnt, good_files)
    same_bytes = Counter(e["sha256"] for e in good_files)
    with LibraryIndex(sample_mount.index, readonly=True) as index:
        resolver = Resolver(index.conn)
        for path, entry in expected.items():
            track = index.track(resolver.resolve(path).track_id)
            names = set(os.listxattr(mnt / path))
            assert {"user.musicfs.origin", "user.musicfs.real_path", "user.musicfs.format",
                    "user.musicfs.duration_ms", "user.musicfs.sample_rate"} <= names, path
            values = {name: os.getxattr(mnt / path, name) for name in names}
            assert values["user.musicfs.origin"] == track["origin_id"].encode()
            assert values["user.musicfs.real_path"] == track["real_path"].encode()
            # the real path is this file's origin (byte-identical twins may swap places)
            if same_bytes[entry["sha256"]] == 1:
                assert track["real_path"] == entry["path"], path
            if track["artist"]:
                assert values["user.musicfs.artist"] == track["artist"].encode()
                if (entry["tags"].get("artist") or "").strip():
                    assert values["user.musicfs.artist"] == entry["tags"]["artist"].encode(), path
            else:
                assert "user.musicfs.artist" not in names
            for field in ("album", "title", "year", "track", "format"):
                if track[field] not in (None, ""):
                    assert values[f"user.musicfs.{field}"] == str(track[field]).encode(), (path, field)
        for directory in walk_dirs(mnt):
            assert os.listxattr(mnt / directory) == ["user.musicfs.path"]
            assert os.getxattr(mnt / directory, "user.musicfs.path") == directory.encode()
    with pytest.raises(OSError) as info:
        os.getxattr(mnt / next(iter(expected)), "user.musicfs.no_such_tag")
    assert info.value.errno == errno.ENODATA
