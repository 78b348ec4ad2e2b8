"""Option handling shared by ``musicfs`` and ``musicfs-inspect``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config


class _LazyConsole:
    """A rich Console made on first use: ``musicfs mount`` runs the daemon, which prints nothing
    in the normal case and whose start-up time is a requirement (rich costs ~40 ms to import)."""

    def __init__(self, **options: Any):
        self._options = options
        self._console: Any = None

    @property
    def rich(self):
        """The Console itself (for rich classes that take one, such as Progress)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rich, name)


console = _LazyConsole()
err_console = _LazyConsole(stderr=True)


def add_library_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, help="TOML config file")
    parser.add_argument("--origin", type=Path, help="a music folder to use as the only origin")
    parser.add_argument("--index", type=Path, help="index file (default: under the state directory)")


def resolve_config(args: argparse.Namespace, *, origin_must_exist: bool = True) -> Config:
    """The config named by --config, or the one-folder config --origin implies.

    A mount of an existing index may go ahead with its folder missing (offline
    start: cached tracks still play), so ``mount`` passes ``origin_must_exist=False``.
    """
    from ..config import config_for_folder, load_config  # here: the commands that ask a daemon read no config

    if args.config and args.origin:
        raise ConfigError("give either --config or --origin, not both")
    if args.config:
        config = load_config(args.config)
    elif args.origin:
        if origin_must_exist and not args.origin.is_dir():
            raise ConfigError(f"origin folder does not exist: {args.origin}")
        config = config_for_folder(args.origin)
    else:
        raise ConfigError("say which library: --config FILE or --origin FOLDER")
    return config


def index_path(args: argparse.Namespace, config: Config | None) -> Path:
    if getattr(args, "index", None):
        return args.index
    if config is None:
        raise ConfigError("say which library: --config, --origin or --index")
    return config.resolved_index_path(getattr(args, "state_dir", None))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the SFTP origin reports connection failures itself, once and with context;
    # paramiko's own transport thread would log each one again as an ERROR
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    # boto's INFO lines (where credentials were found, connection pool notes) are noise in a
    # daemon's log; its DEBUG lines print request headers, session tokens included
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
