#!/usr/bin/env bash
# The test suite: installs what it needs, makes sure PostgreSQL and Redis answer, runs pytest.
# Extra arguments go to pytest (scripts/test.sh -k sweep). --quick runs the tests that start no
# process of their own (no worker, live API, browser or pooler; no fault scenario): under two
# minutes, for an edit loop; CI runs everything. The tests spend most of their time
# waiting on real workers and servers, so DATAENGINE_TEST_PROCESSES pytest processes (pytest-xdist,
# 3 by default; 0 runs them all in this one) share them out; each has its own databases and Redis DB.
quick=()
if [ "${1:-}" = "--quick" ]; then
  shift
  quick=(-m "not slow")
fi
source "$(dirname "$0")/bootstrap.sh"
source scripts/ensure_pgbouncer.sh
source scripts/ensure_node_producer.sh
source scripts/ensure_chromium.sh
.venv/bin/ruff check --quiet . || { echo "ruff found problems (above); fix them or run: .venv/bin/ruff check --fix ." >&2; exit 1; }
layers=$(.venv/bin/lint-imports --no-cache --no-logo 2>&1) || { echo "$layers" >&2; echo "an import breaks the contracts of pyproject.toml's [tool.importlinter] (above)" >&2; exit 1; }
processes=${DATAENGINE_TEST_PROCESSES:-3}
if [ "$processes" -gt 0 ]; then
  exec .venv/bin/python -m pytest -n "$processes" "${quick[@]}" "$@"
fi
exec .venv/bin/python -m pytest "${quick[@]}" "$@"
