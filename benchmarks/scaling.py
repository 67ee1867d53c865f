r"""Accuracy as the dimension grows: the linear-Gaussian models `linear_gaussian_<d>`, whose exact
posterior is Gaussian and correlated, trained and evaluated with the installed binaries.

  python -m benchmarks.scaling --root=runs/scaling                # d = 2, 5, 10, 20
  python -m benchmarks.scaling --root=runs/scaling --dims=2,5 --flags=--epochs=2

For each d: `experiments.train --config=linear_gaussian --simulator=linear_gaussian_<d>` (resumed
if the workdir exists), then `experiments.evaluate` on --num_problems held-out problems, and a row
of the table: RMSE of the final mean divided by the exact posterior mean's (worst and average
parameter), coverage of the 68% / 95% intervals (average over the parameters, and the parameter
furthest from nominal), the marginal KL divergence from the exact posterior, and the training
time. Writes the table (markdown) to --output and the figure beside it.
"""

import json
import os
import subprocess
import sys
from typing import Any, Dict, List

from absl import app, flags
import numpy as np

flags.DEFINE_string("root", None, "directory for the runs, one workdir per dimension")
flags.DEFINE_list("dims", ["2", "5", "10", "20"], "dimensions to run")
flags.DEFINE_list("flags", [], "extra training flags, e.g. --flags=--epochs=2,--proposal=...")
flags.DEFINE_integer("num_problems", 500, "held-out problems per dimension")
flags.DEFINE_string("output", "docs/scaling.md", "markdown table; the figure goes beside it")
flags.mark_flag_as_required("root")
FLAGS = flags.FLAGS


def _run(module: str, *args: str) -> None:
  subprocess.run([sys.executable, "-m", module, *args], check=True)


def _row(dim: int, workdir: str) -> Dict[str, Any]:
  """The table's figures for one dimension, from the run's metrics and summary."""
  with open(os.path.join(workdir, "metrics.json")) as stream:
    metrics = json.load(stream)
  with open(os.path.join(workdir, "training_summary.json")) as stream:
    summary = json.load(stream)
  ratio = np.array(list(metrics["ratios"]["to_posterior_mean"].values()))
  coverage = {level: np.array(list(values.values()))
              for level, values in metrics["coverage"].items()}
  kl = np.array(list(metrics["marginal_kl_to_posterior"].values()))
  return {"d": dim, "ratio_max": ratio.max(), "ratio_mean": ratio.mean(),
          "coverage_68": coverage["0.68"].mean(), "coverage_68_worst": _worst(coverage["0.68"], .68),
          "coverage_95": coverage["0.95"].mean(), "coverage_95_worst": _worst(coverage["0.95"], .95),
          "marginal_kl": kl.mean(), "train_minutes": summary["train_seconds"] / 60.0,
          "steps": summary["steps"]}


def _worst(values: np.ndarray, nominal: float) -> float:
  return float(values[np.argmax(np.abs(values - nominal))])


def _table(rows: List[Dict[str, Any]]) -> str:
  lines = ["| d | RMSE / Bayes (worst, mean) | 68% coverage (mean, worst) | "
           "95% coverage (mean, worst) | marginal KL | steps | training (min) |",
           "|---|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['d']} | {row['ratio_max']:.3f}, {row['ratio_mean']:.3f} | "
                 f"{row['coverage_68']:.3f}, {row['coverage_68_worst']:.3f} | "
                 f"{row['coverage_95']:.3f}, {row['coverage_95_worst']:.3f} | "
                 f"{row['marginal_kl']:.3f} | {row['steps']} | {row['train_minutes']:.1f} |")
  return "\n".join(lines) + "\n"


def _figure(rows: List[Dict[str, Any]], path: str) -> None:
  from matplotlib import pyplot as plt   # only the report needs matplotlib
  dims = [row["d"] for row in rows]
  figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
  left.plot(dims, [row["ratio_max"] for row in rows], "o-", label="worst parameter")
  left.plot(dims, [row["ratio_mean"] for row in rows], "s--", label="mean over parameters")
  left.axhline(1.1, color="k", alpha=0.3, label="1.10")
  left.set(xlabel="dimension d", ylabel="RMSE / exact posterior mean's", xscale="log")
  left.legend(fontsize=8)
  right.plot(dims, [row["coverage_68"] for row in rows], "o-", label="68% intervals")
  right.plot(dims, [row["coverage_95"] for row in rows], "s-", label="95% intervals")
  for nominal in (0.68, 0.95):
    right.axhspan(nominal - 0.05, nominal + 0.05, color="tab:gray", alpha=0.2)
  right.set(xlabel="dimension d", ylabel="coverage", xscale="log")
  right.legend(fontsize=8)
  for axis in (left, right):   # the dimensions themselves, not log-axis minor ticks over them
    axis.set_xticks(dims, [str(dim) for dim in dims])
    axis.minorticks_off()
  figure.tight_layout()
  figure.savefig(path, dpi=110)


def main(argv):
  del argv
  rows = []
  for dim in map(int, FLAGS.dims):
    workdir = os.path.join(FLAGS.root, f"d{dim}")
    _run("experiments.train", "--config=linear_gaussian", f"--simulator=linear_gaussian_{dim}",
         f"--workdir={workdir}", *FLAGS.flags)
    _run("experiments.evaluate", f"--workdir={workdir}", f"--num_problems={FLAGS.num_problems}",
         "--robustness_problems=4", "--robustness_starts=4")
    rows.append(_row(dim, workdir))
    print(_table(rows))
  figure = os.path.join(os.path.dirname(FLAGS.output) or ".", "figures", "scaling.png")
  os.makedirs(os.path.dirname(figure), exist_ok=True)   # also the page's own directory
  with open(FLAGS.output, "w") as stream:
    stream.write("# Scaling benchmark\n\nRegenerate with `python -m benchmarks.scaling "
                 f"--root=runs/scaling` (held-out problems: {FLAGS.num_problems} per d; extra "
                 f"training flags: {' '.join(FLAGS.flags) or 'none'}).\n\n" + _table(rows)
                 + f"\n![scaling](figures/scaling.png)\n")
  _figure(rows, figure)


if __name__ == "__main__":
  app.run(main)
