"""`flatten-dense train|test|infer|benchmark|demo`; the scripts in tools/ call the same functions.

User errors (config keys, missing files, checkpoints that do not fit, unreadable images) are
printed as one line; set FLATTEN_DENSE_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from flatten_dense.config import ConfigError
from flatten_dense.cpu_allocator import tune_cpu_allocator
from flatten_dense.models.checkpoint import CheckpointMismatchError

__all__ = ["main", "run_command"]

USER_ERRORS = (ConfigError, FileNotFoundError, CheckpointMismatchError, ValueError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flatten-dense", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train from a YAML config")
    train.add_argument("config")
    train.add_argument("overrides", nargs="*", help="key=value config overrides; resume=PATH|auto|none")

    test = commands.add_parser("test", help="evaluate a checkpoint: metrics table + metrics.json")
    test.add_argument("config")
    test.add_argument("checkpoint")
    test.add_argument("overrides", nargs="*", help="key=value config overrides")
    test.add_argument("--results-json", help="also write COCO-format detection results here")
    test.add_argument("--aug-test", action="store_true", help="segmentation: multi-scale + flip test")

    infer = commands.add_parser("infer", help="draw predictions on images")
    infer.add_argument("config")
    infer.add_argument("checkpoint")
    infer.add_argument("inputs", nargs="+", help="image files (and key=value overrides)")
    infer.add_argument("--out", required=True, help="folder for the PNG drawings")
    infer.add_argument("--score-threshold", type=float, default=0.5)

    commands.add_parser("benchmark", help="speed and memory (see flatten-dense benchmark --help)", add_help=False)
    demo = commands.add_parser("demo", help="train, evaluate and draw on built-in synthetic data")
    demo.add_argument("--task", choices=("detection", "segmentation"), default="detection")
    demo.add_argument("--out", default="runs/demo", help="folder for data, checkpoints, metrics and pictures")
    demo.add_argument("--config", help="another model config for the task's synthetic data (its run folder is named after it)")
    return parser


def run_command(argv: Sequence[str]) -> object:
    """Parse and run one command; raises user errors (main() prints them)."""
    argv = list(argv)
    if argv and argv[0] == "benchmark":  # tunes the allocator itself unless --no-allocator-tuning
        from flatten_dense.benchmark import main as benchmark_main

        return benchmark_main(argv[1:])
    tune_cpu_allocator()  # large tensors reuse freed memory instead of page-faulting (FLATTEN_DENSE_MALLOC_TUNING=0: off)
    args = _parser().parse_args(argv)
    if args.command == "train":
        from flatten_dense.commands.train import train

        return train(args.config, args.overrides)
    if args.command == "test":
        from flatten_dense.commands.test import test

        return test(args.config, args.checkpoint, args.overrides, results_json=args.results_json, aug_test=args.aug_test)
    if args.command == "infer":
        from flatten_dense.commands.infer import infer

        overrides = [item for item in args.inputs if "=" in item]
        images = [item for item in args.inputs if "=" not in item]
        return infer(args.config, args.checkpoint, images, out_dir=args.out, overrides=overrides, score_threshold=args.score_threshold)
    if args.command == "demo":
        from flatten_dense.commands.demo import demo

        return demo(task=args.task, out_dir=args.out, config=args.config)
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run_command(sys.argv[1:] if argv is None else argv)
    except USER_ERRORS as error:
        if os.environ.get("FLATTEN_DENSE_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
