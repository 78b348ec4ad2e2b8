"""The FUSE ``Operations`` in process, without a kernel: answers, errno mapping, lookup counts.

The handlers run inside ``trio.run`` over a scanned index of the sample
library, wired the way :mod:`musicfs.mount` wires them (namespaces behind a
router). Only pyfuse3's ``readdir_reply`` (which needs a kernel request) is
replaced, by a recorder.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

import pyfuse3
import pytest
import trio

from musicfs.errors import OriginUnavailable
from musicfs.fuse.attrs import AttrPolicy
from musicfs.fuse.inodes import InodeTable
from musicfs.fuse.namespaces import HiddenNamespace, Router, TreeNamespace
from musicfs.fuse.operations import Operations
from musicfs.index.library import LibraryIndex
from musicfs.index.scanner import Scanner
from musicfs.index.schema import ROOT_ID
from musicfs.index.template import PathTemplate
from musicfs.origins.local import LocalOrigin
from musicfs.vfs.hidden import HIDDEN_DIR_NAME, HiddenFiles
from musicfs.vfs.reader import DirectReader
from musicfs.vfs.resolver import Resolver


@pytest.fixture(scope="module")
def index_path(sample_library, tmp_path_factory):
    path = tmp_path_factory.mktemp("ops") / "index.db"
    with LibraryIndex(path) as index:
        Scanner(index, LocalOrigin("local", sample_library[0]), PathTemplate(), workers=2).run()
    return path


@pytest.fixture
def ops(index_path, sample_library):
    index = LibraryIndex(index_path)
    reader = DirectReader({"local": LocalOrigin("local", sample_library[0])})
    hidden = HiddenFiles({"status.json": lambda: {"tracks": index.statistics()["tracks"]},
                          "errors.json": lambda: {"count": len(index.skipped())}})
    policy, inodes = AttrPolicy(), InodeTable()
    tree = TreeNamespace(index, Resolver(index.conn), reader, inodes, policy)
    operations = Operations(Router(tree, [HiddenNamespace(hidden, policy)]), inodes)
    yield operations
    reader.close()
    index.close()


def call(handler, *args):
    return trio.run(handler, *args)


def fuse_errno(handler, *args) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        call(handler, *args)
    return info.value.errno


def lookup_path(ops: Operations, path: str) -> pyfuse3.EntryAttributes:
    attr = call(ops.getattr, ROOT_ID)
    for part in path.split("/"):
        attr = call(ops.lookup, attr.st_ino, os.fsencode(part))
    return attr


def a_track(ops: Operations, fmt: str = "flac") -> tuple[str, dict]:
    """(virtual path, track row) of the largest track of a format."""
    row = ops.route.tree.index.conn.execute(
        "SELECT n.id, t.id FROM nodes n JOIN tracks t ON t.id = n.track_id WHERE t.format = ?"
        " ORDER BY t.size DESC LIMIT 1", (fmt,)).fetchone()
    return ops.route.tree.resolver.path_of(row[0]), ops.route.tree.index.track(row[1])


# -- read-only ---------------------------------------------------------------
MUTATING = {
    "setattr": lambda ino: (ino, pyfuse3.EntryAttributes(), pyfuse3.SetattrFields(), None, None),
    "mknod": lambda ino: (ino, b"x", stat.S_IFIFO | 0o644, 0, None),
    "mkdir": lambda ino: (ino, b"x", 0o755, None),
    "unlink": lambda ino: (ino, b"x", None),
    "rmdir": lambda ino: (ino, b"x", None),
    "symlink": lambda ino: (ino, b"x", b"target", None),
    "rename": lambda ino: (ino, b"a", ino, b"b", 0, None),
    "link": lambda ino: (ino, ROOT_ID, b"x", None),
    "create": lambda ino: (ino, b"x", 0o644, os.O_CREAT | os.O_WRONLY, None),
    "write": lambda ino: (1, 0, b"data"),
    "setxattr": lambda ino: (ino, b"user.musicfs.artist", b"x", None),
    "removexattr": lambda ino: (ino, b"user.musicfs.artist", None),
}


@pytest.mark.req("FS-4")
@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.req("CAS-5")) if "xattr" in name else name for name in sorted(MUTATING)
])
def test_every_mutating_handler_answers_erofs(ops, name):
    path, _ = a_track(ops)
    ino = lookup_path(ops, path).st_ino
    assert fuse_errno(getattr(ops, name), *MUTATING[name](ino)) == errno.EROFS
    assert ops.op_counts[name] == 1


@pytest.mark.req("FS-4")
@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND],
                         ids=["wronly", "rdwr", "trunc", "append"])
def test_open_for_writing_answers_erofs(ops, flags):
    path, _ = a_track(ops)
    assert fuse_errno(ops.open, lookup_path(ops, path).st_ino, flags, None) == errno.EROFS
    assert ops.statistics()["open_handles"] == 0


# -- answers -----------------------------------------------------------------
@pytest.mark.req("FS-5")
def test_lookup_getattr_open_read_release(ops, sample_library):
    path, track = a_track(ops)
    origin = (sample_library[0] / track["real_path"]).read_bytes()

    root = call(ops.getattr, ROOT_ID)
    assert root.st_ino == ROOT_ID and stat.S_ISDIR(root.st_mode)

    attr = lookup_path(ops, path)
    node = ops.route.tree.resolver.resolve(path)
    assert attr.st_ino == node.id
    assert stat.S_ISREG(attr.st_mode) and stat.S_IMODE(attr.st_mode) == 0o444
    assert attr.st_size == len(origin) == track["size"]
    assert attr.st_mtime_ns == track["mtime_ns"]
    again = call(ops.getattr, attr.st_ino)
    assert (again.st_ino, again.st_size, again.st_mode) == (attr.st_ino, attr.st_size, attr.st_mode)

    info = call(ops.open, attr.st_ino, os.O_RDONLY, None)
    try:
        data, offset = b"", 0
        while chunk := call(ops.read, info.fh, offset, 4096 * 3 + 1):
            data += chunk
            offset += len(chunk)
        assert data == origin
        assert call(ops.read, info.fh, len(origin) - 10, 100) == origin[-10:]
        assert call(ops.read, info.fh, len(origin) + 5, 100) == b""
        assert call(ops.read, info.fh, 7, 0) == b""
    finally:
        call(ops.release, info.fh)
    assert ops.route.tree.reader.statistics()["open_handles"] == 0 and ops.route.tree.reader.statistics()["open_fds"] == 0
    assert fuse_errno(ops.read, info.fh, 0, 10) == errno.EBADF


def test_lookup_errors(ops):
    """Misses and wrong kinds answer their own errno (no requirement states these yet)."""
    path, _ = a_track(ops)
    file_ino = lookup_path(ops, path).st_ino
    dir_ino = lookup_path(ops, path.rsplit("/", 1)[0]).st_ino
    assert fuse_errno(ops.lookup, ROOT_ID, b"no such artist") == errno.ENOENT
    assert fuse_errno(ops.lookup, file_ino, b"x") == errno.ENOENT
    assert fuse_errno(ops.opendir, file_ino, None) == errno.ENOTDIR
    assert fuse_errno(ops.open, dir_ino, os.O_RDONLY, None) == errno.EISDIR
    assert fuse_errno(ops.getattr, 10**9) == errno.ENOENT
    # the hidden directory is only found from the root
    assert fuse_errno(ops.lookup, dir_ino, HIDDEN_DIR_NAME.encode()) == errno.ENOENT


@pytest.mark.req("CAS-5")
def test_xattrs_carry_the_tags(ops):
    path, track = a_track(ops)
    ino = lookup_path(ops, path).st_ino
    assert call(ops.getxattr, ino, b"user.musicfs.artist", None) == track["artist"].encode()
    assert call(ops.getxattr, ino, b"user.musicfs.real_path", None) == track["real_path"].encode()
    assert call(ops.getxattr, ino, b"user.musicfs.origin", None) == b"local"
    names = call(ops.listxattr, ino, None)
    assert {b"user.musicfs.artist", b"user.musicfs.title", b"user.musicfs.origin",
            b"user.musicfs.real_path"} <= set(names)
    for name in names:
        assert call(ops.getxattr, ino, name, None)
    assert fuse_errno(ops.getxattr, ino, b"user.other", None) == errno.ENODATA
    dir_ino = lookup_path(ops, path.rsplit("/", 1)[0]).st_ino
    assert call(ops.getxattr, dir_ino, b"user.musicfs.path", None) == path.rsplit("/", 1)[0].encode()


class Recorder:
    """Stands in for pyfuse3.readdir_reply: accepts ``room`` entries, then reports a full buffer."""

    def __init__(self, room: int):
        self.room = room
        self.entries: list[tuple[str, int, int]] = []

    def __call__(self, token, name: bytes, attr, next_id: int) -> bool:
        if len(self.entries) >= self.room:
            return False
        self.entries.append((os.fsdecode(name), attr.st_ino, next_id))
        return True


def list_dir(ops, monkeypatch, inode: int, room: int) -> list[tuple[str, int, int]]:
    """Every entry of a directory, fetched in batches of ``room`` like the kernel does."""
    fh = call(ops.opendir, inode, None)
    out, start = [], 0
    while True:
        recorder = Recorder(room)
        monkeypatch.setattr(pyfuse3, "readdir_reply", recorder)
        call(ops.readdir, fh, start, None)
        out += recorder.entries
        if len(recorder.entries) < room:
            break
        start = recorder.entries[-1][2]
    call(ops.releasedir, fh)
    return out


@pytest.mark.req("CAS-3")
@pytest.mark.parametrize("room", [1, 3, 1000])
def test_readdir_pages_in_id_order_and_hides_musicfs(ops, monkeypatch, room):
    resolver = Resolver(ops.route.tree.index.conn)
    root = list_dir(ops, monkeypatch, ROOT_ID, room)
    assert [name for name, _, _ in root] == [n.name for n in resolver.iter_children(ROOT_ID)]
    assert [ino for _, ino, _ in root] == sorted(ino for _, ino, _ in root)
    assert HIDDEN_DIR_NAME not in [name for name, _, _ in root], "readdir must not list /.musicfs"
    # ... but lookup finds it, and it lists its generated files
    hidden = call(ops.lookup, ROOT_ID, HIDDEN_DIR_NAME.encode())
    assert stat.S_ISDIR(hidden.st_mode)
    assert [name for name, _, _ in list_dir(ops, monkeypatch, hidden.st_ino, room)] == ["errors.json",
                                                                                         "status.json"]
    album = resolver.resolve(a_track(ops)[0].rsplit("/", 1)[0])
    listed = list_dir(ops, monkeypatch, album.id, room)
    assert [(name, ino) for name, ino, _ in listed] == [(n.name, n.id) for n in resolver.iter_children(album.id)]


@pytest.mark.req("CAS-3")
def test_hidden_files_are_generated_when_read(ops):
    hidden = call(ops.lookup, ROOT_ID, HIDDEN_DIR_NAME.encode())
    attr = call(ops.lookup, hidden.st_ino, b"status.json")
    info = call(ops.open, attr.st_ino, os.O_RDONLY, None)
    try:
        assert info.direct_io
        assert call(ops.read, info.fh, 0, 1 << 16) == b'{\n  "tracks": %d\n}\n' % ops.route.tree.index.statistics()["tracks"]
    finally:
        call(ops.release, info.fh)
    assert fuse_errno(ops.open, attr.st_ino, os.O_WRONLY, None) == errno.EROFS


# -- failures never escape as anything but an errno ----------------------------
@pytest.mark.req("FAULT-40")
def test_unexpected_exception_becomes_eio_with_one_record_and_its_traceback(ops, monkeypatch, caplog):
    """A bug in a component answers EIO with one log record carrying the traceback; the
    filesystem keeps answering. (On a real mount: conformance/test_f40_handler_exception.py.)"""
    def broken(*args):
        raise RuntimeError("index went away")

    monkeypatch.setattr(ops.route.tree.resolver, "lookup", broken)
    with caplog.at_level(logging.ERROR, logger="musicfs.fuse.operations"):
        assert fuse_errno(ops.lookup, ROOT_ID, b"anything") == errno.EIO
    assert ops.error_counts["lookup"] == 1
    (record,) = caplog.records
    assert "lookup" in record.getMessage() and "index went away" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError, "no traceback logged"
    # the operations object still answers afterwards
    assert call(ops.getattr, ROOT_ID).st_ino == ROOT_ID


def test_expected_failure_is_one_line_without_traceback(ops, monkeypatch, caplog):
    """An origin that cannot serve is not a bug: EIO with (at most) one plain line, no traceback."""
    def unavailable(*args):
        raise OriginUnavailable("origin nas: no answer within 5 s")

    monkeypatch.setattr(ops.route.tree.resolver, "lookup", unavailable)
    with caplog.at_level(logging.DEBUG, logger="musicfs.fuse.operations"):
        assert fuse_errno(ops.lookup, ROOT_ID, b"anything") == errno.EIO
    assert len(caplog.records) <= 1
    assert all("no answer within 5 s" in r.getMessage() and r.exc_info is None for r in caplog.records)


def test_reader_failure_becomes_eio_and_missing_origin_file_enoent(ops, monkeypatch, tmp_path):
    path, _ = a_track(ops)
    ino = lookup_path(ops, path).st_ino
    info = call(ops.open, ino, os.O_RDONLY, None)
    try:
        async def failing_read(handle, offset, size):
            raise OSError(errno.EIO, "disk on fire")
        monkeypatch.setattr(ops.route.tree.reader, "read", failing_read)
        assert fuse_errno(ops.read, info.fh, 0, 10) == errno.EIO
    finally:
        call(ops.release, info.fh)
    # the origin file vanished since the scan: open answers ENOENT, not a crash
    monkeypatch.setattr(ops.route.tree.reader, "origins", {"local": LocalOrigin("local", tmp_path)})
    assert fuse_errno(ops.open, ino, os.O_RDONLY, None) == errno.ENOENT


# -- lookup counts ---------------------------------------------------------------
@pytest.mark.req("CAS-2", "B2-8")
def test_forget_waits_for_the_last_handle_and_keeps_the_inode(ops, sample_library, monkeypatch):
    """A node's state stays while the kernel counts a lookup of it *or* a handle on it is open,
    and goes when both have ended, in either order; the inode number is the same next time."""
    path, track = a_track(ops)
    origin = (sample_library[0] / track["real_path"]).read_bytes()
    lookup_path(ops, path.rsplit("/", 1)[0])
    baseline = ops.statistics()["known_inodes"]  # the directories on the way, which stay looked up
    ino = lookup_path(ops, path).st_ino
    parent, name = ops.route.tree.resolver.resolve(path).parent, os.fsencode(path.rsplit("/", 1)[1])
    assert call(ops.lookup, parent, name).st_ino == ino
    assert ops.inodes.lookup_count(ino) == 2 and ops.inodes.get(ino) is not None
    assert ops.statistics()["known_inodes"] == baseline + 1

    call(ops.forget, [(ino, 1)])
    assert ops.inodes.lookup_count(ino) == 1 and ops.inodes.get(ino) is not None
    first = call(ops.open, ino, os.O_RDONLY, None)
    second = call(ops.open, ino, os.O_RDONLY, None)
    kept = ops.inodes.get(ino)

    # FORGET before RELEASE (the kernel sends them on separate queues): the node stays
    call(ops.forget, [(ino, 1)])
    assert ops.inodes.lookup_count(ino) == 0
    assert ops.inodes.get(ino) is kept, "forget dropped the state of an inode with open handles"
    assert ops.statistics()["open_inodes"] == 1 and ops.statistics()["known_inodes"] == baseline + 1

    def no_query(*args):
        raise AssertionError("the node of an open inode was looked up in the index again")

    with monkeypatch.context() as patched:  # answered from the kept node, not the index
        patched.setattr(ops.route.tree.resolver, "get", no_query)
        assert call(ops.getattr, ino).st_size == track["size"] == len(origin)
        assert call(ops.read, first.fh, 0, 64) == origin[:64]
        call(ops.release, first.fh)
        assert ops.inodes.get(ino) is kept, "the first release dropped a node the second handle holds"
        assert call(ops.read, second.fh, len(origin) - 64, 64) == origin[-64:]
        assert call(ops.getattr, ino).st_ino == ino
    forgotten = ops.inodes.forgotten
    call(ops.release, second.fh)
    assert ops.inodes.get(ino) is None and ops.inodes.open_count(ino) == 0, "the last release kept the node"
    assert ops.inodes.forgotten == forgotten + 1
    assert ops.statistics()["known_inodes"] == baseline and ops.statistics()["open_inodes"] == 0

    # looked up again: the same inode number, counted from one
    assert lookup_path(ops, path).st_ino == ino
    assert ops.inodes.lookup_count(ino) == 1

    # RELEASE before FORGET: the node stays for the kernel's lookup, and goes with its forget
    info = call(ops.open, ino, os.O_RDONLY, None)
    call(ops.release, info.fh)
    assert ops.inodes.get(ino) is not None and ops.inodes.open_count(ino) == 0
    call(ops.forget, [(ino, 1)])
    assert ops.inodes.get(ino) is None
    assert ops.statistics()["known_inodes"] == baseline

    # a generated file's handle holds no node (it has none), and its release drops nothing
    hidden = call(ops.lookup, ROOT_ID, HIDDEN_DIR_NAME.encode())
    status = call(ops.lookup, hidden.st_ino, b"status.json")
    generated = call(ops.open, status.st_ino, os.O_RDONLY, None)
    call(ops.release, generated.fh)
    assert ops.statistics()["known_inodes"] == baseline and ops.statistics()["open_inodes"] == 0

    # readdirplus entries count as lookups too, and a forget of them balances
    assert lookup_path(ops, path).st_ino == ino
    fh = call(ops.opendir, parent, None)
    recorder = Recorder(10**6)
    with monkeypatch.context() as patched:
        patched.setattr(pyfuse3, "readdir_reply", recorder)
        call(ops.readdir, fh, 0, None)
    assert ops.inodes.lookup_count(ino) == 2
    call(ops.forget, [(i, 1) for _, i, _ in recorder.entries])
    assert ops.inodes.lookup_count(ino) == 1
    call(ops.forget, [(ino, 1)])
    assert ops.statistics()["known_inodes"] == baseline


@pytest.mark.req("CAS-2")
def test_an_open_that_fails_holds_no_node(ops, monkeypatch, tmp_path):
    """A refused open (read-only, or its origin file gone) leaves no handle count behind to leak."""
    path, _ = a_track(ops)
    ino = lookup_path(ops, path).st_ino
    assert fuse_errno(ops.open, ino, os.O_WRONLY, None) == errno.EROFS
    monkeypatch.setattr(ops.route.tree.reader, "origins", {"local": LocalOrigin("local", tmp_path)})
    assert fuse_errno(ops.open, ino, os.O_RDONLY, None) == errno.ENOENT
    assert ops.inodes.open_count(ino) == 0 and ops.statistics()["open_inodes"] == 0
    call(ops.forget, [(ino, 1)])
    assert ops.inodes.get(ino) is None
