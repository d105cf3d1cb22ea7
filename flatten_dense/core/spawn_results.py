"""What a spawned test run leaves for the command that started it.

Under `trainer.strategy=ddp_spawn` the test runs in child processes: Lightning brings the logged
metrics back, but not the task's per-class rows or the list of result files a callback wrote (the
parent's copies of the task and callbacks never see them). `SpawnedTestResults` has rank 0 leave
them in a small JSON file, which the parent reads back (in-process runs read their own objects).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

__all__ = ["SpawnedTestResults"]


class SpawnedTestResults(L.Callback):
    """On test (or predict) end, rank 0 writes the task's `test_summary` and the `written` files of `writers`."""

    def __init__(self, path: Path, writers: Sequence[Any] = ()) -> None:
        self.path = Path(path)
        self.writers = list(writers)
        self.path.unlink(missing_ok=True)  # never read a previous run's

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        payload = {
            "test_summary": getattr(pl_module, "test_summary", {}),
            "written": [{name: str(path) for name, path in getattr(w, "written", {}).items()} for w in self.writers],
        }
        temporary = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(payload, default=float))
        os.replace(temporary, self.path)

    on_predict_end = on_test_end  # a format-only run: no summary, the writers' files

    def read(self) -> dict[str, Any]:
        """What rank 0 left ({} when nothing was written); the file is removed after reading."""
        if not self.path.is_file():
            return {}
        payload = json.loads(self.path.read_text())
        self.path.unlink(missing_ok=True)
        return payload
