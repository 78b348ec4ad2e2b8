"""``musicfs plugins``: the origin kinds installed, where each comes from, and whether it loads.

Each kind is imported here (that is the question), so a broken plugin is named with its
error; a mount imports only the kinds its config uses.
"""

from __future__ import annotations

import argparse

from .common import console, print_json


def add_commands(sub: argparse._SubParsersAction) -> None:
    plugins = sub.add_parser("plugins", help="the origin kinds installed (built-in and plugins): package, "
                                             "version, where from, and whether each loads")
    plugins.add_argument("--json", action="store_true", help="print them as JSON")
    plugins.set_defaults(func=cmd_plugins)


def cmd_plugins(args: argparse.Namespace) -> int:
    """Exit 0 when every kind loads, 1 when one does not (each says why)."""
    from ..errors import ConfigError
    from ..origins.base import ORIGIN_GROUP, load, providers

    listed = []
    for kind, provider in sorted(providers().items()):
        try:
            load(provider)
            error = None
        except ConfigError as exc:
            error = str(exc)
        listed.append({"group": ORIGIN_GROUP, "name": kind, "target": provider.target,
                       "package": provider.distribution, "version": provider.version,
                       "from": provider.location, "loads": error is None, "error": error})
    if args.json:
        print_json(listed)
    else:
        from .render import plugins_table

        console.print(plugins_table(listed))
    return 0 if all(item["loads"] for item in listed) else 1
