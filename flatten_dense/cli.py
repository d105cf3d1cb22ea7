"""`flatten-dense train|test|infer|check-data|benchmark|demo|plot|analyze|export|convert`; tools/*.py call the same.

Every error is printed as one line (exit code 2 for a mistake in the input: config, files,
checkpoints, images; 1 for anything else); set FLATTEN_DENSE_DEBUG=1 to see the original
traceback instead. `key=value` overrides may stand anywhere on the command line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence

from flatten_dense.core.config import ConfigError
from flatten_dense.core.cpu_allocator import tune_cpu_allocator
from flatten_dense.models.checkpoint import CheckpointMismatchError
from flatten_dense.tasks import TASKS

__all__ = ["main", "run_command"]

USER_ERRORS = (ConfigError, FileNotFoundError, NotADirectoryError, CheckpointMismatchError, ValueError)
SUMMARY = __doc__.splitlines()[0]


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flatten-dense train", description="train from a YAML config")
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides; resume=PATH|auto|none")
    return parser


def _test_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatten-dense test", description="evaluate a checkpoint: metrics table + metrics.json"
    )
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument(
        "--results-prefix", help="detection: also write COCO-format results to PREFIX.bbox.json (and PREFIX.segm.json)"
    )
    parser.add_argument(
        "--aug-test", action="store_true", help="the override evaluation.aug_test=true (multi-scale + flip)"
    )
    parser.add_argument(
        "--format-only",
        action="store_true",
        help="no metrics, no ground truth read: write the test split's predictions into --out-dir in the "
        "test server's format (ADE20K label PNGs; COCO results.bbox.json / results.segm.json)",
    )
    parser.add_argument("--out-dir", help="the folder --format-only writes into")
    return parser


def _infer_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flatten-dense infer", description="draw predictions on images")
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("inputs", nargs="+", help="image files or folders of images, and key=value overrides")
    parser.add_argument("--out", required=True, help="folder for the PNG drawings")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="detections drawn from this score up")
    return parser


def _check_data_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatten-dense check-data",
        description="check every split of a config's dataset (as train and test do before step 1); summary table",
    )
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--threads", type=int, help="threads reading headers (default: up to 8)")
    parser.add_argument("--show", type=int, default=20, help="problems listed one a line (default 20)")
    return parser


def _demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatten-dense demo", description="train, evaluate and draw on built-in synthetic data"
    )
    parser.add_argument("--task", choices=tuple(TASKS), default="detection")
    parser.add_argument("--out", default="runs/demo", help="folder for data, checkpoints, metrics and pictures")
    parser.add_argument(
        "--config", help="another model config for the task's synthetic data (its run folder is named after it)"
    )
    return parser


def _analyze_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatten-dense analyze",
        description="figures of one focused linear attention layer: attention maps, ranks, focusing, "
        "permutation, position tables (nothing is downloaded)",
    )
    parser.add_argument("--model", required=True, help="a registered model name, e.g. flatten_swin_t")
    parser.add_argument("--out", required=True, help="folder for the PNG and JSON files (nothing else is written)")
    parser.add_argument("--pretrained", help="a released or trained weight file (default: random weights, seeded)")
    parser.add_argument("--image", help="a picture (default: scikit-image's astronaut if installed, else our own)")
    parser.add_argument("--layer", help="a focused linear attention layer's name (default: the deepest >= 14 x 14)")
    parser.add_argument("--size", type=int, default=224, help="the square size the picture is analysed at")
    parser.add_argument("--head", type=int, default=0, help="the attention head shown")
    parser.add_argument(
        "--point", type=int, nargs=2, action="append", metavar=("ROW", "COL"), help="a query token (repeatable)"
    )
    parser.add_argument("options", nargs="*", help="key=value backbone options, e.g. position_encoding=sinusoidal")
    return parser


def _plot_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatten-dense plot", description="a run's losses, learning rate and validation metrics in one PNG"
    )
    parser.add_argument("run_dir", help="the run folder (it holds logs/version_*/metrics.csv)")
    parser.add_argument("--out", help="the PNG to write (default RUN_DIR/curves.png)")
    return parser


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatten-dense export",
        description="export a backbone (zoo name) or a config's network with dynamic H x W (multiples of 32); "
        "a detection config: ONNX is the whole detector, pt2 its feature extractor (backbone + FPN)",
    )
    parser.add_argument("target", help="a zoo model name (the backbone) or a YAML config (its network)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--format", choices=("onnx", "pt2"), required=True, dest="fmt")
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--weights", help="a release ImageNet file (zoo name) or a task checkpoint (config)")
    parser.add_argument("--min-size", type=int, default=64, help="smallest H and W (Swin: at least 256)")
    parser.add_argument("--max-size", type=int, default=2048, help="largest H and W")
    return parser


def _export(args: argparse.Namespace) -> object:
    from flatten_dense.commands.export import export

    return export(
        args.target,
        fmt=args.fmt,
        out=args.out,
        weights=args.weights,
        overrides=args.overrides,
        min_size=args.min_size,
        max_size=args.max_size,
    )


def _convert_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatten-dense convert",
        description="a release file as plain weights (torch.load(weights_only=True) or safetensors reads it)",
    )
    parser.add_argument("file", help="a release (or our) checkpoint")
    parser.add_argument("--out", required=True, help="OUT.pth (weights-only dict) or OUT.safetensors")
    parser.add_argument("--use-ema", action="store_true", help="the file's EMA weights as 'model'")
    return parser


def _convert(args: argparse.Namespace) -> object:
    from flatten_dense.commands.convert import convert

    return convert(args.file, args.out, use_ema=args.use_ema)


def _split(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """(overrides, other positionals): an override is any `key=value` item."""
    return [i for i in items if "=" in i], [i for i in items if "=" not in i]


def _train(args: argparse.Namespace) -> object:
    from flatten_dense.commands.train import train

    return train(args.config, args.overrides)


def _test(args: argparse.Namespace) -> object:
    from flatten_dense.commands.test import test

    return test(
        args.config,
        args.checkpoint,
        args.overrides,
        results_prefix=args.results_prefix,
        aug_test=args.aug_test,
        format_only=args.format_only,
        out_dir=args.out_dir,
    )


def _infer(args: argparse.Namespace) -> object:
    from flatten_dense.commands.infer import infer

    overrides, images = _split(args.inputs)
    return infer(
        args.config,
        args.checkpoint,
        images,
        out_dir=args.out,
        overrides=overrides,
        score_threshold=args.score_threshold,
    )


def _check_data(args: argparse.Namespace) -> object:
    from flatten_dense.commands.check_data import check_data

    return check_data(args.config, args.overrides, threads=args.threads, show=args.show)


def _demo(args: argparse.Namespace) -> object:
    from flatten_dense.commands.demo import demo

    return demo(task=args.task, out_dir=args.out, config=args.config)


def _analyze(args: argparse.Namespace) -> object:
    from flatten_dense.commands.analyze import analyze

    return analyze(
        args.model,
        out_dir=args.out,
        pretrained=args.pretrained,
        image=args.image,
        layer=args.layer,
        size=args.size,
        head=args.head,
        points=[tuple(p) for p in args.point] if args.point else None,
        options=args.options,
    )


def _plot(args: argparse.Namespace) -> object:
    from flatten_dense.commands.plot import plot_run

    path = plot_run(args.run_dir, args.out)
    print(f"curves: {path}")
    return path


COMMANDS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], object]]] = {
    "train": (_train_parser, _train),
    "test": (_test_parser, _test),
    "infer": (_infer_parser, _infer),
    "check-data": (_check_data_parser, _check_data),
    "demo": (_demo_parser, _demo),
    "plot": (_plot_parser, _plot),
    "analyze": (_analyze_parser, _analyze),
    "export": (_export_parser, _export),
    "convert": (_convert_parser, _convert),
}


def _usage() -> str:
    names = "|".join([*COMMANDS, "benchmark"])
    return f"usage: flatten-dense {{{names}}} ...\n\n{SUMMARY}\n(flatten-dense COMMAND --help for each command)"


def run_command(argv: Sequence[str]) -> object:
    """Parse and run one command; raises its errors (main() prints them)."""
    argv = list(argv)
    if argv and argv[0] == "--version":
        from flatten_dense import __version__

        print(f"flatten-dense {__version__}")
        return None
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        if not argv:
            raise SystemExit(2)
        return None
    command, rest = argv[0], argv[1:]
    if command == "benchmark":  # tunes the allocator itself unless --no-allocator-tuning
        from flatten_dense.benchmark import main as benchmark_main

        return benchmark_main(rest)
    if command not in COMMANDS:
        raise ConfigError(f"unknown command {command!r}; choose one of {', '.join([*COMMANDS, 'benchmark'])}")
    make_parser, handler = COMMANDS[command]
    args = make_parser().parse_intermixed_args(rest)  # overrides may follow options
    # large tensors reuse freed memory instead of page-faulting (FLATTEN_DENSE_MALLOC_TUNING=0: off)
    tune_cpu_allocator()
    return handler(args)


def _worker_error(text: str) -> str | None:
    """The original error's own line of an exception re-raised from a DataLoader worker, or None."""
    if "Original Traceback" not in text:
        return None
    worker = re.search(r"in DataLoader worker process (\d+)", text)
    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
    last = re.sub(r"^[\w.]*(Error|Exception): ", "", last)
    return f"{last} (in DataLoader worker {worker.group(1) if worker else '?'})"


def _one_line(error: BaseException) -> str:
    text = _worker_error(str(error)) or " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, USER_ERRORS) else f"{type(error).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run_command(sys.argv[1:] if argv is None else argv)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as error:
        if os.environ.get("FLATTEN_DENSE_DEBUG"):
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2 if isinstance(error, USER_ERRORS) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
