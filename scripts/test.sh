#!/usr/bin/env bash
# The test suite: installs what it needs, makes sure PostgreSQL and Redis answer, runs pytest.
# Extra arguments go to pytest (scripts/test.sh -k sweep).
source "$(dirname "$0")/bootstrap.sh"
source scripts/ensure_pgbouncer.sh
source scripts/ensure_node_producer.sh
source scripts/ensure_chromium.sh
.venv/bin/ruff check --quiet . || { echo "ruff found problems (above); fix them or run: .venv/bin/ruff check --fix ." >&2; exit 1; }
exec .venv/bin/python -m pytest "$@"
