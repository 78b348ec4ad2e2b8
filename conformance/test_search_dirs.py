"""``/.search/<query>/`` and ``/.collections/<name>/`` on a real mount (issue 13, FS-9's mount surface).

One daemon serves every check here (a module fixture): a copy of the sample library (hard links),
scanned, with one collection saved in the index file by ``musicfs collection add --index`` before
the mount. It runs through :mod:`tests.search_delay`, which makes searches for one marker word
sleep in their worker thread (a long search over a big index); every other query is the real
thing. What a user relies on:

* a query typed as a folder name lists the matching tracks (the tree's tags decide which, read
  back through the mount's xattrs, not the engine's own answer), best first, under legal unique
  names whose order under ``ls`` is the rank order;
* each entry *is* the tag tree's file: same inode number, same bytes; and a path into a query
  folder opens without a listing before it (a player given a path);
* a malformed query is EINVAL with one log line naming the problem, and any punctuation or
  Unicode a user types is harmless;
* collections show under ``/.collections``, those saved while mounted too, and show a rescan's new
  matches;
* a slow listing holds up nothing else.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import pytest
import trio

from conformance.daemons import cleanup, mount_args, wait_serving
from conformance.expected import sha256_of
from musicfs.control.client import ControlClient
from musicfs.index.names import is_legal
from musicfs.search.service import SearchService
from tests.harness import errno_of, mount_status, mounted_tracks, musicfs_cmd, scan

pytestmark = pytest.mark.req("FS-9")

SLOW_MARKER = "slowly"  # a query holding this word is searched SLOW_SECONDS longer
SLOW_SECONDS = 2.0
RANKED = re.compile(r"^(\d{3,}) (.+)$")


class Library:
    def __init__(self, work: Path, origin: Path, proc: subprocess.Popen):
        self.work, self.origin, self.proc = work, origin, proc
        self.mnt, self.state, self.index = work / "mnt", work / "state", work / "state" / "index.db"
        self.log = work / "daemon.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def tree(self) -> dict[Path, dict[str, str]]:
        """Every file of the tag tree with its tags, as the mount's xattrs give them."""
        files = {}
        for path in mounted_tracks(self.mnt).values():
            prefix = "user.musicfs."
            files[path] = {name[len(prefix):]: os.getxattr(path, name).decode()
                           for name in os.listxattr(path) if name.startswith(prefix)}
        return files

    def ranked(self, text: str) -> list:
        """The engine's hits for ``text`` in rank order, asked on the index file from this process."""
        service = SearchService(self.index)
        try:
            return trio.run(lambda: service.search(text, limit=1000)).hits
        finally:
            service.close()


@pytest.fixture(scope="module")
def library(sample_library, tmp_path_factory):
    work = tmp_path_factory.mktemp("search-dirs")
    origin = work / "origin"
    shutil.copytree(sample_library[0], origin, copy_function=os.link)
    lib = Library(work, origin, None)  # type: ignore[arg-type]
    lib.mnt.mkdir()
    scan(origin, lib.state, lib.index)
    subprocess.run(musicfs_cmd("--state-dir", str(lib.state), "collection", "add", "hits", "title:hit",
                               "--index", str(lib.index)), check=True, capture_output=True)
    musicfs = mount_args(lib.state, lib.index, origin, work / "cache", lib.mnt)[3:]  # without the interpreter
    cmd = [sys.executable, "-m", "tests.search_delay", "--marker", SLOW_MARKER, "--seconds", str(SLOW_SECONDS),
           "--", *musicfs]
    with cleanup(lib.mnt) as spawned, open(lib.log, "wb") as out:
        lib.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        spawned.append(lib.proc)
        wait_serving(lib.mnt, lib.proc)
        yield lib
        lib.proc.send_signal(signal.SIGTERM)  # a clean unmount; cleanup kills it if it hangs
        try:
            lib.proc.wait(15)
        except subprocess.TimeoutExpired:
            pass


