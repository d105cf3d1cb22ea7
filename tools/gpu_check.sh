#!/usr/bin/env bash
# The prepared GPU check of issue 15: run it once when a GPU is lent (about 6-8 minutes on one GPU).
#
#   1. backbones at 1024 x 1024, batch 2, bf16 autocast: training images/s and peak memory of
#      flatten_swin_t vs torchvision swin_t, flatten_pvt_t vs our softmax-SRA PVT-T, and each
#      FLatten model with its plain layers (fast_layers=False) for the before/after;
#   2. Mask R-CNN FLatten-PVT-T and FLatten-Swin-T at 800 x 1333, batch 2, bf16 autocast (a full
#      training step on synthetic boxes and masks).
# Every row runs in its own process (peak memory = torch.cuda.max_memory_allocated growth); the
# rows are interleaved, two rounds, medians reported. Results go to $OUT (or ./gpu_check) as JSON
# and Markdown tables for docs/benchmarks.md.
# The device image lacks omegaconf, pycocotools and faster-coco-eval (the detector rows need them):
# run tools/gpu_wheels.sh here first, then the device call with carry [".whl"]:
#   run(carry=[".whl"], command="bash tools/gpu_check.sh", timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}  # the device image's python3 holds its PyTorch
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
DEST=${OUT:-gpu_check}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the device has no install of this package: the tree is it
NEEDED="import omegaconf, pycocotools, faster_coco_eval"
if ! "$PY" -c "$NEEDED" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then  # tools/gpu_wheels.sh
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PY" -c "$NEEDED" || {
  echo "missing omegaconf / pycocotools / faster-coco-eval: run tools/gpu_wheels.sh and carry .whl" >&2; exit 2; }
"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a lent GPU"
print("# GPU:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$DEST/nvidia_smi.csv" || true

# 1. Backbones (sizes and rounds kept small so the whole script fits one device call of 10 minutes).
"$PY" tools/benchmark.py --device cuda --amp bf16 --models flatten_swin_t flatten_pvt_t \
  --compare --compare-plain --sizes 1024 --batch 2 --repeats 10 --warmup 5 --rounds 2 \
  --out "$DEST/backbones_1024_b2_bf16.json" 2>&1 | tee "$DEST/backbones_1024_b2_bf16.md"

# 2. Mask R-CNN, full detector training step.
for config in mask_rcnn_flatten_pvt_t_fpn_1x_coco mask_rcnn_flatten_swin_t_fpn_1x_coco; do
  "$PY" tools/benchmark.py --device cuda --amp bf16 --models --config "configs/detection/$config.yaml" \
    --sizes 800x1333 --batch 2 \
    --repeats 5 --warmup 3 --out "$DEST/$config.json" 2>&1 | tee "$DEST/$config.md"
done
echo "# done: tables in $DEST/*.md"
