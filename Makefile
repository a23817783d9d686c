# infergate: `make serve` and `make test` are the two commands a fresh machine needs.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
HOST    ?= 127.0.0.1
PORT    ?= 8000
# llama-cpp-python compiles from source (~7 min on 2 cores): its wheel is built once and reused.
# (the folder is named after the CPU flags in scripts/ggml_cpu_flags.sh)
WHEELS  ?= $(HOME)/.cache/infergate/wheels-avx2
LLAMA_CPP_VERSION ?= 0.3.36
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install serve test lint bench clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh scripts/ggml_cpu_flags.sh
	VENV=$(VENV) WHEELS=$(WHEELS) LLAMA_CPP_VERSION=$(LLAMA_CPP_VERSION) bash scripts/install.sh
	touch $(STAMP)

serve: install
	$(VENV)/bin/infergate serve --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

test: install lint chromium
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The panel's browser tests drive Debian's Chromium (never a downloaded browser).
chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium || \
	  sudo sh -c 'apt-get update -qq && apt-get install -y -qq chromium'; }

bench: install
	bash bench/run_all.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
