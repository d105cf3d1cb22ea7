#!/usr/bin/env bash
# Run HERE (where pip reaches the registry), before lending a GPU: the wheels tools/gpu_check.sh
# needs on the device machine, whose image has torch, torchvision, lightning and timm but not our
# config and COCO packages (omegaconf and its antlr4 runtime, pycocotools, faster-coco-eval):
# without them the Mask R-CNN rows fail with ModuleNotFoundError. They go to .whl/ (git-ignored,
# about 1.2 MiB); the device call carries it: run(carry=[".whl"], command="bash tools/gpu_check.sh").
# The versions are those this project's CPU environment runs; Python 3.12, as on the device image.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl omegaconf==2.3.1 pycocotools==2.0.11 faster-coco-eval==1.8.0
"$PY" -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3  # sdist only: a pure-Python wheel
ls -l .whl
