#!/usr/bin/env python
"""`python tools/infer.py ...` is `flatten-dense infer ...`."""

import sys

from flatten_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
