#!/usr/bin/env python
"""`python tools/demo.py ...` is `flatten-dense demo ...`."""

import sys

from flatten_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
