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
python -m experiments.evaluate --workdir="$workdir" --num_problems=200
echo "Figures and metrics.json are in $workdir"
