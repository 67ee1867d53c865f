#!/usr/bin/env bash
# Trains and evaluates every flag file in experiments/configs (except the quickstart), then
# regenerates the table in docs/results.md. Runs one after another so that each training time is
# measured on an otherwise idle machine. Interrupted? Run it again: training resumes from the last
# checkpoint and finished runs are not retrained.
# Usage: bash scripts/reproduce_results.sh [RUNS_DIR] [CONFIG ...]   (default: runs, all configs)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-runs}"
shift || true
configs=("$@")
if [ ${#configs[@]} -eq 0 ]; then
  configs=(poisson weinberg poisson_paper weinberg_paper gaussian linear_regression
           multi_distribution lotka_volterra)
fi
export TF_CPP_MIN_LOG_LEVEL=2
for name in "${configs[@]}"; do
  python -m experiments.train --flagfile="experiments/configs/${name}.cfg" \
    --workdir="${runs}/${name}" --log_every=500
  python -m experiments.evaluate --workdir="${runs}/${name}" --num_problems=500
done
python -m experiments.report --runs="${runs}" --output=docs/results.md
