#!/usr/bin/env bash
# Installs alfi-tf into .venv, then trains and evaluates a small Poisson experiment (a few minutes on
# a laptop CPU). Usage: bash scripts/quickstart.sh [WORKDIR]   (default: runs/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
workdir="${1:-runs/quickstart}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e .
export TF_CPP_MIN_LOG_LEVEL=2
python -m experiments.train --flagfile=experiments/configs/quickstart.cfg --workdir="$workdir"
# One run per data set: training ends by recalibrating the answer's std on fresh problems, so
# its intervals cover about as they claim (docs/results.md). `--num_starts=8` pools eight runs:
# a smaller error, but wider intervals than needed (each run's std already covers its error).
python -m experiments.evaluate --workdir="$workdir" --num_problems=200
echo "Figures and metrics.json are in $workdir"
