"""The command-line entry points: train, test, infer, demo, and the one build path they share
(`build.py`); benchmark lives in flatten_dense.benchmark."""
