"""Every mutation through the mount fails with EROFS and changes nothing, in the mount or the origin.

The daemon mounts with the ``ro`` option, so the kernel may refuse some calls
before musicfs sees them; what is asserted is what a user gets back.
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


# name -> (operation on a path, targets it applies to)
FILE, DIR, ROOT, HIDDEN, NEW = "file", "dir", "root", "hidden", "new"
MUTATIONS = {
    "create": (lambda p: _open(os.O_CREAT | os.O_WRONLY | os.O_EXCL)(p / "new.flac"), (DIR, ROOT)),
    "create-in-hidden": (lambda p: _open(os.O_CREAT | os.O_WRONLY)(p / "mine.json"), ("hiddendir",)),
    "mkdir": (lambda p: os.mkdir(p / "newdir"), (DIR, ROOT)),
    "unlink": (os.unlink, (FILE, HIDDEN)),
    "rmdir": (os.rmdir, (DIR,)),
    "rename": (lambda p: os.rename(p, p.with_name("renamed")), (FILE, DIR, HIDDEN)),
    "rename-over": (lambda p: os.rename(p, p.parent), (FILE,)),
    "open-wronly": (_open(os.O_WRONLY), (FILE, HIDDEN)),
    "open-rdwr": (_open(os.O_RDWR), (FILE, HIDDEN)),
    "open-append": (_open(os.O_WRONLY | os.O_APPEND), (FILE,)),
    "open-trunc": (_open(os.O_RDONLY | os.O_TRUNC), (FILE,)),
    "write": (_write, (FILE,)),
    "truncate": (lambda p: os.truncate(p, 0), (FILE, HIDDEN)),
    "chmod": (lambda p: os.chmod(p, 0o777), (FILE, DIR, ROOT)),
    "chown": (lambda p: os.chown(p, 1234, 1234), (FILE, DIR)),
    "utime": (lambda p: os.utime(p, (0, 0)), (FILE, DIR)),
    "utime-now": (lambda p: os.utime(p), (FILE,)),
    "setxattr": (lambda p: os.setxattr(p, "user.musicfs.artist", b"someone else"), (FILE, DIR)),
    "setxattr-new": (lambda p: os.setxattr(p, "user.comment", b"hi"), (FILE,)),
    "removexattr": (lambda p: os.removexattr(p, "user.musicfs.artist"), (FILE,)),
    "symlink": (lambda p: os.symlink("target", p / "link"), (DIR, ROOT)),
    "link": (lambda p: os.link(p, p.parent / "hardlink"), (FILE,)),
    "mkfifo": (lambda p: os.mkfifo(p / "fifo"), (DIR,)),
    "mknod": (lambda p: os.mknod(p / "node", 0o644 | 0o100000), (DIR,)),
}
CASES = [(name, target) for name, (_, targets) in MUTATIONS.items() for target in targets]


@pytest.fixture(scope="module")
def targets(sample_mount) -> dict[str, Path]:
    mnt = sample_mount.mountpoint
    return {
        FILE: mnt / next(p for p in walk_files(mnt) if p.endswith(".flac")),
        DIR: mnt / next(d for d in walk_dirs(mnt) if d.count("/") == 1),  # an album
        ROOT: mnt,
        HIDDEN: mnt / ".musicfs" / "status.json",
        "hiddendir": mnt / ".musicfs",
    }


@pytest.mark.req("FS-4")
@pytest.mark.parametrize("name,target", [
    pytest.param(n, t, id=f"{n}-{t}", marks=[pytest.mark.req("CAS-5")] if "xattr" in n else [])
    for n, t in CASES
])
def test_mutation_fails_with_erofs(targets, name, target):
    op = MUTATIONS[name][0]
    path = targets[target]
    with pytest.raises(OSError) as info:
        op(path)
    assert info.value.errno == errno.EROFS, f"{name} on {target}: {info.value!r}, not EROFS"


def _snapshot_mount(mnt: Path) -> dict:
    out = {}
    for rel in walk_dirs(mnt) + walk_files(mnt):
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


@pytest.mark.req("FS-4")
def test_mutations_change_nothing(sample_mount, sample_library, good_files, targets):
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
