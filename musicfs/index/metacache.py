"""The metadata cache's bound (NFR-5.1): one size, split between what holds metadata in memory.

A mount keeps metadata in two places: SQLite's page cache of the index (pages of the node and
track tables it read last) and the nodes it keeps for entries the kernel holds, so that
getattr and open need no query (:class:`musicfs.fuse.inodes.InodeTable`). Both grow with what
is browsed: a walk of a large tree hands the kernel an entry for every name it sees, and the
kernel keeps them until memory runs short, not until musicfs does. ``[cache] metadata_size``
(100 MB unless configured) bounds the two together:

* SQLite's page cache gets a quarter, at most 64 MiB (``PRAGMA cache_size``), and no memory
  map (``mmap_size = 0``: mapped pages would count in the daemon's RSS beyond any bound);
* an eighth is for whole listings of directories kept between readdirs
  (:class:`musicfs.vfs.listings.ListingCache`), at :data:`BYTES_PER_LISTED` per child;
* the rest is a number of kept nodes, at :data:`BYTES_PER_NODE` each. Beyond it the least
  recently handed out nodes are dropped, and the kernel is asked to forget their entries, so
  that their lookup counts go too (a later lookup finds them in the index again).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BYTES = 100 * 10**6  # seed 004 §3.2.4
# What one entry the kernel holds costs the daemon: the Node and its strings and ints, its slots
# in the node and count tables. Measured on a real mount, a walk of 200,000 synthetic entries
# (RSS growth / entries handed out): ~550 bytes.
BYTES_PER_NODE = 600
SQLITE_SHARE = 4  # SQLite's page cache: a quarter of the bound...
SQLITE_MAX_BYTES = 64 * 2**20  # ...at most 64 MiB: the tree's hot pages fit many times over
LISTING_SHARE = 8  # kept listings: an eighth of the bound
# a listed child is a Node (slots) and its name in a tuple, nothing else: ~200 bytes measured
# with tracemalloc on synthetic albums; 250 leaves room for long names
BYTES_PER_LISTED = 250


@dataclass(frozen=True)
class MetadataBudget:
    bytes: int = DEFAULT_BYTES

    @property
    def sqlite_cache_kib(self) -> int:
        """For ``PRAGMA cache_size=-N`` (a negative size is KiB)."""
        return max(1024, min(self.bytes // SQLITE_SHARE, SQLITE_MAX_BYTES) // 1024)

    @property
    def listed_nodes(self) -> int:
        """Children held in kept listings, all listings together."""
        return max(1024, self.bytes // LISTING_SHARE // BYTES_PER_LISTED)

    @property
    def max_nodes(self) -> int:
        """Nodes kept for the kernel's entries before the least recently used are let go."""
        rest = self.bytes - self.sqlite_cache_kib * 1024 - self.listed_nodes * BYTES_PER_LISTED
        return max(1024, rest // BYTES_PER_NODE)

    def statistics(self) -> dict[str, int]:
        return {"metadata_cache_bytes": self.bytes, "sqlite_cache_kib": self.sqlite_cache_kib,
                "listed_nodes": self.listed_nodes, "max_nodes": self.max_nodes}
