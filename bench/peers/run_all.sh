#!/usr/bin/env bash
# Every side-by-side benchmark in turn (run together they would skew each other's timings).
# Exits 1 if any of them missed a target or failed to run, after running them all.
cd "$(dirname "$0")/../.." || exit 1
python=${PYTHON:-.venv/bin/python}
status=0
for bench in step_rate recovery resume one_step_runs submit_rate worker_memory; do
    echo
    "$python" "bench/peers/$bench.py" || { status=1; echo "missed or failed: $bench"; }
done
exit $status
