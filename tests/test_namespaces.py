"""Namespaces without a kernel: the router's ranges and names, and the result folders' rules.

Operations no longer checks inode ranges itself, so the router is what keeps
a raw inode from reaching the tag tree (or a tree inode from reaching a
generated file): these checks pin its ranges and its names. The result
folders of ``/.search`` and ``/.collections`` are checked with a fake search
and a fake clock, for what a real mount cannot show quickly: which requests
search again, what is counted as handed to the kernel, how names are made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
import trio

from musicfs.errors import NotFound, QueryError
from musicfs.fuse.attrs import AttrPolicy, node_attributes
from musicfs.fuse.namespaces import ResultDirs, Router, SearchNamespace
from musicfs.fuse.namespaces.covers import COVERS_BASE
from musicfs.fuse.namespaces.offline import OFFLINE_BASE
from musicfs.fuse.namespaces.results import entry_names
from musicfs.index.names import is_legal
from musicfs.index.schema import ROOT_ID
from musicfs.vfs.hidden import HIDDEN_BASE
from musicfs.vfs.node import Node
from musicfs.vfs.rawview import RAW_BASE


class Fake:
    """A namespace that says who it is: lookup and getattr answer (its name, the inode asked)."""

    def __init__(self, label: str, dir_name: str = "", inode_base: int = 0):
        self.label, self.dir_name, self.inode_base = label, dir_name, inode_base
        self.root_inode = inode_base or ROOT_ID

    async def lookup(self, parent: int, name: str):
        if name.startswith("."):
            raise NotFound(name)
        return (self.label, "lookup", parent, name)

    async def getattr(self, inode: int):
        return (self.label, "getattr", inode)


SEARCH_BASE, COLLECTIONS_BASE = HIDDEN_BASE + (2 << 40), HIDDEN_BASE + (3 << 40)


@pytest.fixture
def router():
    specials = [Fake("raw", ".origins", RAW_BASE), Fake("hidden", ".musicfs", HIDDEN_BASE),
                Fake("collections", ".collections", COLLECTIONS_BASE), Fake("search", ".search", SEARCH_BASE),
                Fake("offline", ".offline", OFFLINE_BASE)]
    return Router(Fake("tree"), specials, entered=[Fake("covers", "", COVERS_BASE)])


@pytest.mark.parametrize(("inode", "label"), [
    (ROOT_ID, "tree"), (HIDDEN_BASE - 1, "tree"), (HIDDEN_BASE, "hidden"), (HIDDEN_BASE + 2, "hidden"),
    (RAW_BASE - 1, "hidden"), (RAW_BASE, "raw"), (RAW_BASE + 10**6, "raw"), (SEARCH_BASE, "search"),
    (SEARCH_BASE + 5, "search"), (COLLECTIONS_BASE - 1, "search"), (COLLECTIONS_BASE + 7, "collections"),
    (COVERS_BASE - 1, "collections"), (COVERS_BASE + 3, "covers"), (OFFLINE_BASE - 1, "covers"),
    (OFFLINE_BASE + ROOT_ID, "offline"), (OFFLINE_BASE + 10**9, "offline"),
])
def test_each_inode_goes_to_the_namespace_owning_its_range(router, inode, label):
    assert router(inode).label == label


def test_special_names_are_found_from_the_root_only(router):
    for name, label, base in ((".musicfs", "hidden", HIDDEN_BASE), (".origins", "raw", RAW_BASE),
                              (".search", "search", SEARCH_BASE), (".collections", "collections",
                                                                     COLLECTIONS_BASE),
                              (".offline", "offline", OFFLINE_BASE)):
        assert trio.run(router.lookup, ROOT_ID, name) == (label, "getattr", base)
    # below the root the name is the tree's to answer (and it has none such)
    with pytest.raises(NotFound):
        trio.run(router.lookup, 5, ".musicfs")
    # other names of the root, and names in a special directory, go to the owner of the parent
    assert trio.run(router.lookup, ROOT_ID, "Artist") == ("tree", "lookup", ROOT_ID, "Artist")
    assert trio.run(router.lookup, SEARCH_BASE, "year:1991") == ("search", "lookup", SEARCH_BASE, "year:1991")


def test_overlapping_ranges_and_clashing_names_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        Router(Fake("tree"), [Fake("a", ".a", HIDDEN_BASE), Fake("b", ".b", HIDDEN_BASE)])
    with pytest.raises(ValueError, match="distinct"):
        Router(Fake("tree"), [Fake("a", ".a", HIDDEN_BASE), Fake("b", ".a", RAW_BASE)])
    with pytest.raises(ValueError, match="dot"):
        Router(Fake("tree"), [Fake("a", "Artist", HIDDEN_BASE)])


# -- result folders (/.search, /.collections) ------------------------------------------------
@dataclass(frozen=True)
class FakeHit:
    node_id: int
    virtual_path: str
    title: str | None
    artist: str | None


@dataclass
class FakePage:
    hits: list


class FakeTree:
    """The tag tree's side of a result folder: nodes by inode, and the entries remembered."""

    def __init__(self, nodes: dict[int, Node]):
        self.nodes = nodes
        self.remembered: list[int] = []

    def node(self, inode: int) -> Node:
        if inode not in self.nodes:
            raise NotFound(f"no node {inode}")
        return self.nodes[inode]

    def remember(self, node: Node) -> None:
        self.remembered.append(node.id)

    def attributes(self, node: Node):
        return node_attributes(node, AttrPolicy())


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def hits_for(count: int) -> list[FakeHit]:
    return [FakeHit(10 + i, f"Artist/Album/{i:02d} Song {i}.flac", f"Song {i}", "Artist") for i in range(count)]


