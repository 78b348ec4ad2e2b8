"""Turning nodes into ``EntryAttributes``: modes, sizes, times and cache timeouts."""

from __future__ import annotations

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


def _fill(attr: pyfuse3.EntryAttributes, inode: int, mode: int, size: int, mtime_ns: int,
          policy: AttrPolicy, nlink: int) -> pyfuse3.EntryAttributes:
    attr.st_ino = inode
    attr.generation = 0
    attr.entry_timeout = policy.entry_timeout
    attr.attr_timeout = policy.attr_timeout
    attr.st_mode = mode
    attr.st_nlink = nlink
    attr.st_uid = policy.uid
    attr.st_gid = policy.gid
    attr.st_rdev = 0
    attr.st_size = size
    attr.st_blksize = BLOCK
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
