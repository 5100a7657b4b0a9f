# Turnout: the two commands in README.md are `make demo` and `make test`; both set up what they need.
# The distribution's Python 3.11+ when it can make a venv (Debian: python3-venv), else python3 from PATH.
# Debian's interpreter is linked statically; the proxy's hot path runs ~8% faster on it than on a pyenv
# build that calls into a shared libpython (bench/RESULTS.md). `make PYTHON=...` picks another.
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' \
                  2>/dev/null && echo /usr/bin/python3 || echo python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test unit lint docker images chromium pebble socket-activate clean-containers bench help

help:
	@echo "make demo    set up, start Turnout, deploy a demo app v1, canary to v2 under load, report"
	@echo "make test    set up, then run the whole test suite (unit + sockets + real Docker engine)"
	@echo "make unit    only the tests that need no Docker engine"
	@echo "make lint    ruff"
	@echo "make bench   proxy benchmark beside direct, nginx and HAProxy (see bench/README.md)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

docker:
	scripts/ensure-docker.sh

images: docker
	scripts/build-images.sh

chromium:
	scripts/ensure-chromium.sh

pebble:
	scripts/ensure-pebble.sh

socket-activate:
	scripts/ensure-systemd-socket-activate.sh

demo: $(STAMP) images
	$(BIN)/python -m controller.rehearsal.demo

test: $(STAMP) images chromium pebble socket-activate
	$(BIN)/ruff check proxy controller tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check proxy controller tests bench

bench: $(STAMP)
	bench/proxy_bench.sh

# Remove every container any Turnout test or demo started (they all carry the turnout.managed label).
clean-containers:
	-docker ps -aq --filter label=turnout.managed | xargs -r docker rm -f