def words(text: str) -> list[str]:
    """Words as the index folds them: no case, no accents."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c))
    return re.findall(r"\w+", folded)


def in_field(tags: dict[str, str], fields: tuple[str, ...], phrase: str) -> bool:
    wanted = words(phrase)
    for field in fields:
        have = words(tags.get(field, ""))
        if any(have[i:i + len(wanted)] == wanted for i in range(len(have))):
            return True
    return False


def listing(folder: Path) -> list[str]:
    """A folder's names in the order ``ls`` shows them (bytewise, as with LC_ALL=C)."""
    out = subprocess.run(["ls", "-1", str(folder)], capture_output=True, check=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    return [os.fsdecode(line) for line in out.splitlines()]



def test_a_query_folder_lists_the_matching_tracks_best_first_under_legal_unique_names(library):
    text = 'artist:"codec club" year:2022'
    tree = library.tree()
    by_inode = {os.stat(path).st_ino: path for path in tree}
    expected = {path for path, tags in tree.items()
                if in_field(tags, ("artist", "album_artist"), "codec club") and tags.get("year") == "2022"}
    assert len(expected) >= 5, "the sample library changed: pick another query"

    folder = library.mnt / ".search" / text
    names = listing(folder)
    assert len(set(names)) == len(names) and all(is_legal(name) for name in names), names
    assert [int(RANKED.match(name).group(1)) for name in names] == list(range(1, len(names) + 1)), \
        "ls does not show the entries in rank order"
    listed = [by_inode[os.stat(folder / name).st_ino] for name in names]
    assert set(listed) == expected
    # best first: the engine's order for this query
    assert [os.stat(folder / name).st_ino for name in names] == [hit.node_id for hit in library.ranked(text)]
    for name, path in zip(names, listed):  # the name says which track it is, with the tree file's extension
        tags = tree[path]
        assert name.endswith(path.suffix) and f"{tags['artist']} - {tags['title']}" in name, (name, path)
    assert text in os.listdir(library.mnt / ".search"), "/.search does not list the query just used"


def test_an_entry_is_the_tree_file_and_opens_without_a_listing(library):
    text = "title:hit"
    folder = library.mnt / ".search" / text
    names = sorted(os.listdir(folder))
    hits = library.ranked(text)
    assert len(names) == len(hits) >= 5
    for name, hit in zip(names, hits):
        entry, tree_file = folder / name, library.mnt / hit.virtual_path
        assert os.stat(entry).st_ino == os.stat(tree_file).st_ino == hit.node_id
        assert os.stat(entry).st_size == os.stat(tree_file).st_size
        assert sha256_of(entry) == sha256_of(tree_file)
        assert os.getxattr(entry, "user.musicfs.real_path") == os.getxattr(tree_file, "user.musicfs.real_path")
    # the same query in other words (case folds): a folder never listed, its paths opened directly
    fresh = library.mnt / ".search" / "TITLE:Hit"
    for name in (names[0], names[-1]):
        with open(fresh / name, "rb") as f:
            assert sha256_of(folder / name) == hashlib.sha256(f.read()).hexdigest()
    assert errno_of(os.stat, fresh / "999 Nobody - Nothing.flac") == errno.ENOENT
    assert errno_of(os.stat, fresh / ".hidden") == errno.ENOENT


MALFORMED = {  # query -> words the log line must hold (the problem, named)
    'artist:"metallica': "unbalanced quote",
    "colour:blue": "unknown field 'colour'",
    "year:1999..1990": "runs backwards",
    "year:nineties": "is not a year",
    "artist:": "needs a value",
}


def test_a_malformed_query_is_einval_with_one_log_line_naming_the_problem(library):
    for text in MALFORMED:
        assert errno_of(os.listdir, library.mnt / ".search" / text) == errno.EINVAL, text
        assert errno_of(os.stat, library.mnt / ".search" / text / "001 x.flac") == errno.EINVAL, text
    text = library.log_text()
    for query, problem in MALFORMED.items():
        lines = [line for line in text.splitlines() if "refused" in line and repr(query) in line]
        assert len(lines) == 2 and all(problem in line for line in lines), (query, lines)  # one per request
    assert "Traceback" not in text
    assert library.proc.poll() is None and os.listdir(library.mnt)
    assert os.listdir(library.mnt / ".search" / "collider")
    assert not any(q in os.listdir(library.mnt / ".search") for q in MALFORMED), "a refused query is listed"


# each finds every track of Zoë Ångström: the characters around the word are plain text
FINDS_ZOE = ["^zoe", "zoe*", "Zoë", "ZOË:", "'zoe'", "🎸 zoe", "zoe (((", "zoe ^*:", "zoe\\", "zoe -NEAR"]
# none of these is an error: FTS5 operators, shell and regex punctuation, other scripts
HARMLESS = ["NEAR(zoe unit)", 'zoe* "ångström"', "AND OR NOT", "zoe OR", "a*b", "日本語 音楽",
            "zoe -\"NEAR\" {a} [b] (c) $d %e &f ;g |h ~i `j` 'k' \\l"]
# nothing to search for, or a quote left open: EINVAL, never EIO
REFUSED = ["(((", "'", "\\", "🎸", "*", "-", ":", '"', 'NEAR("', "a:b:c"]


def test_punctuation_fts_syntax_and_unicode_in_a_query_are_harmless(library):
    zoe = {os.stat(path).st_ino for path, tags in library.tree().items()
           if in_field(tags, ("artist", "album_artist"), "zoe")}
    assert zoe
    for text in FINDS_ZOE:
        folder = library.mnt / ".search" / text
        assert zoe <= {os.stat(folder / name).st_ino for name in os.listdir(folder)}, text
    for text in HARMLESS:
        code = errno_of(os.listdir, library.mnt / ".search" / text)
        assert code is None, f"{text!r}: errno {code}"
    for text in REFUSED:
        assert errno_of(os.listdir, library.mnt / ".search" / text) == errno.EINVAL, text
    assert library.proc.poll() is None
    assert "Traceback" not in library.log_text()
    assert mount_status(library.mnt)["fuse"]["errors"].get("readdir", 0) == 0, "a listing failed"


def test_collections_are_listed_and_always_current(library):
    collections = library.mnt / ".collections"
    assert os.listdir(collections) == ["hits"]
    tree = library.tree()
    matching = {os.stat(path).st_ino for path, tags in tree.items() if in_field(tags, ("title",), "hit")}
    folder = collections / "hits"
    assert {os.stat(folder / name).st_ino for name in os.listdir(folder)} == matching

    # one saved while mounted, through the API: there at once
    with ControlClient.for_mount(library.state, library.mnt) as client:
        client.add_collection("the sixties", "year:1960..1969")
        assert sorted(os.listdir(collections)) == ["hits", "the sixties"]
        sixties = {os.stat(path).st_ino for path, tags in tree.items() if tags.get("year", "").startswith("196")}
        assert {os.stat(collections / "the sixties" / n).st_ino
                for n in os.listdir(collections / "the sixties")} == sixties
        assert errno_of(os.listdir, collections / "no such collection") == errno.ENOENT

        # a new matching track, then a rescan: the collection shows it
        source = next(path for path, tags in tree.items() if tags.get("title") == "Hit Number 1")
        added = library.origin / "incoming" / "late" / "Hit Number 1 (again).flac"
        added.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(os.path.join(library.origin, os.getxattr(source, "user.musicfs.real_path").decode()), added)
        list(client.stream("POST", "/v1/origins/local/rescan"))
    now = {os.stat(folder / name).st_ino for name in os.listdir(folder)}
    new_file = next(path for path in mounted_tracks(library.mnt).values()
                    if os.getxattr(path, "user.musicfs.real_path").decode() == "incoming/late/Hit Number 1 (again).flac")
    assert now == matching | {os.stat(new_file).st_ino}, "the collection did not show the rescan's new match"


@pytest.mark.alone
def test_a_slow_listing_holds_up_nothing_else(library):
    """While one query's search runs (SLOW_SECONDS in its worker thread), other requests answer
    promptly: the listing waits alone."""
    slow = library.mnt / ".search" / f"{SLOW_MARKER} alpha"
    took: list[float] = []

    def list_slowly() -> None:
        started = time.monotonic()
        os.listdir(slow)
        took.append(time.monotonic() - started)

    albums = sorted({path.parent for path in mounted_tracks(library.mnt).values()})
    lister = threading.Thread(target=list_slowly)
    lister.start()
    time.sleep(0.3)  # the listing is under way
    durations, in_flight = [], []
    try:
        for album in albums[:10]:
            started = time.monotonic()
            status = mount_status(library.mnt)  # open and read: always answered by the daemon
            os.listdir(album)  # readdir: always answered by the daemon
            os.stat(library.mnt / ".search" / "collider")
            durations.append(time.monotonic() - started)
            in_flight.append(status["fuse"]["in_flight"])
        assert lister.is_alive(), "the slow listing ended early: nothing was measured alongside it"
    finally:
        lister.join(SLOW_SECONDS + 10)
    assert took and took[0] >= SLOW_SECONDS
    assert max(in_flight) >= 2, "the slow readdir was not in flight while the others were answered"
    assert max(durations) < 0.5, f"other requests waited for the slow listing: {max(durations):.3f} s"
