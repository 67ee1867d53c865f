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

All are scored on the same `--num_problems` held-out problems (`comparison.score`). The scores of
record live in the repository, in `--scores_dir` (`benchmarks/results/comparison/<simulator>.json`,
one entry per method, rewritten atomically after every method scored), so that they outlive the
run root, which only holds the trainings. A rerun trains and scores only the methods missing there
(an interrupted ALFI or NPE training resumes where it stopped); to rescore a method, delete its
entry (and from any `<root>/<simulator>/scores.json`, which would bring it back).

Before the scores of record, each simulator's were cached in `<root>/<simulator>/scores.json`; every
run still imports the methods such a file holds and the scores of record lack (`load_scores`), so
the scores of a run of the older code come in without retraining: `--simulators= --root=<its root>`
imports and re-renders.

Each run then rewrites, in the generated part of `--output` (between its markers; the text around
them is kept), the table and learning-curve figure (`figures/comparison_<simulator>.png`) of every
simulator with scores of record, each table between markers of its own. The tables of simulators
without scores here are kept as the page has them.
"""

import os
import re
import subprocess
import sys
from typing import Any, Callable, Dict, Optional, Tuple

from absl import app, flags, logging
import numpy as np

from alfi_tf.baselines.abc import ABCConfig
from alfi_tf.baselines.npe import NPEConfig
from alfi_tf.baselines.npe_training import is_trained, load_npe, train_npe
from alfi_tf.config import MachineConfig
from alfi_tf.evaluation import budgets, comparison
from alfi_tf.evaluation.references import reference_estimates
from alfi_tf.evaluation.report import (marked_section, marked_text, replace_marked_section,
                                       replace_marked_text)
from alfi_tf.simulators import get_simulator
from alfi_tf.workdir import read_json_object, write_json_atomically

#: Simulator -> its ALFI config.
CONFIGS = {"poisson": "poisson", "weinberg": "weinberg", "gaussian": "gaussian",
           "linear_regression": "linear_regression", "multi_distribution": "multi_distribution",
           "lotka_volterra": "lotka_volterra", "linear_gaussian_5": "linear_gaussian",
           "linear_gaussian_10": "linear_gaussian"}

flags.DEFINE_string("root", None, "directory for the runs: <root>/<simulator>/<method>; a "
                    "<root>/<simulator>/scores.json of an older run is imported")
flags.DEFINE_string("scores_dir", "benchmarks/results/comparison",
                    "the scores of record, <scores_dir>/<simulator>.json (kept in git)")
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
  # The config's answer, as budgets count it (the machine's defaults where the config is silent).
  answer = MachineConfig(**{name: int(settings[name]) for name in
                            ("num_samples", "num_simulated_obs", "answer_simulated_obs")
                            if name in settings})
  per_inference = budgets.alfi_inference_simulations(answer, FLAGS.test_steps)
  for label, abc_config in (
      ("abc_equal_budget", ABCConfig(per_inference, answer.simulated_obs())),
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


def scores_path(scores_dir: str, simulator: str) -> str:
  """Where `simulator`'s scores of record live."""
  return os.path.join(scores_dir, f"{simulator}.json")


def load_scores(simulator: str, scores_dir: str, root: Optional[str]) -> Dict[str, Any]:
  """`simulator`'s scores of record by label, with the methods that `<root>/<simulator>/scores.json`
  holds and they lack imported (and saved): where runs cached their scores before the scores of
  record, and still do while a run of that older code goes on.

  An entry in both is the record's: it was imported from there, or rescored since.
  """
  path = scores_path(scores_dir, simulator)
  scores = read_json_object(path) or {}
  cached = (read_json_object(os.path.join(root, simulator, "scores.json")) or {}) if root else {}
  imported = sorted(set(cached) - set(scores))
  if imported:
    logging.info("%s: importing %s from %s", simulator, ", ".join(imported), root)
    scores.update({label: cached[label] for label in imported})
    write_json_atomically(path, scores)
  return scores


def run_simulator(simulator: str, scores_dir: str, root: str) -> Dict[str, Any]:
  """Trains and scores every method of `simulator` missing from its scores of record, saving them
  after each (hours of training each: a crash loses at most the method in progress); returns its
  scores by label."""
  scores = load_scores(simulator, scores_dir, root)
  run_root = os.path.join(root, simulator)
  missing = {label: method for label, method in _methods(simulator, run_root).items()
             if label not in scores}
  if not missing:   # an import needs neither the held-out problems nor their references
    return scores
  os.makedirs(run_root, exist_ok=True)
  test = _test_problems(simulator, config_settings(CONFIGS[simulator]))
  sim = get_simulator(simulator)
  references = reference_estimates(sim, test.observations)
  for label, method in missing.items():
    logging.info("%s: %s", simulator, label)
    scores[label] = comparison.score(method(), test.theta, references, sim.parameter_names)
    write_json_atomically(scores_path(scores_dir, simulator), scores)
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
#: The one figure of the simulators scored before each got its own (`figure_name`); still shown for
#: those whose section has no figure of its own.
COMBINED_FIGURE = "comparison.png"
# The command names the conventional run root, not the one that rendered the page: where the runs
# live never changes a score, and a machine's own path would mean nothing to a reader.
HEADER = """Regenerate with `python -m benchmarks.comparison --root=runs/comparison` (a rerun trains and
scores only what is missing from the scores of record, `{scores_dir}/<simulator>.json`).
{num_problems} held-out problems per simulator, the same for every method; budgets in simulated
observations, counted as `alfi_tf.evaluation.budgets` documents; times on the machine that ran it.
Not yet run: {missing}.{combined}

Methods: `alfi_<f>` is ALFI trained for the fraction f of its config's epochs (T = 15 at test time,
one start); `npe_flow_<B>` / `npe_gaussian_<B>` is NPE trained on B simulated observations;
`abc_equal_budget` spends ALFI's per-data-set budget (T M draws of N observations),
`abc_100x_budget` 100 times that on full-size simulated sets. NLL of θ* is under each method's own
density where it has one (ALFI's final proposal, NPE's), else under N(mean, std²) (ABC).

"""
COMBINED_NOTE = """
Scored before each simulator got a figure of its own, the learning curves of
{simulators} are in [figures/{figure}](figures/{figure}) until they are rerun."""


