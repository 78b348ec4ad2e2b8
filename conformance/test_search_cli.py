"""Search on a real mount: ``musicfs search``, the API's /v1/search, and saved collections (FS-9).

One daemon serves a small library on two origins for the whole module: named
tracks chosen to tell the language's rules apart (accents, fields, years, an
origin), and enough filler that a streamed answer outgrows the socket's buffers.
Every hit's virtual path is opened through the mount and compared byte for
byte with the file it came from: a result a player cannot open is no result.
The CLI is run as a user runs it (a process, exit status, stdout and stderr).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conformance.hostile import tagged
from fixtures.bigfile import write_wav
from fixtures.tags import TagPlan, write_tags
from musicfs import daemon
from musicfs.control.client import ControlClient, ControlError
from tests.harness import mount_library, musicfs_cmd, refused

pytestmark = pytest.mark.req("FS-9")

FILLERS = 1100  # tracks by "Filler Band": a stream of them is ~0.5 MB, past any socket buffer
MATCH = "\x1b[1;30;43m"  # how the CLI's table marks a matched span (render.MATCH_STYLE) on a colour terminal
# title -> (origin, relative path, format, tags)
NAMED = {
    "Enter Sandman": ("nas", "m/enter.flac", "flac", {"artist": "Metallica", "album": "Metallica", "year": 1991}),
    "Sad but True": ("nas", "m/sad.flac", "flac", {"artist": "Metallica", "album": "Metallica", "year": 1991}),
    "Battery": ("nas", "m/battery.wav", "wav", {"artist": "Metallica", "album": "Master of Puppets",
                                                "year": 1986}),
    "Jóga": ("nas", "b/joga.flac", "flac", {"artist": "Björk", "album": "Homogenic", "year": 1997,
                                            "genre": "Electronic"}),
    "Petit déjeuner": ("nas", "c/petit.wav", "wav", {"artist": "Café Ñoño", "album": "Desayuno", "year": 2005}),
    "Fuel": ("b2", "m/fuel.flac", "flac", {"artist": "Metallica", "album": "Reload", "year": 1997}),
    "Army of Me": ("b2", "b/army.wav", "wav", {"artist": "Björk", "album": "Post", "year": 1995,
                                              "genre": "Electronic"}),
}
STYLE = {"flac": "vorbis", "wav": "id3v2.4"}


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("search-lib")
    roots = {"nas": base / "nas", "b2": base / "b2"}
    sources = {}
    for key, (title, (origin, rel, fmt, tags)) in enumerate(NAMED.items(), start=1):
        sources[title] = tagged(roots[origin] / rel, fmt, STYLE[fmt], {"title": title, "track": 1, **tags},
                                key=key)
    seed = write_wav(base / "seed.wav", 4096, seed=7)
    for i in range(FILLERS):
        path = roots["nas"] / "filler" / f"{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed, path)
        write_tags(path, "wav", TagPlan("id3v2.4", {"title": f"Filler {i:04d}", "artist": "Filler Band",
                                                    "album": f"Filler Vol {i // 100}", "track": i % 100 + 1,
                                                    "year": 2010}))
    config = base / "musicfs.toml"
    config.write_text("".join(f'[[origins]]\nid = "{o}"\ntype = "local"\npath = {json.dumps(str(r))}\n\n'
                              for o, r in roots.items())
                      + '[[collections]]\nname = "Björk"\nquery = "artist:bjork"\n')
    return {"roots": roots, "sources": sources, "config": config}


@pytest.fixture(scope="module")
def mounted(library, tmp_path_factory):
    with mount_library(config=library["config"], work=tmp_path_factory.mktemp("search-mount")) as mounted:
        yield mounted


@pytest.fixture(scope="module")
def api(mounted):
    with ControlClient.for_mount(mounted.state_dir, mounted.mountpoint) as client:
        yield client


def cli(state: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(musicfs_cmd("--state-dir", str(state), *args), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "250", **(env or {})})


def cli_json(state: Path, *args: str):
    result = cli(state, *args, "--json")
    assert result.returncode == 0 and not result.stderr, result.stderr
    return json.loads(result.stdout)



def opened(mounted, library, results: list[dict]) -> set[str]:
    """The titles of ``results``, each checked: its path opens in the mount (same inode as the
    hit says) and holds the bytes of the file it came from."""
    titles = set()
    for hit in results:
        path = mounted.mountpoint / hit["virtual_path"]
        assert path.stat().st_ino == hit["inode"], hit
        assert path.read_bytes() == library["sources"][hit["title"]].read_bytes(), hit["virtual_path"]
        titles.add(hit["title"])
    return titles


def test_cli_json_finds_the_tracks_at_paths_that_open_in_the_mount(mounted, library):
    state = mounted.state_dir
    page = cli_json(state, "search", "artist:metallica", "year:1991")
    assert page["total"] == 2 and page["query_time_ms"] > 0
    assert opened(mounted, library, page["results"]) == {"Enter Sandman", "Sad but True"}
    for query, titles in (("bjork", {"Jóga", "Army of Me"}), ("cafe nono", {"Petit déjeuner"}),
                          ("metal", {"Enter Sandman", "Sad but True", "Battery", "Fuel"}),
                          ('"master of puppets"', {"Battery"}), ("metallica -year:1991 -origin:b2", {"Battery"}),
                          ("format:wav year:1980..1999", {"Battery", "Army of Me"})):
        page = cli_json(state, "search", query)
        assert opened(mounted, library, page["results"]) == titles, query
        assert page["total"] == len(titles), query


def test_cli_restricts_to_fields_and_to_an_origin(mounted, library):
    state = mounted.state_dir
    assert cli_json(state, "search", "metallica", "--field", "title")["total"] == 0  # an artist, never a title
    page = cli_json(state, "search", "metallica", "--field", "album", "--field", "title")
    assert opened(mounted, library, page["results"]) == {"Enter Sandman", "Sad but True"}
    page = cli_json(state, "search", "metallica", "--origin", "b2")
    assert opened(mounted, library, page["results"]) == {"Fuel"}


def test_cli_table_shows_the_hits_highlighted_with_the_count_and_time(mounted, library):
    result = cli(mounted.state_dir, "search", "bjork", env={"FORCE_COLOR": "1"})
    assert result.returncode == 0 and not result.stderr, result.stderr
    out = result.stdout
    mnt = str(daemon.canonical(mounted.mountpoint))
    page = cli_json(mounted.state_dir, "search", "bjork")
    for hit in page["results"]:
        for value in (hit["title"], hit["album"], str(hit["year"]), hit["format"], f"{mnt}/{hit['virtual_path']}"):
            assert value in out, value
    assert out.count(f"{MATCH}Björk") == 2  # the matched span of each hit's artist, marked
    assert "2 of 2 matches in " in out and " ms (from the mount at " in out
    plain = cli(mounted.state_dir, "search", "filler", "band", "--limit", "5", "--offset", "10").stdout
    assert "Filler 0010" in plain and "Filler 0015" not in plain
    assert f"5 of {FILLERS} matches (from #11) in " in plain and "\x1b[" not in plain  # no colour in a pipe


def test_api_search_and_stream_answer_the_same_tracks(mounted, library, api):
    page = api.search("metallica", limit=3)
    assert page["total"] == 4 and len(page["results"]) == 3
    assert [r["score"] for r in page["results"]] == sorted((r["score"] for r in page["results"]), reverse=True)
    for hit in page["results"]:
        assert set(hit) >= {"virtual_path", "title", "artist", "album", "score", "highlights"}
        assert hit["highlights"]["artist"] == [[0, 9]]
    rest = api.search("metallica", offset=3)
    assert opened(mounted, library, page["results"] + rest["results"]) == {
        "Enter Sandman", "Sad but True", "Battery", "Fuel"}
    assert opened(mounted, library, api.search("metallica", origin="b2")["results"]) == {"Fuel"}
    assert api.search("metallica", fields=["title"])["total"] == 0
    assert api.search("metallica", fields=["title", "album"])["total"] == 2
    raw = httpx.Client(transport=httpx.HTTPTransport(uds=str(api.socket)), base_url="http://musicfs")
    with raw:  # comma-separated fields, as a browser or curl sends them
        answer = raw.get("/v1/search", params={"q": "metallica", "fields": "title,album"})
        assert answer.status_code == 200 and answer.json()["total"] == 2
    with pytest.raises(ControlError, match=r"404.*no origin 'nope'"):
        api.search("metallica", origin="nope")

    lines = list(api.search_stream("filler band"))
    done = lines.pop()
    assert done["done"] is True and done["total"] == FILLERS == len(lines)
    assert len({line["virtual_path"] for line in lines}) == FILLERS
    first = api.search("filler band", limit=50)
    assert [line["virtual_path"] for line in lines[:50]] == [r["virtual_path"] for r in first["results"]]
    (fuel, done) = api.search_stream("fuel", fields=["title"], origin="b2")
    assert opened(mounted, library, [fuel]) == {"Fuel"} and done["total"] == 1


MALFORMED = {
    '"enter sandman': "unbalanced quote",
    "colour:red": "unknown field 'colour'",
    "year:1999..1990": "runs backwards",
    "year:soon": "is not a year or a range",
    "x" * 5000: "query too long",
}


def test_a_malformed_query_is_a_clear_cli_error_and_a_400(mounted, api):
    for query, words in MALFORMED.items():
        refused(cli(mounted.state_dir, "search", query), words)
        with pytest.raises(ControlError, match=r"HTTP 400: .*" + words.replace("(", r"\(")):
            api.search(query)
        with pytest.raises(ControlError, match="HTTP 400"):
            next(iter(api.search_stream(query)))
    raw = httpx.Client(transport=httpx.HTTPTransport(uds=str(api.socket)), base_url="http://musicfs")
    with raw:
        hostile = ["NEAR(a b)", "*", "^x", "a AND OR NOT b", "\u200f\u05e9\u05dc\u05d5\u05dd", "🤘" * 300, '"',
                   "'; DROP TABLE tracks; --", "a\x00b", "title:", "-", "{title}:x", "x" * 10_000]
        for query in hostile:
            answer = raw.get("/v1/search", params={"q": query})
            assert answer.status_code in (200, 400), (query, answer.status_code, answer.text)
            if answer.status_code == 400:
                detail = answer.json()["detail"]
                assert detail and "sqlite" not in detail.lower() and "fts5" not in detail.lower(), detail
        answer = raw.get("/v1/search", params={"q": "x", "fields": "colour"})
        assert answer.status_code == 400 and "unknown field 'colour'" in answer.json()["detail"]
    log = mounted.log_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def test_a_stream_client_that_leaves_costs_nothing(mounted, api):
    """Clients that read one line and hang up, many times: the daemon logs nothing alarming, keeps
    no search connection busy, and the next stream is whole."""
    for _ in range(8):
        with ControlClient.for_mount(mounted.state_dir, mounted.mountpoint) as client:
            stream = client.search_stream("filler")
            assert next(stream)["artist"] == "Filler Band"
            stream.close()
    lines = list(api.search_stream("filler"))
    assert len(lines) == FILLERS + 1 and lines[-1]["done"] is True
    assert api.search("bjork")["total"] == 2
    log = mounted.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_collections_through_the_daemon(mounted, api):
    state = mounted.state_dir
    deadline = time.monotonic() + 10  # the config's collections are saved just after the mount serves
    while not (listed := cli_json(state, "collection", "list")) and time.monotonic() < deadline:
        time.sleep(0.1)
    (config_one,) = listed
    assert (config_one["name"], config_one["query"], config_one["source"]) == ("Björk", "artist:bjork", "config")
    added = cli(state, "collection", "add", "Nineties Metallica", "artist:metallica year:1990..1999")
    assert added.returncode == 0 and "Nineties Metallica" in added.stdout, added.stderr
    listed = {c["name"]: c for c in cli_json(state, "collection", "list")}
    assert set(listed) == {"Björk", "Nineties Metallica"} and listed["Nineties Metallica"]["source"] == "user"
    assert {c["name"] for c in api.collections()} == set(listed)  # one table, two doors
    table = cli(state, "collection", "list").stdout
    assert "Nineties Metallica" in table and "artist:metallica year:1990..1999" in table
    folder = mounted.mountpoint / ".collections" / "Nineties Metallica"
    assert len(os.listdir(folder)) == 3  # Enter Sandman, Sad but True, Fuel

    refused(cli(state, "collection", "add", ".hidden", "x"), "starts with a dot")
    refused(cli(state, "collection", "add", "a/b", "x"), "contains '/'")
    refused(cli(state, "collection", "add", "ok", "year:1999..1990"), "runs backwards")
    refused(cli(state, "collection", "add", "Nineties Metallica", "x"), "exists")
    refused(cli(state, "collection", "remove", "Björk"), "comes from the config file")
    refused(cli(state, "collection", "remove", "nope"), "no collection named 'nope'")
    with pytest.raises(ControlError, match="HTTP 422"):
        api.post("/v1/collections", {"name": "x", "query": "y", "colour": "red"})

    removed = cli(state, "collection", "remove", "Nineties Metallica")
    assert removed.returncode == 0 and "removed" in removed.stdout
    assert [c["name"] for c in api.collections()] == ["Björk"]
    assert "Nineties Metallica" not in os.listdir(folder.parent)  # gone from the next listing
    time.sleep(1.2)  # the kernel keeps a generated folder's name for a second
    assert not folder.exists()


def test_search_with_no_daemon_reads_the_index_file(mounted, tmp_path):
    """A library no daemon serves is searched from its index file: a copy of the mount's index
    under a state directory where nothing runs, found by --index and as the only library there."""
    state = tmp_path / "state"
    (state / "libraries").mkdir(parents=True)
    copy = state / "libraries" / "music.db"
    with sqlite3.connect(f"file:{mounted.index}?mode=ro", uri=True) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    assert daemon.running_mounts(state) == []
    through_daemon = cli_json(mounted.state_dir, "search", "artist:metallica", "year:1991")
    for args in (("--index", str(copy)), ()):
        page = cli_json(state, "search", *args, "artist:metallica", "year:1991")
        assert page["total"] == 2
        assert ([(r["virtual_path"], r["inode"]) for r in page["results"]]
                == [(r["virtual_path"], r["inode"]) for r in through_daemon["results"]])
    text = cli(state, "search", "bjork").stdout
    assert "2 of 2 matches in " in text and f"(from the index {copy})" in text
    refused(cli(state, "search", '"open'), "unbalanced quote")
    assert cli(state, "collection", "add", "Fuel", "title:fuel").returncode == 0
    assert [c["name"] for c in cli_json(state, "collection", "list")] == ["Björk", "Fuel"]
    assert cli(state, "collection", "remove", "Fuel").returncode == 0
