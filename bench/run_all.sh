#!/usr/bin/env bash
# Run every benchmark, one after the other (they would skew each other's timings if run together).
# Exits non-zero if any benchmark missed its target or failed to run.
set -u
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
failed=()
for bench in checkpoint_throughput recovery_latency resume_cost reviewflow_throughput knowledge_refresh llm_throughput fleet_limit fairness; do
    echo
    "$python" "bench/$bench.py" || failed+=("$bench")
done
echo
if [ ${#failed[@]} -gt 0 ]; then
    echo "missed or failed: ${failed[*]}"
    exit 1
fi
echo "all benchmarks met their targets"
