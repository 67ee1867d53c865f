r"""Is it worth it? ALFI against NPE and rejection ABC, at counted simulation budgets.

  python -m benchmarks.comparison --root=runs/comparison           # every built-in simulator
  python -m benchmarks.comparison --root=runs/comparison --simulators=poisson,weinberg

For each simulator, with its ALFI config (`experiments/configs/<config>.cfg`):

* ALFI trained with the binaries at `--alfi_fractions` of the config's epochs (the learning
  curve; the full config is the last point), answering with T = 15 from one start;
* NPE with a spline flow at each of `--npe_budgets` training simulations (`num_problems =
  budget / n`), and with a full-covariance Gaussian at the largest; same input transform and
  set-encoder features as the ALFI config;
* rejection ABC at ALFI's per-data-set budget (T M N simulated observations: T M draws of N), and
  at 100 x that budget with full-size simulated sets (N = n), on the simulator's summary
  statistics (else the largest NPE's summary network).

All are scored on the same `--num_problems` held-out problems (`comparison.score`), cached in
`<root>/<simulator>/scores.json`; a rerun trains and scores only what is missing (an interrupted
ALFI or NPE training resumes where it stopped), then rewrites the generated section of `--output`
(between its markers; the text around them is kept) and the learning-curve figure from every
simulator scored so far.
"""

import json
import math
import os
import re
import subprocess
import sys
from typing import Any, Callable, Dict, List

from absl import app, flags, logging
import numpy as np

from alfi_tf.baselines.abc import ABCConfig
from alfi_tf.baselines.npe import NPEConfig
from alfi_tf.baselines.npe_training import is_trained, load_npe, train_npe
from alfi_tf.evaluation import comparison
from alfi_tf.evaluation.references import reference_estimates
from alfi_tf.evaluation.report import replace_marked_section
from alfi_tf.simulators import get_simulator
from alfi_tf.workdir import write_json_atomically

#: Simulator -> its ALFI config.
CONFIGS = {"poisson": "poisson", "weinberg": "weinberg", "gaussian": "gaussian",
           "linear_regression": "linear_regression", "multi_distribution": "multi_distribution",
           "lotka_volterra": "lotka_volterra", "linear_gaussian_5": "linear_gaussian",
           "linear_gaussian_10": "linear_gaussian"}

flags.DEFINE_string("root", None, "directory for the runs: <root>/<simulator>/<method>")
flags.DEFINE_list("simulators", list(CONFIGS), "simulators to compare")
flags.DEFINE_list("alfi_fractions", ["0.1", "0.3", "1"], "fractions of the config's epochs")
flags.DEFINE_list("npe_budgets", ["1e5", "1e6", "1e7"], "NPE training simulations")
flags.DEFINE_integer("num_problems", 500, "held-out problems per simulator")
flags.DEFINE_integer("test_steps", 15, "ALFI's horizon T at test time")
flags.DEFINE_integer("seed", 12345, "seed of the held-out problems (a stream no run trains on)")
flags.DEFINE_integer("npe_epochs", 200, "the most NPE epochs (early stopping ends most runs)")
flags.DEFINE_string("output", "docs/comparison.md", "the page; its figure goes to figures/")
flags.mark_flag_as_required("root")
FLAGS = flags.FLAGS


def config_settings(config: str) -> Dict[str, str]:
  """The flags an `experiments/configs/<config>.cfg` sets, its `--flagfile`s followed."""
  settings: Dict[str, str] = {}
  with open(os.path.join("experiments", "configs", f"{config}.cfg")) as stream:
    for line in stream:
      match = re.match(r"--(\w+)=(.*)", line.strip())
      if match and match.group(1) == "flagfile":
        settings.update(config_settings(os.path.basename(match.group(2))[:-len(".cfg")]))
      elif match:
        settings[match.group(1)] = match.group(2)
  return settings


def _train_alfi(simulator: str, config: str, fraction: float, workdir: str) -> None:
  epochs = max(1, round(fraction * int(config_settings(config)["epochs"])))
  subprocess.run([sys.executable, "-m", "experiments.train", f"--config={config}",
                  f"--simulator={simulator}", f"--workdir={workdir}", f"--epochs={epochs}",
                  "--log_every=1000"], check=True)


def _npe_config(simulator: str, settings: Dict[str, str], budget: int, density: str) -> NPEConfig:
  num_obs = int(settings.get("num_obs", 500))
  return NPEConfig(simulator=simulator, density=density, num_problems=budget // num_obs,
                   num_obs=num_obs, epochs=FLAGS.npe_epochs,
                   observation_transform=settings.get("observation_transform", "none"),
                   cross_moment_features=settings.get("cross_moment_features") == "true")


