"""Content addresses: xxh3-128, as 32 hex digits.

A chunk's address in the content cache, checked again on every read; also an
artwork image's identity in the index, so that the index names an image by the
address the cache stores it under.
"""

from __future__ import annotations

import re

import xxhash

ADDRESS = re.compile(r"^[0-9a-f]{32}$")


def digest(data: bytes | bytearray | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def is_address(text: str) -> bool:
    return bool(ADDRESS.match(text))
