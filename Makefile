# Two commands set everything up on a fresh machine:  make quickstart   (install + main job)
#                                                      make test         (install + default test suite)
PYTHON ?= python3
DATA_ROOT ?= data
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := .install-stamp

SCALE ?= published
RUNS ?= runs
RESULTS ?= results
ONLY ?=
EXTRA ?=
EXPERIMENT ?= table1_smoke
LAUNCHER ?= basic
SWEEP ?= 1
CSV ?= experiments/results/smoke/runs.csv
OUT ?= results/notebook
FORCE ?=
OUT_NAME ?=

.PHONY: install data quickstart test test-all test-slurm lint gpu-check bench reproduce-table1 reproduce figures clean

# Installs into the current interpreter (use a venv of your own if you prefer: PYTHON=.venv/bin/python).
$(STAMP): pyproject.toml
	$(PYTHON) -m pip install $(TORCH_PINS)
	$(PYTHON) -m pip install -e ".[dev]" $(TORCH_PINS)
	touch $(STAMP)

install: $(STAMP) data

# Fashion-MNIST offline: Debian's package when we are root, torchvision's download otherwise.
data: $(STAMP)
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; fi
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
		$(PYTHON) -m nepenthe.data.prepare fashion_mnist --root $(DATA_ROOT); \
	else \
		$(PYTHON) -m nepenthe.data.prepare fashion_mnist --root $(DATA_ROOT) --download; fi

quickstart: install
	$(PYTHON) train.py experiment=quickstart

# Test tiers (pytest markers, tests/conftest.py): the default suite (< 160 s of tests on 2 cores) is what a newcomer
# runs; test-all adds the slow, end-to-end (subprocesses, kills, sweeps, notebooks), real-Slurm and cuda tiers (CI runs
# it; the cuda tier skips, saying why, without a GPU). test-all prints its 30 slowest tests, so a CI log shows where
# its 60-minute budget goes.
test: install
	$(PYTHON) -m pytest -q -m "not slow and not e2e and not slurm"

test-all: install
	$(PYTHON) -m pytest -q --durations=30

test-slurm: install
	$(PYTHON) -m pytest -q -m slurm

# ruff (style, imports, the bugs it can see) and mypy (the typed records, configs and interfaces) on the library
lint: install
	$(PYTHON) -m ruff check nepenthe nepenthe_cli
	$(PYTHON) -m mypy nepenthe

# The CUDA tier and one throughput comparison on this machine's GPU, with a compact report (docs/gpu.md); without a
# GPU it says so in one line and fails.
gpu-check: install
	$(PYTHON) bench/gpu_check.py

bench: install
	$(PYTHON) bench/entropy_overhead.py

# Table 1: the sweep preset of SCALE (smoke: conf/experiment/table1_smoke.yaml, CPU, ~23 min on 2 cores; published:
# conf/experiment/table1.yaml, GPUs), then collect -> tables -> figures into $(RESULTS)/$(SCALE)/. ONLY="seed=0"
# narrows a sweep, EXTRA adds overrides, LAUNCHER=slurm|local runs the jobs through
# hydra-submitit-launcher (conf/hydra/launcher/; a Slurm job asks for a GPU only when its hardware.device does); SWEEP=0 only renders the run directories already under $(RUNS).
# What a scale needs (CUDA, datasets, weights) is checked before anything is launched.
reproduce-table1: install
	$(PYTHON) -m analysis.reproduce --scale $(SCALE) --runs-root $(RUNS) --results $(RESULTS) --launcher $(LAUNCHER) \
		$(if $(filter 0,$(SWEEP)),--no-sweep) $(if $(ONLY),--only $(ONLY)) $(if $(EXTRA),--extra $(EXTRA))

# Any sweep preset: make reproduce EXPERIMENT=study_fashion_mnist_resnet18 (results into $(RESULTS)/$(EXPERIMENT)/,
# or $(RESULTS)/$(OUT_NAME)/).
reproduce: install
	$(PYTHON) -m analysis.reproduce --experiment $(EXPERIMENT) --runs-root $(RUNS) --results $(RESULTS) \
		--launcher $(LAUNCHER) $(if $(filter 0,$(SWEEP)),--no-sweep) $(if $(ONLY),--only $(ONLY)) \
		$(if $(EXTRA),--extra $(EXTRA)) $(if $(OUT_NAME),--out-name $(OUT_NAME))

# The notebook executed into OUT (tables, figures and the executed notebook); never into experiments/results
# unless FORCE=1.
figures: install
	$(PYTHON) -m analysis.notebook --csv $(CSV) --out $(OUT) $(if $(FORCE),--force)

clean:
	rm -rf $(STAMP) runs multirun outputs .pytest_cache
