#!/usr/bin/env python
"""`python tools/train.py ...` is `flatten-dense train ...`."""

import sys

from flatten_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
