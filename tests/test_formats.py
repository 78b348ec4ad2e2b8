"""Audio formats (G6): files go to the reader of their extension, and a plugin's reader, whatever it
does, costs only its own files.

The formats here are defined in this module and loaded the way installed ones are (by entry-point
target); the one that matters, :class:`Echo`, returns what its files say (a JSON object of fields,
or what to do instead), so one folder holds every case. The real mount with a plugin from another
package (WavPack) is ``conformance/test_plugins.py``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import pytest

from fixtures import images
from fixtures.media import short_track
from musicfs.index import tags
from musicfs.index.formats import (
    FORMAT_GROUP,
    AudioFields,
    AudioFile,
    AudioFormat,
    FormatSet,
    MalformedAudio,
    build,
    builtins,
)
from musicfs.index.library import LibraryIndex
from musicfs.index.scanner import Scanner
from musicfs.index.tags import TEXT_LIMIT, read_tags
from musicfs.index.template import PathTemplate
from musicfs.origins.local import LocalOrigin
from musicfs.plugins import Provider

pytestmark = pytest.mark.req("G6")


class Echo(AudioFormat):
    """Returns the fields its file holds as JSON; ``{"do": ...}`` misbehaves instead."""

    name = "echo"
    extensions = ("echo", ".EC2")

    def read(self, file: AudioFile) -> AudioFields:
        given = json.loads(file.read(1 << 20).split(b"\n")[0])  # what follows its line is padding
        do = given.pop("do", None)
        if do == "raise":
            return 1 // 0  # type: ignore[return-value]
        if do == "spin":
            while True:  # neither reads nor returns: only the CPU watchdog ends this
                pass
        if do == "read everything":
            file.seek(0)
            file.read()
        if do == "return a dict":
            return given  # type: ignore[return-value]
        if do == "refuse":
            raise MalformedAudio("corrupt audio", "the echo is garbled")
        if "picture" in given:
            given["picture"] = bytes.fromhex(given["picture"])
        return AudioFields(**given)


class WrongName(Echo):
    name = "other"


class NoExtensions(Echo):
    name = "noext"
    extensions = ()


class Unbuildable(Echo):
    name = "unbuildable"

    def __init__(self):
        raise RuntimeError("needs a licence key")


class FlacToo(Echo):
    name = "flac2"
    extensions = ("flac", "fl2")


def provider(name: str, target: str) -> tuple[Provider, bool]:
    return Provider(FORMAT_GROUP, name, f"{__name__}:{target}", "echo-formats", "0.3", "here"), False


def with_echo(*more: tuple[Provider, bool]) -> FormatSet:
    return build([*builtins(), provider("echo", "Echo"), *more])


def echo_file(path, **fields) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"duration_ms": 1500, "sample_rate": 44100, **fields}) + "\n")


def test_each_file_goes_to_the_reader_of_its_extension(tmp_path):
    formats = with_echo()
    assert {".flac", ".mp3", ".ogg", ".oga", ".opus", ".wav", ".m4a", ".mp4", ".aac", ".aif", ".aiff",
            ".echo", ".ec2"} == formats.extensions
    echo_file(tmp_path / "Song.ECHO", title="Echoed", year=1999, track=3, bitrate=320000)
    echo_file(tmp_path / "other.ec2", title="Second")
    got = read_tags(tmp_path / "Song.ECHO", formats)
    assert got == {"title": "Echoed", "artist": None, "album": None, "album_artist": None, "genre": None,
                   "year": 1999, "track": 3, "disc": None, "duration_ms": 1500, "bitrate": 320000,
                   "sample_rate": 44100, "format": "echo", "picture": None}
    assert read_tags(tmp_path / "other.ec2", formats)["title"] == "Second"
    echo_file(tmp_path / "...ECHO", title="All dots")  # a name the scanner takes for audio: its format reads it
    assert read_tags(tmp_path / "...ECHO", formats)["title"] == "All dots"
    flac = short_track(tmp_path, "real.flac", "flac", 7, album="Real")
    assert read_tags(flac, formats)["format"] == "flac"  # the built-in formats read as before
    with pytest.raises(MalformedAudio) as unknown:
        read_tags(flac, build([provider("echo", "Echo")]))
    assert unknown.value.reason == "unrecognised format" and ".flac" in unknown.value.detail


def test_what_a_reader_returns_is_held_to_what_the_index_keeps(tmp_path):
    path = tmp_path / "long.echo"
    echo_file(path, title="\ud800" + "x" * (3 * TEXT_LIMIT), artist="   ", track=-3, disc=10**15,
              duration_ms=1234.4, bitrate=-5, sample_rate=1 << 50, picture=images.png(3).hex())
    got = read_tags(path, with_echo())
    assert got["title"] == "\ufffd" + "x" * (TEXT_LIMIT - 1) and got["artist"] is None
    assert (got["track"], got["disc"], got["duration_ms"], got["bitrate"]) == (None, None, 1234, 0)
    assert got["sample_rate"] == 1 << 40 and got["picture"] == images.png(3)


def scan_folder(tmp_path, formats: FormatSet):
    index = LibraryIndex(tmp_path / "index.db")
    report = Scanner(index, LocalOrigin("local", tmp_path / "music"), PathTemplate(), workers=2,
                     formats=formats).run()
    tracks = dict(index.conn.execute("SELECT real_path, format FROM tracks").fetchall())
    skipped = {row[0]: row[1:] for row in index.conn.execute("SELECT real_path, reason, detail FROM skipped")}
    index.close()
    return report, tracks, skipped


def test_a_reader_that_raises_spins_reads_too_much_or_returns_garbage_costs_only_its_files(tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setattr(tags.WATCHDOG, "seconds", 0.5)  # the spinning file is stopped sooner than in a scan
    music = tmp_path / "music"
    short_track(music, "A/good.flac", "flac", 1, album="Good", cover=None)
    echo_file(music / "A/good.echo", title="Fine")
    cases = {
        "raises.echo": ({"do": "raise"}, "parser failure", "ZeroDivisionError"),
        "spins.echo": ({"do": "spin"}, "too slow to index", "CPU"),
        "dict.echo": ({"do": "return a dict"}, "parser failure", "dict instead of AudioFields"),
        "refused.echo": ({"do": "refuse"}, "corrupt audio", "garbled"),
        "nan.echo": ({"duration_ms": math.nan}, "no audio stream", "nan"),
        "forever.echo": ({"duration_ms": math.inf}, "corrupt audio", "claims inf s"),
        "norate.echo": ({"sample_rate": 0}, "no audio stream", "0 Hz"),
        "number.echo": ({"title": 5}, "parser failure", "title of type int"),
        "bool.echo": ({"year": True}, "parser failure", "year of type bool"),
        "escape.echo": ({"format": "../../etc"}, "parser failure", "format '../../etc'"),
    }
    for name, (fields, _, _) in cases.items():
        echo_file(music / "B" / name, **fields)
    big = music / "B/huge.echo"  # sparse: a reader reading all of it is refused before reading
    echo_file(big, do="read everything")
    os.truncate(big, tags.READ_LIMIT + 1)
    cases["huge.echo"] = ({}, "too large to index", "MiB")

    report, tracks, skipped = scan_folder(tmp_path, with_echo())
    assert report.complete and tracks == {"A/good.flac": "flac", "A/good.echo": "echo"}, (tracks, skipped)
    assert set(skipped) == {f"B/{name}" for name in cases}
    for name, (_, reason, words) in cases.items():
        assert skipped[f"B/{name}"][0] == reason and words in skipped[f"B/{name}"][1], (name, skipped[f"B/{name}"])
    # a plugin's failure names the plugin: whose bug it is
    assert "'echo', echo-formats 0.3" in skipped["B/raises.echo"][1]


def test_without_its_format_a_file_is_not_audio(tmp_path):
    music = tmp_path / "music"
    short_track(music, "A/good.flac", "flac", 1, album="Good", cover=None)
    echo_file(music / "A/song.echo", title="Fine")
    report, tracks, skipped = scan_folder(tmp_path, build(builtins()))
    assert tracks == {"A/good.flac": "flac"} and not skipped and report.ignored == 1


def test_a_format_that_does_not_load_is_said_once_and_the_others_read(tmp_path, caplog):
    broken = [provider("missing", "NoSuchFormat"), provider("wrong", "WrongName"), provider("noext", "NoExtensions"),
              provider("unbuildable", "Unbuildable"),
              (Provider(FORMAT_GROUP, "gone", "musicfs_gone_format:Gone", "gone-format", "1.2", "x"), False)]
    with caplog.at_level(logging.ERROR, logger="musicfs.index.formats"):
        formats = with_echo(*broken)
    assert set(formats.failed) == {"missing", "wrong", "noext", "unbuildable", "gone"}
    assert "'gone' (gone-format 1.2) cannot be loaded: ModuleNotFoundError" in formats.failed["gone"]
    assert "its class says its name is 'other'" in formats.failed["wrong"]
    assert "extensions must be" in formats.failed["noext"]
    assert "RuntimeError: needs a licence key" in formats.failed["unbuildable"]
    for name in formats.failed:
        assert sum(f"audio format '{name}'" in r.getMessage() for r in caplog.records) == 1, caplog.text
    echo_file(tmp_path / "x.echo", title="Still read")
    assert read_tags(tmp_path / "x.echo", formats)["title"] == "Still read"


def test_a_built_in_format_keeps_its_extensions(tmp_path, caplog):
    formats = with_echo(provider("flac2", "FlacToo"))
    flac = short_track(tmp_path, "real.flac", "flac", 7, album="Real")
    assert read_tags(flac, formats)["format"] == "flac"
    assert formats.for_path("x.fl2").format.name == "flac2"
    assert "also claims .flac files: they stay format 'flac'" in caplog.text


def test_a_mount_of_an_index_imports_no_format():
    """Start-up pays for no reader: formats are loaded when a scan first needs them."""
    code = ("import sys, musicfs.cli.main, musicfs.mount, musicfs.daemon, musicfs.vfs.sync\n"
            "print(sorted(m for m in sys.modules if m.startswith(('musicfs.index.formats', 'musicfs.index.tags',"
            " 'musicfs.index.builtinformats', 'mutagen'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout
