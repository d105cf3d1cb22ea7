"""`flatten-dense test CONFIG CHECKPOINT [key=value ...] [--results-json PATH] [--aug-test]`.

Prints the metrics table and writes RUN_DIR/metrics.json (and, on request, COCO-format results
with the dataset's category ids).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L

from flatten_dense.config import ConfigError
from flatten_dense.factory import build_datamodule, build_task, build_trainer
from flatten_dense.models.checkpoint import load_weights

from .common import format_table, load_run_config, require_file, write_json

__all__ = ["test", "metrics_report"]


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
    results_json: str | Path | None = None,
    aug_test: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint on the config's test split; returns {'metrics': ..., 'per_class': ...}."""
    checkpoint = require_file(checkpoint, "checkpoint")
    cfg, run_dir = load_run_config(config, overrides)
    L.seed_everything(int(cfg.get("seed", 0)), workers=True)
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule, load_pretrained=False)
    load_weights(task, checkpoint)
    if aug_test:
        if not hasattr(task, "aug_test"):
            raise ConfigError("--aug-test applies to segmentation configs only")
        task.aug_test = True
    if results_json is not None:
        if not hasattr(task, "export_results"):
            raise ConfigError("--results-json applies to detection configs only")
        task.export_results = True
    trainer = build_trainer(cfg, run_dir, task, evaluation=True)
    logged = trainer.test(task, datamodule=datamodule, verbose=False)
    # The logged metrics come back from spawned processes too; per-class rows exist in-process only.
    summary = {
        "config": str(config),
        "checkpoint": str(checkpoint),
        "metrics": {name: float(value) for name, value in logged[0].items()},
        "per_class": task.test_summary.get("per_class", []),
    }
    if trainer.is_global_zero:
        print(metrics_report(summary))
        write_json(run_dir / "metrics.json", summary)
        print(f"\nmetrics written to {run_dir / 'metrics.json'}")
        if results_json is not None:
            Path(results_json).parent.mkdir(parents=True, exist_ok=True)
            Path(results_json).write_text(json.dumps(task.results))
            print(f"{len(task.results)} COCO-format results written to {results_json}")
    return summary
