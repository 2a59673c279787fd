#!/usr/bin/env bash
# The test suite: installs what it needs, makes sure PostgreSQL and Redis answer, runs pytest.
# Extra arguments go to pytest (scripts/test.sh -k sweep).
source "$(dirname "$0")/bootstrap.sh"
exec .venv/bin/python -m pytest "$@"
