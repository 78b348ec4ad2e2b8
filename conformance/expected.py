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
from collections import Counter
from pathlib import Path

from musicfs.index.artwork import COVER_NAMES
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


def walk_files(mountpoint: Path, *, covers: bool = False) -> list[str]:
    """Every file below the mount, relative and '/'-separated (``/.musicfs`` excluded); the album
    covers only with ``covers`` (tests of tracks compare tracks)."""
    found = []
    for root, dirs, files in os.walk(mountpoint):
        rel = os.path.relpath(root, mountpoint)
        if rel == ".":
            rel = ""
            if HIDDEN in dirs:
                dirs.remove(HIDDEN)
        found.extend(f"{rel}/{name}" if rel else name for name in files if covers or name not in COVER_NAMES)
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


# -- album covers: each track's is its embedded front picture, else the best image file beside it
# (cover.*, then folder.*, then front.*); a directory shows the one most of its tracks have
SIDECAR_ORDER = ("cover", "folder", "front")
EXTENSION = {"image/jpeg": "jpg", "image/png": "png"}


def expected_covers(manifest: dict) -> dict[str, tuple[str, set[str]]]:
    """Virtual directory -> (cover file name, sha256 of the images it may show: several on a tie),
    for every directory whose tracks have a cover."""
    sidecars: dict[str, tuple[int, str, str]] = {}  # origin folder -> (rank, sha256, extension)
    for extra in manifest["extras"]:
        folder, _, name = extra["path"].rpartition("/")
        stem, _, ext = name.lower().rpartition(".")
        if extra["kind"] == "cover" and stem in SIDECAR_ORDER:
            found = (SIDECAR_ORDER.index(stem), extra["sha256"], "jpg" if ext == "jpeg" else ext)
            sidecars[folder] = min(sidecars.get(folder, found), found)
    votes: dict[str, Counter] = {}
    names: dict[str, str] = {}
    for entry in manifest["files"]:
        if entry["broken"]:
            continue
        if entry["cover_sha256"]:
            cover, ext = entry["cover_sha256"], EXTENSION[entry["cover"]]
        elif entry["path"].rpartition("/")[0] in sidecars:
            _, cover, ext = sidecars[entry["path"].rpartition("/")[0]]
        else:
            continue
        directory = render_path(entry).rpartition("/")[0]
        votes.setdefault(directory, Counter())[cover] += 1
        names[cover] = f"cover.{ext}"
    result = {}
    for directory, counted in votes.items():
        top = max(counted.values())
        winners = {cover for cover, n in counted.items() if n == top}
        result[directory] = (names[next(iter(winners))], winners)
    return result


def mounted_covers(mountpoint: Path, manifest: dict) -> dict[str, int]:
    """Every cover file in the mount (path -> size), checked to be exactly the expected ones: the
    right name in the right directories, the bytes of an image the tracks carry."""
    expected = expected_covers(manifest)
    found = {}
    for path in sorted(set(walk_files(mountpoint, covers=True)) - set(walk_files(mountpoint))):
        directory, _, name = path.rpartition("/")
        assert directory in expected and expected[directory][0] == name, f"unexpected cover {path}"
        data = (mountpoint / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() in expected[directory][1], f"{path} is another image"
        found[path] = len(data)
    assert len(found) == len(expected), f"covers missing in {sorted(set(expected) - {p.rpartition('/')[0] for p in found})}"
    return found
