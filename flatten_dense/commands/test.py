"""`flatten-dense test CONFIG CHECKPOINT [key=value ...] [--results-prefix PREFIX] [--aug-test]`.

Prints the metrics table and writes RUN_DIR/metrics.json; for detection, `--results-prefix`
also writes COCO-format result files (PREFIX.bbox.json, PREFIX.segm.json) with the dataset's
category ids. `--aug-test` is the override `evaluation.aug_test=true`.
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
) -> dict[str, Any]:
    """Evaluate a checkpoint on the config's test split; returns {'metrics': ..., 'per_class': ...}."""
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
    L.seed_everything(int(run.cfg.get("seed", 0)), workers=True)
    datamodule = build_datamodule(run)
    task = task_for_data(run, datamodule, load_pretrained=False)
    load_task_weights(run, task, checkpoint, payload=payload)
    spawned = SpawnedTestResults(run.run_dir / ".test_results.json", writers=callbacks)
    trainer = build_trainer(run, evaluation=True, callbacks=[*callbacks, spawned])
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
    if trainer.is_global_zero:
        print(metrics_report(summary))
        write_json(run.run_dir / "metrics.json", summary)
        print(f"\nmetrics written to {run.run_dir / 'metrics.json'}")
    return summary
