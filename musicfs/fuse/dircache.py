"""Directory listings the kernel keeps: loading ``_replyopen`` before pyfuse3.

A listing answered by this daemon costs a request per page of entries, each through pyfuse3
and the event loop: a 10,000-entry album listed again took ~8x what the same folder takes
on ext4. The kernel can keep a directory's entries and answer later listings itself
(``FOPEN_CACHE_DIR``, until it is told the directory changed), but only when opendir's reply
asks for it, and pyfuse3's ``opendir`` hands back a handle and nothing else.

``_replyopen`` (C, see its source) stands in for libfuse's ``fuse_reply_open`` and turns a
handle carrying :data:`CACHE_DIR_BIT` into that request. For pyfuse3 to call it, it must be
in the process's global symbol scope before pyfuse3 is imported: :func:`load` runs when the
``musicfs`` package is first imported. Where the module was not built, or pyfuse3 came
first, :data:`active` is False, no handle carries the bit, and listings work as before.
"""

from __future__ import annotations

import os
import sys

CACHE_DIR_BIT = 1 << 63  # in an opendir handle: the kernel may keep the listing
active = False  # listings may be kept: the handles' bit reaches _replyopen


def load() -> bool:
    """Load ``_replyopen`` into the global symbol scope, once; True if it is in use."""
    global active
    if active or "pyfuse3" in sys.modules:  # pyfuse3 is bound to libfuse's own by now
        return active
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_GLOBAL)
    try:
        from . import _replyopen  # noqa: F401  (loaded for its symbol, not its names)
    except ImportError:  # not built (no compiler at install): listings are not kept
        return False
    finally:
        sys.setdlopenflags(flags)
    active = True
    return True


def directory_handle(inode: int, keep: bool) -> int:
    """The handle opendir answers: the inode, with the bit when the kernel may keep the listing."""
    return inode | CACHE_DIR_BIT if keep and active else inode


def inode_of(handle: int) -> int:
    return handle & ~CACHE_DIR_BIT
