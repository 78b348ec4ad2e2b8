"""Run the real ``musicfs`` command with searches for one marker word made slow, for real-mount
checks that a slow search (a cold index of a million tracks) holds up nothing but its own listing.

    python -m tests.search_delay --marker WORD --seconds S -- <musicfs arguments>

The engine's search (synchronous: the search service runs it in its worker threads) sleeps ``S``
seconds first when the query's text holds ``WORD``; every other query, and everything else, is the
normal entry point (:func:`musicfs.cli.main.main`), so the process is a real daemon.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time


def _slow_searches(marker: str, seconds: float) -> None:
    from musicfs.search.engine import SearchEngine

    original = SearchEngine.search

    @functools.wraps(original)
    def search(self, query, *args, **kwargs):
        if marker in (query if isinstance(query, str) else query.text):
            time.sleep(seconds)  # in the worker thread that runs the search, as a long query would
        return original(self, query, *args, **kwargs)

    SearchEngine.search = search


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.search_delay")
    parser.add_argument("--marker", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("musicfs", nargs=argparse.REMAINDER, help="-- then the musicfs arguments")
    args = parser.parse_args(argv)
    _slow_searches(args.marker, args.seconds)
    rest = args.musicfs[1:] if args.musicfs[:1] == ["--"] else args.musicfs

    from musicfs.cli.main import main as musicfs_main

    return musicfs_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
