# Two entry points stay true on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STORE := model_store
STAMP := $(VENV)/.installed
PORT ?= 8000

.PHONY: setup run test train analyze bench peers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU build, so no later requirement pulls a CUDA wheel.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# torchrec (a test dependency) CPU-only: its metadata asks for the CUDA fbgemm-gpu, so it goes in without
	# dependencies beside fbgemm-gpu-cpu of the same release and the light packages `import torchrec` needs.
	$(BIN)/pip install -q --no-deps torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0 tensordict==0.15.3
	$(BIN)/pip install -q cloudpickle 'pyvers>=0.2,<0.3' pyre-extensions==0.0.32
	touch $(STAMP)

setup: $(STAMP)

$(STORE)/default: | $(STAMP)
	$(BIN)/ranker train --arch mmoe --name default --store $(STORE)

train: $(STAMP)
	$(BIN)/ranker train --arch mmoe --name default --store $(STORE)

# exec: the server replaces the recipe's shell, so a SIGTERM (or Ctrl-C) that make passes on reaches the server.
run: $(STAMP) $(STORE)/default
	$(BIN)/ranker analyze $(STORE)/default --n 1000
	exec env RANKER_MODEL_STORE=$(STORE) RANKER_MODEL_NAME=default $(BIN)/ranker serve --host 127.0.0.1 --port $(PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP) $(STORE)/default
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
