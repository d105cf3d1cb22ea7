#!/usr/bin/env python
"""`python tools/analyze_attention.py --model NAME --out DIR` is `flatten-dense analyze ...`."""

import sys

from flatten_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:]]))
