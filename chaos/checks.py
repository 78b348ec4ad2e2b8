"""What every chaos scenario checks after its faults: nothing wrong was kept.

A fault may cost a read (EIO within its bound) but must never leave a wrong
byte behind for later: every chunk file matches its address, and every file
the cache holds a manifest for reassembles, chunk by chunk, into exactly the
origin's bytes.
"""

from __future__ import annotations

import errno
import hashlib
import time
from pathlib import Path

import pytest

from conformance.expected import sha256_of
from musicfs.store.cas import ChunkFiles
from musicfs.store.chunkdb import ChunkIndex
from musicfs.store.inspect import cached_files, verify_chunks


def cached_file_digests(cache_dir: Path) -> dict[tuple[str, str], str | None]:
    """(origin id, path) -> sha256 of the file rebuilt from its cached chunks (None: some not on disk).

    Only complete chunk maps: a partial one (a fill that stopped) covers a
    prefix, checked by :func:`cached_prefixes`.
    """
    return {key: digest for key, (digest, complete) in _rebuild(cache_dir).items() if complete}


def cached_prefixes(cache_dir: Path) -> dict[tuple[str, str], bytes | None]:
    """(origin id, path) -> the bytes of a partial chunk map's prefix (None: some not on disk)."""
    return {key: data for key, (data, complete) in _rebuild(cache_dir, keep_bytes=True).items()
            if not complete}


def _rebuild(cache_dir: Path, keep_bytes: bool = False) -> dict:
    rows = list(cached_files(cache_dir))
    index = ChunkIndex(cache_dir / "chunks.db")
    files = ChunkFiles(cache_dir)
    try:
        result = {}
        for origin_id, real_path, _size, complete in rows:
            if keep_bytes and complete:
                continue
            manifest = index.manifest(origin_id, real_path)
            places = index.places(ref.address for ref in manifest.chunks)
            digest = hashlib.sha256()
            parts = []
            for ref in manifest.chunks:
                data = files.read(ref.address, ref.size, places[ref.address][1]) if ref.address in places else None
                if data is None:
                    digest = parts = None
                    break
                digest.update(data)
                if keep_bytes:
                    parts.append(data)
            if keep_bytes:
                result[origin_id, real_path] = (b"".join(parts) if parts is not None else None, complete)
            else:
                result[origin_id, real_path] = (digest.hexdigest() if digest is not None else None, complete)
        return result
    finally:
        index.close()


def assert_cache_sound(cache_dir: Path, expected: dict[str, str], origin_root: Path | None = None) -> int:
    """No corrupt chunk file, and every cached file (by real path) rebuilds to its expected sha256.

    With ``origin_root`` (a local copy of the library), the prefixes of
    partial chunk maps are compared with the files' first bytes too.
    Returns how many complete cached files were checked (a scenario may want some).
    """
    report = verify_chunks(cache_dir)
    assert report["corrupt"] == 0, f"damaged chunk files in the cache: {report['corrupt_chunks'][:5]}"
    checked = 0
    for (origin_id, real_path), digest in cached_file_digests(cache_dir).items():
        if digest is None:  # evicted or damaged chunks are a miss, refetched on read: not wrong
            continue
        assert real_path in expected, f"{origin_id}:{real_path} cached but not in the library"
        assert digest == expected[real_path], f"{origin_id}:{real_path}: cached chunks hold wrong bytes"
        checked += 1
    if origin_root is not None:
        for (origin_id, real_path), prefix in cached_prefixes(cache_dir).items():
            if prefix is None:
                continue
            with open(origin_root / real_path, "rb") as f:
                assert f.read(len(prefix)) == prefix, f"{origin_id}:{real_path}: partial map holds wrong bytes"
    return checked


def assert_exact(expected: dict[str, str], path: Path, real: str) -> None:
    """The mounted file ``path`` (the origin's ``real``) reads whole to the origin's bytes."""
    assert sha256_of(path) == expected[real], f"{real}: wrong bytes served"


def assert_eio_within(path: Path, bound: float) -> float:
    """Reading the whole file fails with EIO within ``bound`` seconds; returns how long it took."""
    started = time.monotonic()
    with pytest.raises(OSError) as failure:
        sha256_of(path)
    elapsed = time.monotonic() - started
    assert failure.value.errno == errno.EIO, f"expected EIO, got {failure.value!r}"
    assert elapsed <= bound, f"EIO took {elapsed:.2f} s (bound {bound:.1f} s)"
    return elapsed
