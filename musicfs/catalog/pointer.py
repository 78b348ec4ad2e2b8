"""The pointer: the one small object a client reads to learn which catalog is current.

A catalog is published as two kinds of object under a prefix of an origin: snapshots,
named by the SHA-256 of their (compressed) bytes, and one pointer naming the current
snapshot. The pointer is written last, and an object store replaces an object whole,
so a client never meets half a catalog: it either reads the old pointer, whose
snapshot is still there (old snapshots are kept), or the new one, whose snapshot was
complete before the pointer named it.

With a shared key on both sides, the pointer carries an HMAC-SHA256 of its other fields:
whoever can write the bucket but has not the key cannot send clients to a catalog of
their making. The encoding signed is canonical JSON (sorted keys, no spaces), so the
bytes signed do not depend on how the pointer object was formatted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass, fields

from ..errors import CatalogRefused

FORMAT = 1  # the catalog format this musicfs writes and reads
POINTER_NAME = "catalog.json"
SNAPSHOTS = "snapshots"
_HASH = re.compile(r"^[0-9a-f]{64}$")
MAX_POINTER = 64 * 1024  # bytes: a pointer is a few hundred; anything bigger is not one


@dataclass(frozen=True)
class Pointer:
    format: int
    hash: str  # SHA-256 of the snapshot object's bytes (zstd-compressed SQLite database)
    size: int  # bytes of the snapshot object
    db_size: int  # bytes of the database once decompressed
    library: str
    template: str
    tracks: int
    created: float  # unix time of publishing
    signature: str = ""  # hex HMAC-SHA256 of the other fields, when published with a key

    @property
    def snapshot_name(self) -> str:
        """The snapshot object's path under the catalog prefix."""
        return f"{SNAPSHOTS}/{self.hash}.db.zst"

    def signed(self, key: bytes | None) -> Pointer:
        """This pointer with its signature (none without a key)."""
        return Pointer(**{**asdict(self), "signature": _mac(self, key) if key else ""})

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes, key: bytes | None) -> Pointer:
        """The pointer in ``data``, checked; :class:`CatalogRefused` says why one is not usable."""
        if len(data) > MAX_POINTER:
            raise CatalogRefused(f"the catalog pointer is {len(data)} bytes: not a pointer")
        try:
            raw = json.loads(data)
        except ValueError:
            raise CatalogRefused("the catalog pointer is not JSON") from None
        if not isinstance(raw, dict):
            raise CatalogRefused("the catalog pointer is not a JSON object")
        if raw.get("format") != FORMAT:
            raise CatalogRefused(f"the catalog is of format {raw.get('format')!r}; this musicfs reads "
                                 f"format {FORMAT}")
        kinds = {"format": int, "hash": str, "size": int, "db_size": int, "library": str, "template": str,
                 "tracks": int, "created": (int, float), "signature": str}
        missing = [f.name for f in fields(cls) if f.name not in raw and f.name != "signature"]
        wrong = [k for k, kind in kinds.items() if k in raw and (not isinstance(raw[k], kind)
                                                                  or isinstance(raw[k], bool))]
        if missing or wrong:
            raise CatalogRefused(f"the catalog pointer is malformed (missing: {', '.join(missing) or '-'}; "
                                 f"of the wrong type: {', '.join(wrong) or '-'})")
        pointer = cls(**{k: raw[k] for k in kinds if k in raw})
        if not _HASH.match(pointer.hash) or pointer.size <= 0 or pointer.db_size <= 0 or pointer.tracks < 0:
            raise CatalogRefused("the catalog pointer is malformed (its hash or sizes)")
        if key is not None:
            if not pointer.signature:
                raise CatalogRefused("the catalog pointer is not signed, and this library requires a signature")
            if not hmac.compare_digest(pointer.signature, _mac(pointer, key)):
                raise CatalogRefused("the catalog pointer's signature does not verify with this library's key")
        return pointer


def _mac(pointer: Pointer, key: bytes) -> str:
    body = {k: v for k, v in asdict(pointer).items() if k != "signature"}
    return hmac.new(key, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
                    hashlib.sha256).hexdigest()
