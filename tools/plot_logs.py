#!/usr/bin/env python
"""`python tools/plot_logs.py RUN_DIR` is `flatten-dense plot RUN_DIR`."""

import sys

from flatten_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["plot", *sys.argv[1:]]))