def folder(count: int = 5, **kwargs):
    hits = hits_for(count)
    tree = FakeTree({h.node_id: Node(h.node_id, 2, h.virtual_path.rsplit("/", 1)[1], "file", h.node_id, 1000 + h.node_id,
                                     7) for h in hits})
    asked: list[tuple[str, int]] = []

    async def search(text, *, limit):
        asked.append((text, limit))
        return FakePage(hits[:limit])

    clock = Clock()
    return ResultDirs(search, tree, clock=clock, **kwargs), tree, asked, clock, hits


def test_result_names_are_legal_unique_ranked_and_keep_the_extension():
    hits = [FakeHit(1, "A/B/01 x.flac", "Same", "Band"), FakeHit(2, "A/B/02 y.flac", "Same", "Band"),
            FakeHit(3, "A/B/03 z.ogg", None, None), FakeHit(4, "A/B/x.mp3", "é" * 300, "Ω/NUL\x00"),
            FakeHit(5, "A/B/.hidden.opus", ".dot", None)]
    names = entry_names(hits)
    assert names[:3] == ["001 Band - Same.flac", "002 Band - Same.flac", "003 03 z.ogg"]
    assert names[3].startswith("004 Ω_NUL - é") and names[3].endswith(".mp3") and len(names[3].encode()) <= 255
    assert names[4] == "005 .dot.opus"
    assert all(is_legal(n) for n in names) and len(set(names)) == len(names)
    wide = entry_names(hits_for(1200))  # more than 999: four digits, so ls still sorts by rank
    assert wide[0].startswith("0001 ") and wide[-1].startswith("1200 ") and sorted(wide) == wide


def listed(dirs: ResultDirs, directory: int, room: int = 10**6, start: int = 0):
    out = []

    def reply(name, attr, next_id):
        if len(out) >= room:
            return False
        out.append((name, attr.st_ino, next_id, attr.entry_timeout))
        return True

    trio.run(dirs.readdir, directory, "q", start, reply)
    return out


def test_every_listing_searches_again_and_its_later_pages_do_not():
    dirs, tree, asked, clock, hits = folder(5, max_results=4)
    first = listed(dirs, 7, room=2)
    assert [ino for _, ino, _, _ in first] == [h.node_id for h in hits[:2]] and asked == [("q", 4)]
    assert tree.remembered == [h.node_id for h in hits[:2]], "an entry the kernel did not take was counted"
    rest = listed(dirs, 7, start=first[-1][2])
    assert [ino for _, ino, _, _ in rest] == [h.node_id for h in hits[2:4]] and len(asked) == 1
    assert {timeout for *_, timeout in first + rest} == {1.0}  # short kernel timeouts: always current
    listed(dirs, 7)
    assert len(asked) == 2, "a new listing answered from kept results"