def _methods(simulator: str, root: str) -> Dict[str, Callable[[], comparison.Answer]]:
  """Label -> a function training (where needed) and answering, in the order to run them."""
  config = CONFIGS[simulator]
  settings = config_settings(config)
  methods: Dict[str, Callable[[], comparison.Answer]] = {}
  test = lambda: _test_problems(simulator, settings)   # pylint: disable=unnecessary-lambda-assignment
  budgets = sorted(int(float(b)) for b in FLAGS.npe_budgets)
  for budget in budgets:
    for density in ("flow",) + (("gaussian",) if budget == budgets[-1] else ()):
      label = f"npe_{density}_{_short(budget)}"
      methods[label] = _npe_method(os.path.join(root, label),
                                   _npe_config(simulator, settings, budget, density), test)
  for fraction in sorted(map(float, FLAGS.alfi_fractions)):
    label = f"alfi_{fraction:g}"
    workdir = os.path.join(root, label)
    methods[label] = lambda w=workdir, f=fraction: (
        _train_alfi(simulator, config, f, w),
        comparison.alfi_answer(w, test(), FLAGS.seed + 1, FLAGS.test_steps))[1]
  per_inference = (FLAGS.test_steps * int(settings.get("num_samples", 20))
                   * int(settings.get("num_simulated_obs", 20)))
  for label, abc_config in (
      ("abc_equal_budget", ABCConfig(per_inference, int(settings.get("num_simulated_obs", 20)))),
      ("abc_100x_budget", ABCConfig(100 * per_inference, int(settings.get("num_obs", 500))))):
    methods[label] = lambda c=abc_config, l=label: comparison.abc_answer(
        get_simulator(simulator), c, test(), FLAGS.seed + 2, _abc_summary(simulator, root), l)
  return methods


def _short(budget: int) -> str:
  """`1e7` for 10,000,000 (labels and directory names)."""
  mantissa, exponent = f"{budget:.0e}".split("e")
  return f"{mantissa}e{int(exponent)}"


def _npe_method(workdir: str, config: NPEConfig, test) -> Callable[[], comparison.Answer]:
  def run() -> comparison.Answer:
    if not is_trained(workdir):
      train_npe(config, workdir, verbose=0)
    return comparison.npe_answer(workdir, test(), FLAGS.seed + 1)
  return run


def _abc_summary(simulator: str, root: str):
  """None (the simulator's own statistics), else the largest NPE flow's summary network."""
  if get_simulator(simulator).has_summary_statistics:
    return None
  budget = max(int(float(b)) for b in FLAGS.npe_budgets)
  return load_npe(os.path.join(root, f"npe_flow_{_short(budget)}")).context


_TEST_CACHE: Dict[str, Any] = {}


def _test_problems(simulator: str, settings: Dict[str, str]):
  if simulator not in _TEST_CACHE:
    _TEST_CACHE[simulator] = comparison.held_out_problems(
        get_simulator(simulator), FLAGS.num_problems, int(settings.get("num_obs", 500)),
        FLAGS.seed)
  return _TEST_CACHE[simulator]


def run_simulator(simulator: str) -> Dict[str, Any]:
  """Trains and scores every missing method of `simulator`; returns its scores by label."""
  root = os.path.join(FLAGS.root, simulator)
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, "scores.json")
  scores = json.load(open(path)) if os.path.exists(path) else {}   # pylint: disable=consider-using-with
  test = _test_problems(simulator, config_settings(CONFIGS[simulator]))
  sim = get_simulator(simulator)
  references = reference_estimates(sim, test.observations)
  for label, method in _methods(simulator, root).items():
    if label in scores:
      continue
    logging.info("%s: %s", simulator, label)
    scores[label] = comparison.score(method(), test.theta, references, sim.parameter_names)
    write_json_atomically(path, scores)
  return scores


#: The table's order of methods (label up to its last `_`), each by its training budget.
METHOD_ORDER = ("alfi", "npe_flow", "npe_gaussian", "abc_equal", "abc_100x")


def _mean(values: Dict[str, float]) -> float:
  return float(np.mean(list(values.values())))


def _row(label: str, score: Dict[str, Any]) -> str:
  ratios = list(score["rmse_ratio"].values())
  coverage = {level: _mean(values) for level, values in score["coverage"].items()}
  kl = _mean(score["marginal_kl_to_posterior"]) if "marginal_kl_to_posterior" in score else None
  failed = f" ({score['failed']} failed)" if score["failed"] else ""
  return (f"| {label}{failed} | {score['training_simulations']:.2g} | "
          f"{score['simulations_per_inference']:.3g} | {max(ratios):.3f}, {np.mean(ratios):.3f} | "
          f"{coverage['0.68']:.2f} / {coverage['0.95']:.2f} | {score['nll']:.3f} | "
          f"{'' if kl is None else f'{kl:.3g}'} | {score['training_seconds'] / 60:.1f} | "
          f"{1000 * score['inference_seconds']:.2f} |")


