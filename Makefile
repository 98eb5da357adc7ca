# make demo: fresh venv, install, digits shards, a short training run on them (the demo preset) with its summary
# make test: fresh venv, install, the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARDS ?= shards
# DALI wheels exist for Linux x86_64 only; elsewhere the PyTorch data path is used.
EXTRAS := test,viz,text,s3$(shell [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ] && echo ,dali)

.PHONY: install demo shards test lint bench clean
install: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=23" "setuptools>=64" wheel
	$(BIN)/pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

shards: install
	$(BIN)/python tools/make_shards.py --data digits --out $(SHARDS) --workers 2

demo: shards
	$(BIN)/python fastmlic/train.py --cfg demo --data.shards=$(SHARDS)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/make_shards.py
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
