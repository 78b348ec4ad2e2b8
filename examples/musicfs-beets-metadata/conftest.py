"""Lets ``pytest examples/musicfs-beets-metadata`` (and ``make test``) import the plugin without installing it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