def test_a_lookup_without_a_listing_searches_and_later_ones_use_the_kept_results():
    dirs, tree, asked, clock, hits = folder(3, keep=5.0)
    name = entry_names(hits)[1]
    assert trio.run(dirs.lookup, 9, "q", name).st_ino == hits[1].node_id and len(asked) == 1
    clock.now += 4
    assert trio.run(dirs.lookup, 9, "q", entry_names(hits)[2]).st_ino == hits[2].node_id and len(asked) == 1
    clock.now += 2  # past `keep`: searched again
    assert trio.run(dirs.lookup, 9, "q", name).st_ino == hits[1].node_id and len(asked) == 2
    assert tree.remembered == [hits[1].node_id, hits[2].node_id, hits[1].node_id]
    for probe in (".hidden", "desktop.ini", "Folder.jpg"):  # not names these folders give: no search
        with pytest.raises(NotFound):
            trio.run(dirs.lookup, 9, "q", probe)
    assert len(asked) == 2


def test_a_hit_whose_file_a_rescan_removed_is_left_out():
    dirs, tree, asked, clock, hits = folder(3)
    del tree.nodes[hits[1].node_id]
    assert [ino for _, ino, _, _ in listed(dirs, 7)] == [hits[0].node_id, hits[2].node_id]
    with pytest.raises(NotFound):
        trio.run(dirs.lookup, 7, "q", entry_names(hits)[1])


class FakeService:
    def parse(self, text: str):
        if text.count('"') % 2:
            raise QueryError(f"unbalanced quote in {text}")
        return text


def test_a_query_folder_keeps_its_inode_and_a_malformed_query_is_refused_once_logged(caplog):
    dirs, *_ = folder(3)
    searches = SearchNamespace(FakeService(), dirs, AttrPolicy(), recent=3)
    root = searches.root_inode
    first = trio.run(searches.lookup, root, "artist:a").st_ino
    assert trio.run(searches.lookup, root, "artist:b").st_ino != first
    assert trio.run(searches.lookup, root, "artist:a").st_ino == first
    for text in ("c", "d", "e"):
        trio.run(searches.lookup, root, text)
    names = []
    trio.run(searches.readdir, root, 0, lambda name, attr, next_id: names.append(name) or True)
    assert names == ["c", "d", "e"], "/.search lists more than the recent queries, or not in order"
    assert trio.run(searches.lookup, root, "artist:a").st_ino == first, "an inode changed for the same text"
    with caplog.at_level(logging.WARNING), pytest.raises(QueryError):
        trio.run(searches.lookup, root, 'artist:"x')
    assert [r.getMessage() for r in caplog.records] == ['search \'artist:"x\' refused: unbalanced quote in artist:"x']
    with pytest.raises(NotFound):
        trio.run(searches.lookup, root, ".hidden")
    with pytest.raises(NotFound):
        trio.run(searches.getattr, root + 10**6)


@pytest.mark.parametrize("policy", [AttrPolicy(), AttrPolicy(uid=1000, gid=100, entry_timeout=1.5, attr_timeout=60.0),
                                    AttrPolicy(uid=0, gid=0, entry_timeout=300.0, attr_timeout=0.0)])
def test_attributes_carry_every_field_of_the_policy_and_the_node(policy):
    """Fields a new object already holds are not set again: whatever the policy, each entry still
    says exactly its owner, timeouts, mode, size and times."""
    file = Node(7, 2, "01 - A.flac", "file", 3, 1_000_001, 1_700_000_000_123_456_789)
    folder = Node(2, ROOT_ID, "Artist", "dir", None, 0, 0)
    for node, mode, size, nlink, mtime in ((file, 0o100444, 1_000_001, 1, file.mtime_ns),
                                           (folder, 0o40555, 0, 2, policy.dir_mtime_ns)):
        got = node_attributes(node, policy).__getstate__()
        assert {k: got[k] for k in ("st_ino", "generation", "entry_timeout", "attr_timeout", "st_mode",
                                    "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize",
                                    "st_blocks", "st_mtime_ns", "st_atime_ns", "st_ctime_ns")} == {
            "st_ino": node.id, "generation": 0, "entry_timeout": policy.entry_timeout,
            "attr_timeout": policy.attr_timeout, "st_mode": mode, "st_nlink": nlink, "st_uid": policy.uid,
            "st_gid": policy.gid, "st_rdev": 0, "st_size": size, "st_blksize": 4096,
            "st_blocks": (size + 511) // 512, "st_mtime_ns": mtime, "st_atime_ns": mtime, "st_ctime_ns": mtime}
