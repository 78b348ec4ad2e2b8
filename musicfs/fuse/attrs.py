"""Turning nodes into ``EntryAttributes``: modes, sizes, times and cache timeouts."""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass

import pyfuse3

from ..vfs.resolver import Node

BLOCK = 4096


@dataclass(frozen=True)
class AttrPolicy:
    """Who owns the files, and how long the kernel may cache names and attributes.

    The index only changes on a rescan, which invalidates what it changed, so
    long timeouts are safe and turn warm stats into pure kernel-cache hits.
    """

    uid: int = os.getuid()
    gid: int = os.getgid()
    entry_timeout: float = 300.0
    attr_timeout: float = 300.0
    dir_mtime_ns: int = 0  # directories show the index's build time

    @functools.cached_property
    def constant_fields(self) -> dict[int, tuple[tuple[str, object], ...]]:
        """By link count (1 for files, 2 for directories): the fields every such entry gets from
        this policy, less those a new EntryAttributes already holds (pyfuse3 sets some when it
        makes one). A listing builds one object per entry, and setting a field costs about as
        much as making the object: skipping the ones already right is a tenth of a listing."""
        fresh = pyfuse3.EntryAttributes()

        def needed(nlink: int) -> tuple[tuple[str, object], ...]:
            wanted = {"generation": 0, "entry_timeout": self.entry_timeout, "attr_timeout": self.attr_timeout,
                      "st_nlink": nlink, "st_uid": self.uid, "st_gid": self.gid, "st_rdev": 0,
                      "st_blksize": BLOCK}
            return tuple((name, value) for name, value in wanted.items() if getattr(fresh, name) != value)
        return {1: needed(1), 2: needed(2)}


def _fill(attr: pyfuse3.EntryAttributes, inode: int, mode: int, size: int, mtime_ns: int,
          policy: AttrPolicy, nlink: int) -> pyfuse3.EntryAttributes:
    for name, value in policy.constant_fields[nlink]:
        setattr(attr, name, value)
    attr.st_ino = inode
    attr.st_mode = mode
    attr.st_size = size
    attr.st_blocks = (size + 511) // 512
    attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime_ns
    return attr


def node_attributes(node: Node, policy: AttrPolicy) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    if node.is_dir:
        return _fill(attr, node.id, stat.S_IFDIR | 0o555, 0, policy.dir_mtime_ns, policy, 2)
    return _fill(attr, node.id, stat.S_IFREG | 0o444, node.size, node.mtime_ns, policy, 1)


def generated_attributes(inode: int, size: int, policy: AttrPolicy, *, is_dir: bool,
                         mtime_ns: int) -> pyfuse3.EntryAttributes:
    """Attributes of a generated (hidden) entry: short timeouts, its content changes."""
    attr = pyfuse3.EntryAttributes()
    mode = stat.S_IFDIR | 0o555 if is_dir else stat.S_IFREG | 0o444
    _fill(attr, inode, mode, size, mtime_ns, policy, 2 if is_dir else 1)
    attr.entry_timeout = attr.attr_timeout = 1.0
    return attr
