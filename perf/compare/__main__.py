"""``python -m perf.compare``: see the package's docstring."""

import sys

from perf.compare import main

if __name__ == "__main__":
    sys.exit(main())
