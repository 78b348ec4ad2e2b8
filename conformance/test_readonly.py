"""FAULT-36: every mutation on every node type fails with EROFS and changes nothing.

Node types: a track, an album and an artist folder, the root, the hidden
``/.musicfs`` folder and a file in it, and the raw view (``/.origins``, an
origin's folder, a folder and a file in it). The daemon mounts with the ``ro``
option, so the kernel refuses most calls before musicfs sees them (the daemon
answers EROFS to any that reach it); what is asserted is what a user gets back.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from conformance.expected import walk_dirs, walk_files


def _open(flags: int):
    def op(p: Path) -> None:
        fd = os.open(p, flags, 0o644)
        os.close(fd)  # only reached when the open wrongly succeeded
    return op


def _write(p: Path) -> None:
    with open(p, "r+b") as f:
        f.write(b"x")


# the node types of a mount: the tag tree, the hidden /.musicfs, the raw view /.origins, the
# offline view /.offline (its files are the tree's own)
FILE, DIR, ARTIST, ROOT = "file", "album", "artist", "root"
HIDDEN, HIDDEN_DIR = "hidden-file", "hidden-dir"
RAW_ROOT, RAW_ORIGIN, RAW_DIR, RAW_FILE = "raw-root", "raw-origin", "raw-dir", "raw-file"
OFFLINE_ROOT = "offline-root"
FILES = (FILE, HIDDEN, RAW_FILE)
DIRS = (DIR, ARTIST, ROOT, HIDDEN_DIR, RAW_ROOT, RAW_ORIGIN, RAW_DIR, OFFLINE_ROOT)
ALL = FILES + DIRS

# name -> (operation on a path, node types it applies to)
MUTATIONS = {
    "create": (lambda p: _open(os.O_CREAT | os.O_WRONLY | os.O_EXCL)(p / "new.flac"), DIRS),
    "creat-over": (lambda p: _open(os.O_CREAT | os.O_WRONLY | os.O_TRUNC)(p), FILES),
    "mkdir": (lambda p: os.mkdir(p / "newdir"), DIRS),
    "unlink": (os.unlink, FILES),
    "rmdir": (os.rmdir, DIRS),
    "rename": (lambda p: os.rename(p, p.with_name("renamed")), ALL),
    "rename-over": (lambda p: os.rename(p, p.parent), FILES),
    "open-wronly": (_open(os.O_WRONLY), FILES),
    "open-rdwr": (_open(os.O_RDWR), FILES),
    "open-append": (_open(os.O_WRONLY | os.O_APPEND), FILES),
    "open-trunc": (_open(os.O_RDONLY | os.O_TRUNC), FILES),
    "open-dir-write": (_open(os.O_WRONLY | os.O_DIRECTORY), DIRS),
    "write": (_write, FILES),
    "truncate": (lambda p: os.truncate(p, 0), FILES),
    "chmod": (lambda p: os.chmod(p, 0o777), ALL),
    "chown": (lambda p: os.chown(p, 1234, 1234), ALL),
    "utime": (lambda p: os.utime(p, (0, 0)), ALL),
    "utime-now": (lambda p: os.utime(p), ALL),
    "setxattr": (lambda p: os.setxattr(p, "user.musicfs.artist", b"someone else"), ALL),
    "setxattr-new": (lambda p: os.setxattr(p, "user.comment", b"hi"), ALL),
    "removexattr": (lambda p: os.removexattr(p, "user.musicfs.real_path"), ALL),
    "symlink": (lambda p: os.symlink("target", p / "link"), DIRS),
    "link": (lambda p: os.link(p, p.parent / "hardlink"), FILES),
    "mkfifo": (lambda p: os.mkfifo(p / "fifo"), DIRS),
    "mknod": (lambda p: os.mknod(p / "node", 0o644 | 0o100000), DIRS),
}
CASES = [(name, target) for name, (_, targets) in MUTATIONS.items() for target in targets]


@pytest.fixture(scope="module")
def targets(sample_mount) -> dict[str, Path]:
    mnt = sample_mount.mountpoint
    file = mnt / next(p for p in walk_files(mnt) if p.endswith(".flac"))
    real = os.getxattr(file, "user.musicfs.real_path").decode()
    raw = mnt / ".origins" / "local"
    assert "/" in real, "the raw view's folder case needs a file in a folder"
    return {
        FILE: file,
        DIR: file.parent,
        ARTIST: file.parent.parent,
        ROOT: mnt,
        HIDDEN: mnt / ".musicfs" / "status.json",
        HIDDEN_DIR: mnt / ".musicfs",
        RAW_ROOT: mnt / ".origins",
        RAW_ORIGIN: raw,
        RAW_DIR: (raw / real).parent,
        RAW_FILE: raw / real,
        OFFLINE_ROOT: mnt / ".offline",
    }


def _allowed(name: str, target: str) -> set[int]:
    """EROFS; or what the kernel answers before asking any filesystem (the catalogue allows it)."""
    if target == ROOT and name in ("rmdir", "rename"):
        return {errno.EROFS, errno.EBUSY}  # the mountpoint itself is busy whatever the filesystem
    if name == "open-dir-write":
        return {errno.EROFS, errno.EISDIR}  # POSIX: no directory opens for writing, on any filesystem
    return {errno.EROFS}


@pytest.mark.req("FAULT-36", "FS-4")
@pytest.mark.parametrize("name,target", [
    pytest.param(n, t, id=f"{n}-{t}", marks=[pytest.mark.req("CAS-5")] if "xattr" in n else [])
    for n, t in CASES
])
def test_f36_every_mutation_on_every_node_type_fails_with_erofs(targets, name, target):
    op = MUTATIONS[name][0]
    path = targets[target]
    assert path.exists(), path
    with pytest.raises(OSError) as info:
        op(path)
    assert info.value.errno in _allowed(name, target), f"{name} on {target}: {info.value!r}, not EROFS"


@pytest.mark.req("FAULT-36", "FS-4")
def test_f36_the_mount_carries_ro(sample_mount):
    """The kernel knows the mount is read-only: the ``ro`` option, and ST_RDONLY for statvfs."""
    mnt = os.path.realpath(sample_mount.mountpoint)
    with open("/proc/self/mountinfo") as info:
        fields = next(line.split() for line in info if line.split()[4] == mnt)
    assert "ro" in fields[5].split(","), f"mount options of {mnt}: {fields[5]}"
    assert fields[fields.index("-") + 1] == "fuse.musicfs"
    assert os.statvfs(mnt).f_flag & os.ST_RDONLY


def _snapshot_mount(mnt: Path) -> dict:
    out = {}
    raw = [f".origins/{rel}" if rel else ".origins" for rel in walk_dirs(mnt / ".origins")]
    raw += [f".origins/{rel}" for rel in walk_files(mnt / ".origins")]
    for rel in walk_dirs(mnt) + walk_files(mnt) + raw:
        st = os.lstat(mnt / rel)
        out[rel] = (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid,
                    tuple(sorted(os.listxattr(mnt / rel))))
    out["/.musicfs"] = sorted(os.listdir(mnt / ".musicfs"))
    return out


def _snapshot_origin(root: Path) -> dict:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.req("FAULT-36", "FS-4")
def test_f36_mutations_change_nothing(sample_mount, sample_library, good_files, targets):
    mnt, origin = sample_mount.mountpoint, sample_library[0]
    before, origin_before = _snapshot_mount(mnt), _snapshot_origin(origin)
    for name, target in CASES:
        try:
            MUTATIONS[name][0](targets[target])
        except OSError:
            pass
    assert _snapshot_mount(mnt) == before
    assert _snapshot_origin(origin) == origin_before
    files = walk_files(mnt)
    assert len(files) == len(good_files)
    assert os.getxattr(targets[FILE], "user.musicfs.artist") != b"someone else"
