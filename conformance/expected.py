"""What a mount of the generated library should show, computed from the manifest alone.

The functional conformance tests compare a real mount with these predictions:
the default template applied to the manifest's tags gives every track's path,
and tracks whose tags render to the same path are told apart by a
`` (N)`` before the extension (see :mod:`musicfs.index.tree`).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from musicfs.index.template import PathTemplate

HIDDEN = ".musicfs"


def render_path(entry: dict, template: PathTemplate | None = None) -> str:
    """The virtual path the template gives one manifest entry."""
    tags = dict(entry["tags"])
    if "albumartist" in tags:
        tags["album_artist"] = tags.pop("albumartist")
    track = {**tags, "format": entry["format"], "real_path": entry["path"]}
    return "/".join((template or PathTemplate()).render(track))


def expected_tree(good_files: list[dict]) -> dict[str, list[dict]]:
    """Rendered path -> the manifest entries rendering to it (more than one: a collision)."""
    template = PathTemplate()
    out: dict[str, list[dict]] = {}
    for entry in good_files:
        out.setdefault(render_path(entry, template), []).append(entry)
    return out


def numbered_pattern(path: str) -> re.Pattern:
    """Matches ``path`` with a collision number: ``a/01 - X.flac`` -> ``a/01 - X (N).flac``."""
    stem, dot, ext = path.rpartition(".")
    if not dot or "/" in ext:
        stem, ext = path, ""
    return re.compile(re.escape(stem) + r" \(([2-9]|[1-9]\d+)\)" + (re.escape("." + ext) if ext else ""))


def walk_files(mountpoint: Path) -> list[str]:
    """Every file below the mount, relative and '/'-separated (``/.musicfs`` excluded)."""
    found = []
    for root, dirs, files in os.walk(mountpoint):
        rel = os.path.relpath(root, mountpoint)
        if rel == ".":
            rel = ""
            if HIDDEN in dirs:
                dirs.remove(HIDDEN)
        found.extend(f"{rel}/{name}" if rel else name for name in files)
    return sorted(found)


def walk_dirs(mountpoint: Path) -> list[str]:
    """Every directory below the mount including the root (''), '/'-separated."""
    found = [""]
    for root, dirs, _ in os.walk(mountpoint):
        rel = os.path.relpath(root, mountpoint)
        rel = "" if rel == "." else rel
        if not rel and HIDDEN in dirs:
            dirs.remove(HIDDEN)
        found.extend(f"{rel}/{d}" if rel else d for d in dirs)
    return sorted(found)


def sha256_of(path: Path | str, block: int = 1 << 16) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


_ASSIGNMENTS: dict[str, dict[str, dict]] = {}


def assign(mountpoint: Path, good_files: list[dict]) -> dict[str, dict]:
    """Mounted path -> the manifest entry it shows, matched by path and, in a collision, by bytes.

    Raises AssertionError when a predicted path is missing or a colliding group's
    files do not carry exactly the group's contents. Cached per mountpoint.
    """
    key = str(mountpoint)
    if key in _ASSIGNMENTS:
        return _ASSIGNMENTS[key]
    actual = set(walk_files(mountpoint))
    out: dict[str, dict] = {}
    for path, entries in expected_tree(good_files).items():
        assert path in actual, f"predicted path missing from the mount: {path!r}"
        if len(entries) == 1:
            out[path] = entries[0]
            continue
        pattern = numbered_pattern(path)
        names = [path] + sorted(p for p in actual if pattern.fullmatch(p))
        assert len(names) == len(entries), f"collision group {path!r}: {names} for {len(entries)} tracks"
        left = list(entries)
        for name in names:
            digest = sha256_of(mountpoint / name)
            match = next((e for e in left if e["sha256"] == digest), None)
            assert match is not None, f"{name!r} holds bytes of none of {[e['path'] for e in left]}"
            left.remove(match)
            out[name] = match
    _ASSIGNMENTS[key] = out
    return out


def forget_assignment(mountpoint: Path) -> None:
    _ASSIGNMENTS.pop(str(mountpoint), None)
