# Two entry points stay true on a fresh machine: `make run` (serving only) and `make test` (+ test tools).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STORE := model_store
SERVE_STAMP := $(VENV)/.installed-serve
STAMP := $(VENV)/.installed
PORT ?= 8000

.PHONY: setup run test train analyze bench peers clean prometheus-tools image-test

# What `make run` needs: CPU torch and the serving dependencies, nothing else.
$(SERVE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU build, so no later requirement pulls a CUDA wheel.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

# What `make test` adds: the test tools (dev extra) and torchrec.
$(STAMP): $(SERVE_STAMP)
	$(BIN)/pip install -q -e '.[dev,torchrec-serving]'
	# torchrec (a test dependency) CPU-only: its metadata asks for the CUDA fbgemm-gpu, so it goes in last, without
	# dependencies (fbgemm-gpu-cpu of the same release stands in) and without pip's conflict report, which would
	# only repeat that fbgemm-gpu is absent; the light packages `import torchrec` needs come first.
	$(BIN)/pip install -q cloudpickle 'pyvers>=0.2,<0.3' pyre-extensions==0.0.32
	$(BIN)/pip install -q --no-deps --no-warn-conflicts torchrec==1.8.0 tensordict==0.15.3
	touch $@

setup: $(STAMP)

$(STORE)/default: | $(SERVE_STAMP)
	$(BIN)/ranker train --arch mmoe --name default --store $(STORE)

train: $(SERVE_STAMP)
	$(BIN)/ranker train --arch mmoe --name default --store $(STORE)

# exec: the server replaces the recipe's shell, so a SIGTERM (or Ctrl-C) that make passes on reaches the server.
run: $(SERVE_STAMP) $(STORE)/default
	$(BIN)/ranker analyze $(STORE)/default --n 1000
	exec env RANKER_MODEL_STORE=$(STORE) RANKER_MODEL_NAME=default $(BIN)/ranker serve --host 127.0.0.1 --port $(PORT)

# tests/deploy/test_prometheus.py runs Debian's prometheus and promtool: installed here when missing (root and
# apt), otherwise make test stops with the command to run. The test fails, never skips, without them.
prometheus-tools:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing Debian's prometheus (server and promtool) for tests/deploy/test_prometheus.py"; \
	        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	            --no-install-recommends prometheus >/dev/null; \
	    else \
	        echo "make test needs prometheus and promtool: sudo apt-get install prometheus" >&2; exit 1; \
	    fi; \
	fi

test: $(STAMP) prometheus-tools
	$(BIN)/ruff check .
	# mypy beside pytest (whose workers leave CPU idle while their servers start); either failing fails the target
	$(BIN)/mypy & mypy=$$!; $(BIN)/python -m pytest; tests=$$?; wait $$mypy; typed=$$?; \
	    [ $$tests -eq 0 ] && [ $$typed -eq 0 ]

# The image built with podman and run (tests/image/check_image.py: what it checks). Root on Debian: installs podman,
# runc and mmdebstrap when missing and makes the base image offline (deploy/image/). Not part of `make test`.
image-test: $(STAMP)
	deploy/image/podman_setup.sh
	deploy/image/base_image.sh
	$(BIN)/python -m pytest -n 0 -p no:cacheprovider -s tests/image/check_image.py

bench: $(SERVE_STAMP) $(STORE)/default
	$(BIN)/ranker bench $(STORE)/default --n 100,1000,5000

# bench.peers' KServe peer: its own venv, so kserve's dependencies never touch .venv; torch pinned to the same CPU build.
PEERS_VENV := .venv-peers
peers: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q torch==2.13.0
	echo 'torch==2.13.0' > $(PEERS_VENV)/constraints.txt
	$(PEERS_VENV)/bin/pip install -q -e '.[peers]' -c $(PEERS_VENV)/constraints.txt
	touch $@

clean:
	rm -rf $(VENV) $(PEERS_VENV) $(STORE)/*/
