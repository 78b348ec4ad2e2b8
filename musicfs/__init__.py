"""musicfs: a music collection mounted as one read-only tree organized by tags."""

from .fuse import dircache as _dircache

_dircache.load()  # before anything imports pyfuse3 (see musicfs.fuse.dircache)
