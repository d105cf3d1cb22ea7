#!/usr/bin/env python
"""`python tools/test.py ...` is `flatten-dense test ...`."""

import sys

from flatten_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["test", *sys.argv[1:]]))
