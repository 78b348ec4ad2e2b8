"""CAS-1 on a real mount: chunks are named by the xxh3-128 of their bytes, and stored once.

Two local origins hold one recording three times under different tags (twice
in one origin, once in the other: only the RIFF header and the ID3 chunk at the
end differ) and one file byte for byte in both origins. Every track is read
whole through the mount. The test then works out, without musicfs's code, what
a deduplicating store must hold: each origin file cut by FastCDC with the
design's sizes (16/64/256 KiB), each piece named by ``xxhash.xxh3_128`` of it;
the store must hold exactly that set of chunk files, each once, each file's
bytes hashing to its name, and so exactly the bytes of the distinct chunks on
disk, whatever the number of files or origins that contain them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash
from fastcdc import fastcdc

from fixtures.bigfile import write_wav
from fixtures.tags import TagPlan, write_tags
from tests.cachefiles import stored_chunks
from tests.harness import mount_library, settled

KiB = 1024
MiB = 1024 * KiB
MIN_CHUNK, AVG_CHUNK, MAX_CHUNK = 16 * KiB, 64 * KiB, 256 * KiB  # seed 002's chunking design


def tagged(path: Path, title: str, album: str, artist: str = "Dedup Artist") -> Path:
    write_tags(path, "wav", TagPlan("id3v2.4", {"title": title, "artist": artist, "album": album,
                                                  "albumartist": artist, "track": 1}))
    return path


@pytest.fixture(scope="module")
def origins(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cas-origins")
    studio, backup = base / "studio", base / "backup"
    for root in (studio, backup):
        (root / "a").mkdir(parents=True)
    recording = write_wav(base / "recording.wav", 3 * MiB, seed=41)  # untagged: each copy gets its own tags
    for path, title, album, artist in (
        (studio / "a" / "take.wav", "The Take", "The Album", "Dedup Artist"),
        (studio / "a" / "take single.wav", "The Take (single edit tags)", "The Single", "Dedup Artist"),
        (backup / "a" / "best of take.wav", "Best Take", "Best Of", "Various Artists"),
    ):
        shutil.copy(recording, path)
        tagged(path, title, album, artist)
    other = tagged(write_wav(studio / "a" / "other.wav", 2 * MiB, seed=42), "Other", "The Album")
    shutil.copy2(other, backup / "a" / "mirror of other.wav")  # byte for byte, another origin and path
    return {"studio": studio, "backup": backup}


def config_for(origins: dict[str, Path], path: Path) -> Path:
    lines = []
    for priority, (origin_id, root) in enumerate(origins.items(), start=1):
        lines += ["[[origins]]", f'id = "{origin_id}"', 'type = "local"', f"priority = {priority}",
                  f"path = {json.dumps(str(root))}", ""]
    path.write_text("\n".join(lines))
    return path


def expected_chunks(files: list[Path]) -> tuple[dict[str, int], int]:
    """(xxh3-128 hex of each distinct FastCDC chunk -> its size, chunks counted per file)."""
    distinct: dict[str, int] = {}
    total = 0
    for path in files:
        data = path.read_bytes()
        for chunk in fastcdc(data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK):
            piece = data[chunk.offset:chunk.offset + chunk.length]
            distinct[xxhash.xxh3_128_hexdigest(piece)] = len(piece)
            total += 1
    return distinct, total


@pytest.mark.req("CAS-1")
def test_identical_content_in_any_file_or_origin_is_stored_once_under_its_digest(origins, tmp_path):
    files = sorted(p for root in origins.values() for p in root.rglob("*.wav"))
    distinct, per_file = expected_chunks(files)
    logical = sum(p.stat().st_size for p in files)
    # the fixture shares what it claims: most chunks of the three tagged copies are the same
    assert len(distinct) < 0.5 * per_file, f"{len(distinct)} distinct of {per_file} chunks: nothing to share"

    config = config_for(origins, tmp_path / "musicfs.toml")
    work = tmp_path / "work"
    with mount_library(config=config, work=work) as mounted:
        read = {}
        for dirpath, dirnames, names in os.walk(mounted.mountpoint):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in names:
                path = Path(dirpath) / name
                key = (os.getxattr(path, "user.musicfs.origin").decode(),
                       os.getxattr(path, "user.musicfs.real_path").decode())
                data = path.read_bytes()
                assert data == (origins[key[0]] / key[1]).read_bytes(), f"{key} read wrong"
                read[key] = len(data)
        assert len(read) == len(files), f"the mount shows {sorted(read)}"
        settled(mounted.mountpoint)

    stored = stored_chunks(work / "cache")
    assert set(stored) == set(distinct), (
        f"{len(set(stored) - set(distinct))} chunks stored that the files do not cut into, "
        f"{len(set(distinct) - set(stored))} missing")
    for name, chunk in stored.items():  # every chunk is addressed by the xxh3-128 of its bytes
        with open(chunk.path, "rb") as f:
            f.seek(chunk.offset)
            data = f.read(chunk.size)
        assert xxhash.xxh3_128_hexdigest(data) == name and len(data) == distinct[name], chunk
    unique_bytes = sum(distinct.values())
    done = subprocess.run([sys.executable, "-m", "musicfs.cli.inspect", "chunks", "--json", "--cache-dir",
                           str(work / "cache")], capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout)
    assert (summary["chunks"], summary["chunks_on_disk"]) == (len(distinct), len(distinct))
    assert summary["bytes"] == summary["bytes_on_disk"] == unique_bytes
    assert summary["logical_bytes"] == logical and summary["manifests"] == len(files)
    assert unique_bytes < 0.5 * logical
