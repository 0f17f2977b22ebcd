# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt
DEMO_DIR ?= runs/demo

.PHONY: demo demo-seeds test lint bench bench-gpu study transfer install clean

install: $(STAMP)

# torch and torchvision are pinned (the registry CUDA build, which also runs on CPU); the constraints file pins everything else
# to the versions the suite was last run with. The seg extra (mmsegmentation on mmcv-lite, pure Python) is installed
# so that the suite runs the MMSegmentation tests, and the wandb extra for its offline-run tests; Detectron2 is not on
# the package index (see the README).
$(STAMP): pyproject.toml setup.py $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev,seg,wandb]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m twist.cli.train --config configs/demo/digits.yaml --output-dir $(DEMO_DIR)
	$(PY) -m twist_tools.machine_speed

# The demo for seeds 0-4 at 1 and 2 threads, one run at a time (about 10 demo runs); writes docs/demo_seeds.md.
demo-seeds: $(STAMP)
	$(PY) -m twist_tools.demo_seeds

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) bench/step_overhead.py
	$(PY) bench/step_overhead.py --local-crops 6 --local-size 32
	$(PY) bench/data_pipeline.py
	$(PY) bench/memory.py
	$(PY) bench/optimizer.py
	$(PY) bench/evaluation.py

# The GPU figures of docs/performance.md: the ResNet-50 recipes at 224 px in bf16 on one CUDA GPU.
bench-gpu: $(STAMP)
	$(PY) bench/step_overhead.py --backbone resnet50 --image-size 224 --batch-size 256 --num-classes 32768 \
		--precision bf16 --channels-last --device cuda
	$(PY) bench/step_overhead.py --backbone resnet50 --image-size 224 --batch-size 128 --local-crops 6 --local-size 96 \
		--precision bf16 --channels-last --device cuda
	$(PY) bench/data_pipeline.py --device cuda --measure-step --step-batch-size 256
	$(PY) bench/memory.py --backbone resnet50 --image-size 224 --local-size 96 --num-classes 32768 --precision bf16 \
		--device cuda
	$(PY) bench/optimizer.py --backbone resnet50 --num-classes 32768 --device cuda
	$(PY) bench/evaluation.py --backbone resnet50 --image-size 224 --precision bf16 --device cuda

# TWIST vs Barlow Twins vs W-MSE and TWIST's ablations on digits, 3 seeds each: writes docs/study.md and docs/study.png.
study: $(STAMP)
	$(PY) -m twist_tools.study

# Transfer in miniature: pretrain on the train digits, convert, five segmentation (and, with Detectron2,
# detection) trials per initialisation on digit scenes; writes docs/transfer.md. Rerun to resume.
# TRANSFER_JOBS initialisations run side by side, the cores shared out between them.
TRANSFER_JOBS ?= 2
transfer: $(STAMP)
	$(PY) -m twist.transfer.benchmark --config configs/transfer/digit_scenes.yaml --output-dir runs/transfer \
		--doc docs/transfer.md --jobs $(TRANSFER_JOBS)

clean:
	rm -rf $(VENV) runs
