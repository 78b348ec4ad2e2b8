"""Finding and loading what extends musicfs: entry points, from musicfs itself and from other packages.

Each kind of extension has an entry-point group (``musicfs.origins``, ``musicfs.metadata``); the
built-in ones are declared there by musicfs's own ``pyproject.toml``, so there is one path for
all. Nothing is imported until a config names it: a package that fails to import costs only the
libraries that use it, and the error names the package, its version and what went wrong.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Provider:
    """Where one extension comes from: its entry point, and the package that declares it."""

    group: str
    name: str
    target: str  # "module:attribute"
    distribution: str  # the package that installed it ("musicfs" for the built-in ones)
    version: str
    location: str  # the folder or URL that package was installed from

    def describe(self) -> str:
        return f"{self.distribution} {self.version}".rstrip()


@functools.cache
def providers(group: str, fallback: tuple[tuple[str, str], ...] = ()) -> dict[str, Provider]:
    """Every entry point of ``group`` by name (imports nothing of theirs), read once a process;
    ``fallback``: (name, target) pairs for a source tree of musicfs that was never installed."""
    from importlib.metadata import entry_points

    found = {name: Provider(group, name, target, "musicfs", "", "source tree") for name, target in fallback}
    for point in entry_points(group=group):
        dist = point.dist
        found[point.name] = Provider(group, point.name, point.value, dist.name if dist is not None else "?",
                                     dist.version if dist is not None else "", _where(dist))
    return found


def _where(dist: Any) -> str:
    """Where an installed package came from: the folder or URL it was installed from (pip records
    it for a folder, editable or not), else where it is installed."""
    if dist is None:
        return ""
    try:
        origin = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    except ValueError:
        origin = ""
    return origin.removeprefix("file://") or os.path.abspath(str(dist.locate_file("")))


def load(provider: Provider, base: type, what: str) -> type:
    """Import what ``provider`` names: a subclass of ``base`` whose ``name_attr``... is checked by
    the caller. ``what`` says what it is in messages ("origin type 'zip'")."""
    module_name, _, attribute = provider.target.partition(":")
    label = f"{what} ({provider.describe()})"
    try:
        module = importlib.import_module(module_name)
        found = getattr(module, attribute) if attribute else module
    except Exception as exc:  # a plugin may fail to import in any way at all: said, with its name
        raise ConfigError(f"{label} cannot be loaded: {type(exc).__name__}: {exc}") from None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(f"{label}: {provider.target} is not a {base.__name__} class")
    return found
