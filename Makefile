# Remit: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test bench lint fmt clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Runtime only (for the demo), then the test and lint tools; both pinned by requirements.lock.
$(VENV)/.runtime: pyproject.toml requirements.lock | $(BIN)/python
	$(PIP) install -q -c requirements.lock -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) install -q -c requirements.lock -e '.[test,lint]'
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/remit demo

# pytest exits 5 when it collected no tests: that is a failure here, never a silent pass.
# scripts/test-services.sh installs PostgreSQL if missing, starts a throwaway server,
# runs pytest with REMIT_TEST_PG and REMIT_REQUIRE_PG=1 set, and stops it (also on failure).
test: $(VENV)/.dev
	@scripts/test-services.sh run $(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$status

bench: $(VENV)/.dev
	$(BIN)/python bench/decision.py
	$(BIN)/python bench/http_decision.py
	$(BIN)/python bench/gateway.py

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

fmt: $(VENV)/.dev
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
