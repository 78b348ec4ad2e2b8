"""The hidden ``/.musicfs`` directory: read-only files generated when they are read.

``status.json`` and ``errors.json`` let any tool (``cat``, a script, a media
server's health check) see what musicfs knows without the control socket;
``heat.json`` and ``access.log`` show what was listened to
(:mod:`musicfs.vfs.access`).
They live at fixed inode numbers far above any node id, so they never collide
with the tree and stay stable across remounts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

HIDDEN_DIR_NAME = ".musicfs"
HIDDEN_BASE = 1 << 48  # node ids (AUTOINCREMENT) never get near this


@dataclass(frozen=True)
class HiddenFile:
    inode: int
    name: str
    render: Callable[[], bytes]


class HiddenFiles:
    """The generated files, each a function returning its current bytes."""

    dir_inode = HIDDEN_BASE

    def __init__(self, providers: dict[str, Callable[[], object]]):
        """``providers``: file name -> what it shows; a ``.json`` file's provider returns a document,
        any other's the text itself."""
        self._by_name: dict[str, HiddenFile] = {}
        self._by_inode: dict[int, HiddenFile] = {}
        for offset, (name, provider) in enumerate(sorted(providers.items()), start=1):
            render = self._json(provider) if name.endswith(".json") else self._text(provider)
            item = HiddenFile(HIDDEN_BASE + offset, name, render)
            self._by_name[name] = item
            self._by_inode[item.inode] = item

    @staticmethod
    def _json(provider: Callable[[], object]) -> Callable[[], bytes]:
        def render() -> bytes:
            return (json.dumps(provider(), indent=2, sort_keys=True, default=str) + "\n").encode()
        return render

    @staticmethod
    def _text(provider: Callable[[], object]) -> Callable[[], bytes]:
        def render() -> bytes:
            return str(provider()).encode()
        return render

    def is_hidden(self, inode: int) -> bool:
        return inode >= HIDDEN_BASE

    def by_name(self, name: str) -> HiddenFile | None:
        return self._by_name.get(name)

    def by_inode(self, inode: int) -> HiddenFile | None:
        return self._by_inode.get(inode)

    def files(self) -> list[HiddenFile]:
        return sorted(self._by_inode.values(), key=lambda f: f.inode)
