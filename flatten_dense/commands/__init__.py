"""The command-line entry points: train, test, infer, demo (benchmark lives in flatten_dense.benchmark)."""
