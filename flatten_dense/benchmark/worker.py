"""Run one measurement in this (fresh) process and print it as one JSON line.

`python -m flatten_dense.benchmark.worker '{"spec": ..., "size": [h, w], "batch": 1, "options": {...}}'`.
The parent may put an older source tree first on PYTHONPATH to measure a baseline version of the
models; the worker reports which `flatten_dense` it imported.
"""

from __future__ import annotations

import json
import sys

__all__ = ["main", "RESULT_PREFIX"]

RESULT_PREFIX = "BENCHMARK_RESULT "


def main(argv: list[str] | None = None) -> int:
    request = json.loads((sys.argv[1:] if argv is None else argv)[0])
    import flatten_dense

    from .measure import MeasureOptions, measure

    try:
        result = measure(
            request["spec"], tuple(request["size"]), request["batch"], MeasureOptions(**request["options"])
        )
        result["source"] = flatten_dense.__file__
    except Exception as error:  # reported to the parent as a row with an error, not a crash of the run
        result = {"error": f"{type(error).__name__}: {error}"}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
