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
# More extras for `make serve`, comma-separated: `make serve EXTRAS=images` (torch + diffusers).
# `make test` always installs the images extra (the image tests build a tiny pipeline).
EXTRAS  ?=
comma   := ,
EXTRA_STAMPS = $(foreach e,$(subst $(comma), ,$(EXTRAS)),$(VENV)/.extra-$(e))
PYTEST_ARGS ?=

.PHONY: install serve test lint bench clean chromium

install: $(STAMP) $(EXTRA_STAMPS)

$(STAMP): pyproject.toml scripts/install.sh scripts/ggml_cpu_flags.sh
	VENV=$(VENV) WHEELS=$(WHEELS) LLAMA_CPP_VERSION=$(LLAMA_CPP_VERSION) bash scripts/install.sh
	touch $(STAMP)

# one extra, installed once on top of the base install (and again when that is redone)
$(VENV)/.extra-%: $(STAMP)
	VENV=$(VENV) WHEELS=$(WHEELS) LLAMA_CPP_VERSION=$(LLAMA_CPP_VERSION) EXTRAS=$* bash scripts/install.sh
	touch $@

serve: install $(EXTRA_STAMPS)
	$(VENV)/bin/infergate serve --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

test: install $(VENV)/.extra-images lint chromium
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The panel's browser tests drive Debian's Chromium (never a downloaded browser).
chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium || \
	  sudo sh -c 'apt-get update -qq && apt-get install -y -qq chromium'; }

bench: install
	bash bench/run_all.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
