"""Chunk addresses: xxh3-128, as 32 hex digits; the same function checks chunks on read."""

from __future__ import annotations

import re

import xxhash

ADDRESS = re.compile(r"^[0-9a-f]{32}$")


def digest(data: bytes | bytearray | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def is_address(text: str) -> bool:
    return bool(ADDRESS.match(text))
