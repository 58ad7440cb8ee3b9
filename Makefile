# One venv for everything; `make demo` and `make test` are the quick start.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install test-tools demo test docs test-fast e2e-kind lint typecheck check bench clean crds chart-sync

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,docs]'
	touch $@

install: $(BIN)/.installed

demo: install  ## datagen -> filter -> key_by -> CEP -> SQLite, with live progress and a summary
	$(BIN)/helios run examples/embedded_fraud.json --home .helios

# promtool and prometheus (Debian's `prometheus`) check the /metrics exposition and a real scrape;
# Debian's `chromium` (/usr/bin/chromium) runs the web console's browser tests (Playwright drives it:
# no browser download).
test-tools:  ## install the tools the tests run (as root, with apt-get), or stop with the command to run
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && [ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's prometheus (promtool) and chromium for the tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus chromium >/dev/null; \
	  else \
	    echo "the tests need promtool, prometheus and chromium: run  sudo apt-get install -y prometheus chromium  first" >&2; \
	    exit 1; \
	  fi; }

# Two pytest workers (pytest-xdist), a test file per worker at a time (module fixtures such as a
# helios server stay in one process): most tests wait on subprocesses, brokers and checkpoints, so two
# run side by side on 2 cores in about half the time (12 min instead of 22).
test: install test-tools  ## the whole suite (about 15 min on 2 cores); starts its own Kafka-protocol brokers, uses local PostgreSQL
	$(BIN)/pytest -q -n 2 --dist loadfile

test-fast: install  ## the unit tests without services, promtool or the slow ones (15 s here, 35 s on busy cores)
	$(BIN)/pytest -q tests/unit -m "not slow and not promtool and not browser"

e2e-kind: install  ## tests/k8s's scenarios on kind: image build, kind load, helm install (needs Docker, kind, kubectl)
	$(BIN)/pytest tests/e2e -v -rs

lint: install  ## ruff, and lint-imports: the layer contracts of pyproject.toml (ARCHITECTURE.md)
	$(BIN)/ruff check src tests benchmarks docs/hooks
	$(BIN)/ruff format --check src tests benchmarks docs/hooks
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

bench: install  ## engine throughput and latency table (add QUIX=1 for the Quix Streams comparison)
	$(BIN)/python -m benchmarks.engine

docs: install  ## the documentation site into site/ (mkdocs build --strict: a broken link or a missing page fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

crds: install  ## regenerate crds/ and the chart's copy from the pydantic job models, and sync the chart
	$(BIN)/python -m heliosdb_streaming.kubernetes.crds crds helm/heliosdb-streaming/crds
	$(MAKE) chart-sync

chart-sync:  ## copy dashboards/*.json into the chart (Helm reads only files inside the chart)
	rm -f helm/heliosdb-streaming/dashboards/*.json
	cp dashboards/*.json helm/heliosdb-streaming/dashboards/

clean:
	rm -rf site .helios helios-demo.db helios-demo-windows* .pytest_cache .mypy_cache .ruff_cache