def simulator_markers(simulator: str) -> Tuple[str, str]:
  """The markers around `simulator`'s section of the generated part."""
  return f"<!-- comparison:{simulator}:begin -->", f"<!-- comparison:{simulator}:end -->"


def figure_name(simulator: str) -> str:
  """The file name, in the page's `figures/`, of `simulator`'s learning curves."""
  return f"comparison_{simulator}.png"


def render_section(simulator: str, scores: Dict[str, Any]) -> str:
  """`simulator`'s section: its table, then its learning curves."""
  return (render_table(simulator, scores)
          + f"\n![learning curves of {simulator}](figures/{figure_name(simulator)})")


def simulator_sections(generated: str, page: str) -> str:
  """The per-simulator sections of the generated part `generated`, without the header before them
  (rewritten on every render).

  Raises:
    ValueError: when the header holds a table: a page from before per-simulator sections, whose
      tables a render would drop.
  """
  first = re.search(r"<!-- comparison:\w+:begin -->", generated)
  header = generated[:first.start()] if first else generated
  if any(line.startswith("|") for line in header.splitlines()):
    raise ValueError(f"the generated part of {page} holds a table before the first "
                     f"{simulator_markers('<simulator>')[0]}, which a render would drop: put "
                     "each simulator's table between its markers; nothing was written")
  return generated[len(header):]


def update_sections(sections: str, all_scores: Dict[str, Dict[str, Any]], page: str) -> str:
  """`sections` with the section of every simulator in `all_scores` rendered anew, in its place or
  appended in `CONFIGS` order; the sections of the others are kept verbatim (their scores may be
  lost: the page is then their only record)."""
  for simulator in CONFIGS:
    if simulator in all_scores:
      sections = replace_marked_text(sections, render_section(simulator, all_scores[simulator]),
                                     *simulator_markers(simulator), page)
  return sections


def sections_on_page(sections: str, page: str) -> Dict[str, str]:
  """Simulator -> its section in `sections`, for those that have one, in `CONFIGS` order."""
  on_page = {simulator: marked_text(sections, *simulator_markers(simulator), page)
             for simulator in CONFIGS}
  return {simulator: section for simulator, section in on_page.items() if section is not None}


def render_header(on_page: Dict[str, str], scores_dir: str, num_problems: int) -> str:
  """The text before the sections `on_page` (`sections_on_page`): how to regenerate them, which
  simulators the page does not hold yet (whether or not their scores of record are lost), and
  where the learning curves of sections without a figure of their own are."""
  missing = [simulator for simulator in CONFIGS if simulator not in on_page]
  combined = [simulator for simulator, section in on_page.items()
              if f"figures/{figure_name(simulator)}" not in section]
  note = (COMBINED_NOTE.format(simulators=", ".join(combined), figure=COMBINED_FIGURE)
          if combined else "")
  return HEADER.format(scores_dir=scores_dir, num_problems=num_problems,
                       missing=", ".join(missing) or "none", combined=note)


def write_page(output: str, all_scores: Dict[str, Dict[str, Any]], scores_dir: str,
               num_problems: int) -> None:
  """Rewrites the sections and learning-curve figures of the simulators in `all_scores`, and the
  header, in the generated part of `output`; the text around it is kept."""
  sections = update_sections(simulator_sections(marked_section(output, *MARKERS) or "", output),
                             all_scores, output)
  header = render_header(sections_on_page(sections, output), scores_dir, num_problems)
  figures = os.path.join(os.path.dirname(output) or ".", "figures")
  os.makedirs(figures, exist_ok=True)
  for simulator, scores in all_scores.items():
    plot_learning_curves({simulator: scores}, os.path.join(figures, figure_name(simulator)))
  # The generated part sits between markers; the verdict written around it is kept.
  replace_marked_section(output, header + sections.strip("\n"), *MARKERS)


def main(argv):
  del argv
  for simulator in FLAGS.simulators:
    if simulator not in CONFIGS:
      raise app.UsageError(f"--simulators: unknown simulator {simulator!r}; choose from "
                           f"{', '.join(CONFIGS)}")
  for simulator in FLAGS.simulators:
    run_simulator(simulator, FLAGS.scores_dir, FLAGS.root)
  # Every simulator, not only those run: a root's cached scores are imported without retraining.
  all_scores = {simulator: load_scores(simulator, FLAGS.scores_dir, FLAGS.root)
                for simulator in CONFIGS}
  write_page(FLAGS.output, {simulator: scores for simulator, scores in all_scores.items()
                            if scores}, FLAGS.scores_dir, FLAGS.num_problems)


if __name__ == "__main__":
  app.run(main)
