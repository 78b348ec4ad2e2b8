"""``musicfs plugins``: the origin kinds, metadata sources and audio formats installed, where each
comes from, and whether it loads.

Each is imported here (that is the question), so a broken plugin is named with its error; a
mount imports only what its config names.
"""

from __future__ import annotations

import argparse

from .common import console, print_json


def add_commands(sub: argparse._SubParsersAction) -> None:
    plugins = sub.add_parser("plugins", help="the origin kinds, metadata sources and audio formats installed "
                                             "(built-in and plugins): package, version, where from, and whether "
                                             "each loads")
    plugins.add_argument("--json", action="store_true", help="print them as JSON")
    plugins.set_defaults(func=cmd_plugins)


def cmd_plugins(args: argparse.Namespace) -> int:
    """Exit 0 when every one loads, 1 when one does not (each says why)."""
    from ..errors import ConfigError
    from ..index import formats, metadata
    from ..origins import base

    checks = [(provider, lambda p=provider: base.load(p)) for provider in base.providers().values()]
    checks += [(provider, lambda p=provider: metadata.source_class(p.name)) for provider in metadata.providers().values()]
    checks += [(provider, lambda p=provider: formats.create(p)) for provider in formats.providers().values()]
    listed = []
    for provider, load in sorted(checks, key=lambda check: (check[0].group, check[0].name)):
        try:
            loaded = load()
            error = None
        except ConfigError as exc:
            loaded, error = None, str(exc)
        item = {"group": provider.group, "name": provider.name, "target": provider.target,
                "package": provider.distribution, "version": provider.version,
                "from": provider.location, "loads": error is None, "error": error}
        if provider.group == formats.FORMAT_GROUP:  # the files it reads
            item["extensions"] = list(loaded.extensions) if isinstance(loaded, formats.Reader) else []
        listed.append(item)
    if args.json:
        print_json(listed)
    else:
        from .render import plugins_table

        console.print(plugins_table(listed))
    return 0 if all(item["loads"] for item in listed) else 1
