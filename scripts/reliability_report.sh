#!/usr/bin/env bash
# Run the fault-injection suite and write docs/reliability.md from the figures it measured.
# Extra arguments go to pytest (scripts/reliability_report.sh -k broker).
source "$(dirname "$0")/bootstrap.sh"
source scripts/ensure_pgbouncer.sh
figures=$(mktemp -d)
trap 'rm -rf "$figures"' EXIT
DATAENGINE_FAULTS_REPORT_DIR="$figures" .venv/bin/python -m pytest -m faults -n "${DATAENGINE_TEST_PROCESSES:-3}" -q "$@"
.venv/bin/python scripts/reliability_report.py "$figures" docs/reliability.md
