# Two commands set everything up on a fresh machine:
#   make demo   -> the main job (train a small model on synthetic data, evaluate, draw predictions)
#   make test   -> the test suite
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-segmentation demo-cascade test test-heavy lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

demo-segmentation: $(STAMP)
	$(PY) tools/demo.py --task segmentation

demo-cascade: $(STAMP)
	$(PY) tools/demo.py --config configs/detection/demo_cascade_mask_rcnn_flatten_pvt_v2_b0_synthetic.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-heavy: $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,onnx]"
	$(PY) -m pytest -q -m heavy

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
