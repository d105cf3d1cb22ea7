"""`flatten-dense test CONFIG CHECKPOINT [key=value ...] [--results-prefix PREFIX] [--aug-test]
[--format-only --out-dir DIR]`.

Prints the metrics table and writes RUN_DIR/metrics.json; for detection, `--results-prefix`
also writes COCO-format result files (PREFIX.bbox.json, PREFIX.segm.json) with the dataset's
category ids. `--aug-test` is the override `evaluation.aug_test=true`.

`--format-only --out-dir DIR` (mmseg's and mmdet's option) predicts the test split without
reading its ground truth (a test-server split has none) and writes the predictions into DIR in
the benchmark's submission format, the task's `format_writer`: ADE20K label PNGs (DIR/<stem>.png,
values 1..150) or COCO result files (DIR/results.bbox.json, DIR/results.segm.json). No metric is
computed, and metrics.json is left as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from flatten_dense.commands.build import (
    build_datamodule,
    build_trainer,
    check_checkpoint_task,
    load_run,
    load_task_weights,
    read_training_checkpoint,
    task_for_data,
)
from flatten_dense.commands.common import format_table, require_file, writable_dir, write_json
from flatten_dense.core.config import ConfigError
from flatten_dense.core.spawn_results import SpawnedTestResults

__all__ = ["metrics_report", "test"]


def metrics_report(summary: dict[str, Any]) -> str:
    """The overall metrics, then the per-class rows, as text tables."""
    metrics = summary.get("metrics", {})
    text = format_table([(name, value) for name, value in metrics.items()], ("metric", "value"))
    rows = summary.get("per_class") or []
    if rows:
        columns = list(rows[0].keys())
        text += "\n\n" + format_table([[row.get(c, "") for c in columns] for row in rows], columns)
    return text


def test(
    config: str | Path,
    checkpoint: str | Path,
    overrides: list[str] = (),
    *,
    results_prefix: str | Path | None = None,
    aug_test: bool = False,
    format_only: bool = False,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on the config's test split; returns {'metrics': ..., 'per_class': ...}.

    `format_only=True` writes the test split's predictions into `out_dir` instead (no ground truth
    read, no metric: 'metrics' and 'per_class' are empty, 'results' names what was written).
    """
    if format_only != (out_dir is not None):
        raise ConfigError("--format-only and --out-dir DIR go together: the predictions are written into DIR")
    if format_only and results_prefix is not None:
        raise ConfigError("--format-only writes its result files into --out-dir; leave out --results-prefix")
    if out_dir is not None:
        out_dir = writable_dir(out_dir, "--out-dir folder")  # before any work
    checkpoint = require_file(checkpoint, "checkpoint")
    run = load_run(config, overrides)
    payload = read_training_checkpoint(checkpoint)  # a bad file is one line before any data is read
    check_checkpoint_task(run, payload, checkpoint)
    if aug_test:
        if "evaluation" not in run.spec.sections:
            raise ConfigError(f"--aug-test needs a config with an 'evaluation' section; {run.task_name} has none")
        run = load_run(config, [*overrides, "+evaluation.aug_test=true"])
    callbacks = []
    if results_prefix is not None:
        if run.spec.results_writer is None:
            raise ConfigError(
                f"--results-prefix applies to configs whose task writes result files, not {run.task_name}"
            )
        writable_dir(Path(results_prefix).parent, "--results-prefix folder")  # before the evaluation, not after
        callbacks.append(run.spec.results_writer(results_prefix))
    if format_only:
        if run.spec.format_writer is None:
            raise ConfigError(f"--format-only applies to tasks with a submission format, not {run.task_name}")
        callbacks.append(run.spec.format_writer(out_dir))
    L.seed_everything(int(run.cfg.get("seed", 0)), workers=True)
    datamodule = build_datamodule(run)
    datamodule.ground_truth = not format_only  # before any split is read
    task = task_for_data(run, datamodule, load_pretrained=False)
    load_task_weights(run, task, checkpoint, payload=payload)
    spawned = SpawnedTestResults(run.run_dir / ".test_results.json", writers=callbacks)
    trainer = build_trainer(run, evaluation=True, callbacks=[*callbacks, spawned])
    if format_only:  # Lightning's predict loop: the task's predict_step, no metric
        trainer.predict(task, datamodule=datamodule, return_predictions=False)
        logged = [{}]
    else:
        logged = trainer.test(task, datamodule=datamodule, verbose=False)
    # The logged metrics come back from spawned processes too; per-class rows and result files through a file.
    carried = spawned.read()
    summary = {
        "config": str(config),
        "checkpoint": str(checkpoint),
        "metrics": {name: float(value) for name, value in logged[0].items()},
        "per_class": task.test_summary.get("per_class") or carried.get("test_summary", {}).get("per_class", []),
    }
    if callbacks:
        written = callbacks[0].written or (carried.get("written") or [{}])[0]
        summary["results"] = {iou_type: str(path) for iou_type, path in written.items()}
    if format_only:
        if trainer.is_global_zero:
            print(f"format-only: predictions written to {out_dir} (no ground truth read, no metrics)")
        return summary
    if trainer.is_global_zero:
        print(metrics_report(summary))
        write_json(run.run_dir / "metrics.json", summary)
        print(f"\nmetrics written to {run.run_dir / 'metrics.json'}")
    return summary
