#!/usr/bin/env bash
# The test suite: installs what it needs, makes sure PostgreSQL and Redis answer, runs pytest.
# Extra arguments go to pytest (scripts/test.sh -k sweep). The tests spend most of their time
# waiting on real workers and servers, so DATAENGINE_TEST_PROCESSES pytest processes (pytest-xdist,
# 3 by default; 0 runs them all in this one) share them out; each has its own databases and Redis DB.
source "$(dirname "$0")/bootstrap.sh"
source scripts/ensure_pgbouncer.sh
source scripts/ensure_node_producer.sh
source scripts/ensure_chromium.sh
.venv/bin/ruff check --quiet . || { echo "ruff found problems (above); fix them or run: .venv/bin/ruff check --fix ." >&2; exit 1; }
processes=${DATAENGINE_TEST_PROCESSES:-3}
if [ "$processes" -gt 0 ]; then
  exec .venv/bin/python -m pytest -n "$processes" "$@"
fi
exec .venv/bin/python -m pytest "$@"