def render_table(simulator: str, scores: Dict[str, Any]) -> str:
  """The markdown table of one simulator's scores."""
  reference = next(iter(scores.values()))["reference"].replace("_", " ")
  lines = [f"### {simulator}", "",
           f"| method | training sims | sims per data set | RMSE ÷ {reference} (worst, mean) | "
           f"coverage 68 / 95 | NLL of θ* | KL to posterior | training (min) | ms per data set |",
           "|---|---|---|---|---|---|---|---|---|"]
  lines += [_row(label, scores[label]) for label in sorted(
      scores, key=lambda label: (METHOD_ORDER.index(label.rsplit("_", 1)[0]),
                                 scores[label]["training_simulations"]))]
  return "\n".join(lines) + "\n"


def plot_learning_curves(all_scores: Dict[str, Dict[str, Any]], path: str) -> None:
  """Mean RMSE ratio against training simulations, one panel per simulator."""
  from matplotlib import pyplot as plt   # only the report needs matplotlib
  from matplotlib.ticker import ScalarFormatter
  count = len(all_scores)
  columns = min(count, 3)
  rows = -(-count // columns)
  figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
  for axis, (simulator, scores) in zip(axes.ravel(), all_scores.items()):
    for prefix, style, color in (("alfi_", "o-", "tab:blue"), ("npe_flow_", "s-", "tab:orange"),
                                 ("npe_gaussian_", "D", "tab:green")):
      points = sorted((s["training_simulations"], np.mean(list(s["rmse_ratio"].values())))
                      for label, s in scores.items() if label.startswith(prefix))
      if points:
        axis.plot(*zip(*points), style, color=color, label=prefix.rstrip("_"))
    for label, color in (("abc_equal_budget", "tab:red"), ("abc_100x_budget", "tab:purple")):
      if label in scores:
        axis.axhline(np.mean(list(scores[label]["rmse_ratio"].values())), color=color,
                     linestyle=":", label=label)
    axis.axhline(1.0, color="k", alpha=0.3)
    axis.set(title=simulator, xscale="log", yscale="log", xlabel="training simulations",
             ylabel=f"RMSE ÷ {next(iter(scores.values()))['reference'].replace('_', ' ')}")
    axis.yaxis.set_major_formatter(ScalarFormatter())
    axis.yaxis.set_minor_formatter(ScalarFormatter())
    axis.legend(fontsize=7)
  for axis in axes.ravel()[count:]:
    axis.set_visible(False)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


MARKERS = ("<!-- comparison:begin (generated by `python -m benchmarks.comparison`) -->",
           "<!-- comparison:end -->")
HEADER = """Regenerate with `python -m benchmarks.comparison --root={root}` (a rerun trains and scores only what
is missing). {num_problems} held-out problems per simulator, the same for every method; budgets in
simulated observations, counted as `alfi_tf.evaluation.budgets` documents; times on the machine
that ran it. Not yet run: {missing}.

Methods: `alfi_<f>` is ALFI trained for the fraction f of its config's epochs (T = 15 at test time,
one start); `npe_flow_<B>` / `npe_gaussian_<B>` is NPE trained on B simulated observations;
`abc_equal_budget` spends ALFI's per-data-set budget (T M draws of N observations),
`abc_100x_budget` 100 times that on full-size simulated sets. NLL of θ* is under each method's own
density where it has one (ALFI's final proposal, NPE's), else under N(mean, std²) (ABC).

"""


def main(argv):
  del argv
  for simulator in FLAGS.simulators:
    if simulator not in CONFIGS:
      raise app.UsageError(f"--simulators: unknown simulator {simulator!r}; choose from "
                           f"{', '.join(CONFIGS)}")
  for simulator in FLAGS.simulators:
    run_simulator(simulator)
  all_scores = {}
  for simulator in CONFIGS:
    path = os.path.join(FLAGS.root, simulator, "scores.json")
    if os.path.exists(path):
      with open(path) as stream:
        all_scores[simulator] = json.load(stream)
  figure = os.path.join(os.path.dirname(FLAGS.output) or ".", "figures", "comparison.png")
  os.makedirs(os.path.dirname(figure), exist_ok=True)
  plot_learning_curves(all_scores, figure)
  missing = [s for s in CONFIGS if s not in all_scores]
  # The generated part sits between markers; the verdict written around it is kept.
  replace_marked_section(FLAGS.output, HEADER.format(
      root=FLAGS.root, num_problems=FLAGS.num_problems, missing=", ".join(missing) or "none")
      + "\n".join(render_table(s, scores) for s, scores in all_scores.items())
      + "\n![learning curves](figures/comparison.png)", *MARKERS)

if __name__ == "__main__":
  app.run(main)
