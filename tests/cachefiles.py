"""Where a cache keeps each chunk's bytes, for tests that damage, remove or count them on disk.

Chunks live in packs (several per file) or, in caches made before packs, in
files of their own; the chunk index says which. Tests reach them through here
rather than by guessing paths.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from musicfs.store.cas import ChunkFiles
from musicfs.store.inspect import chunk_rows


@dataclass(frozen=True)
class StoredChunk:
    address: str
    path: Path  # the pack or loose file holding it
    offset: int  # where its bytes start in that file
    size: int
    packed: bool


def stored_chunks(cache_dir: Path) -> dict[str, StoredChunk]:
    """address -> where its bytes are, for every chunk the cache's index lists."""
    files = ChunkFiles(cache_dir)
    result = {}
    for address, size, place in chunk_rows(cache_dir):
        path, offset = files.where(address, place)
        result[address] = StoredChunk(address, path, offset, size, place.pack is not None)
    return result


def pack_files(cache_dir: Path) -> list[Path]:
    """Every pack file (no temp files)."""
    return sorted(p for p in (cache_dir / "chunks" / "packs").glob("*") if not p.name.startswith("."))


def chunk_files(cache_dir: Path) -> list[Path]:
    """Every file holding chunks: packs and loose chunk files (no temp files)."""
    loose = [p for p in (cache_dir / "chunks").glob("??/*") if not p.name.startswith(".")]
    return sorted(loose) + pack_files(cache_dir)


def flip_bit(chunk: StoredChunk, at: int = 100) -> None:
    """Change one bit of a chunk's bytes on disk."""
    with open(chunk.path, "r+b") as f:
        f.seek(chunk.offset + min(at, chunk.size - 1))
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))


def cut_short(chunk: StoredChunk) -> None:
    """Lose the second half of a chunk: a loose file truncated, a pack's range zeroed (as a crash
    before the data reached the disk leaves it)."""
    if not chunk.packed:
        os.truncate(chunk.path, chunk.size // 2)
        return
    with open(chunk.path, "r+b") as f:
        f.seek(chunk.offset + chunk.size // 2)
        f.write(bytes(chunk.size - chunk.size // 2))


def remove(chunk: StoredChunk) -> None:
    """Delete the file holding a chunk (with a pack, every chunk in it goes too)."""
    chunk.path.unlink(missing_ok=True)


def artwork_chunks(cache_dir: Path) -> set[str]:
    """Addresses of the chunks holding album covers (musicfs.store.artwork)."""
    with contextlib.closing(sqlite3.connect(f"file:{cache_dir / 'chunks.db'}?mode=ro", uri=True)) as conn:
        return {row[0] for row in conn.execute("SELECT address FROM art_pieces")}
