"""Run the pimon command line as ``python -m pimon``."""

from __future__ import annotations

import sys

from pimon.cli import main

if __name__ == "__main__":
    sys.exit(main())
