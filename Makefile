# make demo: set up .venv and run the quickstart sweep; make test: set up .venv and run the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= $(abspath ../shared/data)
# the data folder: DATA given to make wins, then $$PEFT_SWEEP_DATA_DIR, then ../shared/data if it exists;
# with none of them the loader reads the tasks from the Hugging Face Hub
ifeq ($(origin DATA),command line)
export PEFT_SWEEP_DATA_DIR := $(abspath $(DATA))
else ifeq ($(PEFT_SWEEP_DATA_DIR),)
ifneq ($(wildcard $(DATA)),)
export PEFT_SWEEP_DATA_DIR := $(DATA)
endif
endif

.PHONY: demo test test-fast setup clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 resolves to the CPU build here; on a GPU cluster install your own torch first
	$(BIN)/pip install -q torch==2.13.0

$(BIN)/peft-sweep: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# the test tools (pytest, xdist, the S3 test server) only for those who run the tests; one install of the
# package with them (installing it twice cost CI most of a minute)
$(VENV)/.test-extras: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/peft-sweep $@

setup: $(BIN)/peft-sweep

demo: setup  # the run ends by exporting (runs/quickstart/export) and writing the report (runs/quickstart/report)
	$(BIN)/peft-sweep run configs/quickstart.yaml

# tests run in TEST_WORKERS processes (pytest-xdist); the two-node cluster module keeps to one of them.
# Most of a sweep test is waiting (Ray and interpreters starting), so two share the 2-core CI machine well
TEST_WORKERS ?= 2
# --durations: the slowest tests in every CI log, for whoever trims the suite next
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=30

test: $(VENV)/.test-extras
	$(PYTEST)

test-fast: $(VENV)/.test-extras
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
