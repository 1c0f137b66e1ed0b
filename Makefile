# nfhub: `make run` starts the service, `make test` runs the tests, `make bench` prints the benchmark figures.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test bench screenshots lint format clean

$(VENV)/.installed: setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/nfhub serve

test: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

screenshots: install
	NFHUB_SCREENSHOTS=docs/screenshots $(BIN)/pytest -q tests/test_page.py

lint: install
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache build
