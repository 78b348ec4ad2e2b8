"""Lets ``pytest examples/musicfs-wavpack-format`` (and ``make test``) import the plugin without installing it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
