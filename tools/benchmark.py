"""Speed and memory of FLatten backbones and config models: `python tools/benchmark.py --help`."""

import sys

from flatten_dense.benchmark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
