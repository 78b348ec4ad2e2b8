"""FR-6 on a real mount: every field of every supported format, as the mount shows it.

The files come from :mod:`fixtures.formats`: one per format (FLAC, MP3, Ogg
Vorbis, Opus, M4A, WAV, AIFF; the ID3 carriers with ID3v2.3 and v2.4), each
with a stream whose duration, sample rate and bitrate are known before musicfs
reads it. The values are read back through the mount's extended attributes
(``user.musicfs.<field>``), the interface a user's tools see, from a daemon
that scanned the folder itself: nothing here calls the scanner in-process.
"""

from __future__ import annotations

import os

import pytest

from fixtures.formats import FORMATS, build_format_set
from tests.harness import mounted_tracks

TEXT_FIELDS = ("title", "artist", "album", "album_artist", "genre")
NUMBER_FIELDS = ("year", "track", "disc")
PREFIX = "user.musicfs."


@pytest.fixture(scope="module")
def format_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats") / "library"
    return root, build_format_set(root)


def xattrs(path) -> dict[str, str]:
    return {name[len(PREFIX):]: os.getxattr(path, name).decode()
            for name in os.listxattr(path) if name.startswith(PREFIX)}


@pytest.mark.req("FR-6")
def test_every_format_is_indexed_with_exact_tags_and_stream_figures(format_set, mount_factory,
                                                                      requirement_catalogue):
    root, files = format_set
    wanted = requirement_catalogue["FR-6"].values
    assert {f.format for f in files} == set(wanted["formats"]) == set(FORMATS)
    mounted = mount_factory(origin=root)
    tracks = mounted_tracks(mounted.mountpoint)
    assert set(tracks) == {f.path for f in files}, "a file of a supported format is missing from the mount"
    problems = []
    for known in files:
        shown = xattrs(tracks[known.path])
        missing = set(wanted["fields"]) - set(shown)
        if missing:
            problems.append(f"{known.path}: no {sorted(missing)}")
            continue
        for name in TEXT_FIELDS:
            if shown[name] != known.tags[name]:
                problems.append(f"{known.path}: {name} {shown[name]!r}, tagged {known.tags[name]!r}")
        for name in NUMBER_FIELDS:
            if int(shown[name]) != known.tags[name]:
                problems.append(f"{known.path}: {name} {shown[name]}, tagged {known.tags[name]}")
        if shown["format"] != known.format or not tracks[known.path].name.endswith(f".{known.format}"):
            problems.append(f"{known.path}: format {shown['format']!r} as {tracks[known.path].name!r}")
        if int(shown["sample_rate"]) != known.sample_rate:
            problems.append(f"{known.path}: sample rate {shown['sample_rate']}, encoded at {known.sample_rate}")
        # a codec may add less than one of its frames (AAC's priming); none may lose audio
        late = int(shown["duration_ms"]) - known.duration_ms
        if not -1 <= late <= known.duration_slack_ms:
            problems.append(f"{known.path}: duration {shown['duration_ms']} ms for {known.duration_ms} ms "
                            f"of audio (allowed +{known.duration_slack_ms} ms)")
        bitrate = int(shown["bitrate"])
        if abs(bitrate - known.bitrate) > known.bitrate_tolerance * known.bitrate:
            problems.append(f"{known.path}: bitrate {bitrate} b/s, stream has {known.bitrate} b/s "
                            f"(tolerance {known.bitrate_tolerance:.0%})")
    assert not problems, "\n".join(problems)
