"""Evaluation of a trained workdir on held-out problems: metrics.json, figures and a table."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from alfi_tf import metrics
from alfi_tf.checks import require_file_destination, require_memory
from alfi_tf.config import (answer_settings, default_test_horizon, require_horizon,
                            require_positive, require_well_formed)
from alfi_tf.evaluation import budgets, plots
from alfi_tf.evaluation.references import reference_estimates, require_grid_fits
from alfi_tf.model.inference import InferenceResult, Inferrer, resolve_starts
from alfi_tf.simulators import Simulator
from alfi_tf.training import data as data_lib
from alfi_tf.workdir import METRICS_FILE, Workdir, load_machine, write_json_atomically


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
  """What to evaluate.

  Attributes:
    num_problems: held-out problems (drawn from the run's test seed stream, or `seed`).
    num_steps: horizon `T` at test time (0: the larger of 15 and the training horizon).
    seed: seed of the held-out problems (None: the run's seed, test stream); inference uses seed+1.
    robustness_problems, robustness_starts: problems re-run from many random starts `psi_0`.
    predictive_problems: problems shown in the posterior-predictive histograms.
    grid_points: grid points per parameter of the exact posterior (None: default).
    batch_size: problems per inference call.
    num_starts: runs per held-out data set, combined by `pool_starts` (None: the machine's
      `answer_starts`; robustness keeps one run per start: it measures the single runs).
  """

  num_problems: int = 500
  num_steps: int = 0
  seed: Optional[int] = None
  robustness_problems: int = 20
  robustness_starts: int = 20
  predictive_problems: int = 4
  grid_points: Optional[int] = None
  batch_size: int = 256
  num_starts: Optional[int] = None

  def __post_init__(self):
    require_well_formed(self)
    require_positive(self, "num_problems", "robustness_problems", "robustness_starts",
                     "predictive_problems", "batch_size")
    if self.num_starts is not None:
      require_positive(self, "num_starts")
    if self.num_steps < 0:
      raise ValueError(f"num_steps must be >= 0, got {self.num_steps}")
    require_horizon("num_steps", self.num_steps)
    if self.grid_points is not None and self.grid_points < 3:
      raise ValueError(f"grid_points must be at least 3, got {self.grid_points}")


class Figure(NamedTuple):
  """A figure of the evaluation, drawn once its metrics are written: `plot(path, *arguments)`
  draws it into the workdir's `NAME.png`."""

  name: str
  plot: Callable[..., None]
  arguments: tuple


def _per_parameter(names: List[str], values: np.ndarray) -> Dict[str, float]:
  return {name: float(value) for name, value in zip(names, np.ravel(values))}


def _per_parameter_curves(names: List[str], values: np.ndarray) -> Dict[str, List[float]]:
  """`values [T, d]` -> parameter name -> its `T` values."""
  return {name: values[:, i].tolist() for i, name in enumerate(names)}


def _coverage(names: List[str], mean: np.ndarray, std: np.ndarray,
              theta: np.ndarray) -> Dict[str, Dict[str, float]]:
  """Level -> parameter -> coverage of the central intervals of `N(mean, std^2)` (`[K, d]` each)."""
  return {level: _per_parameter(names, value)
          for level, value in metrics.interval_coverage(mean, std, theta).items()}


def evaluate(workdir: str, config: EvaluationConfig = EvaluationConfig()) -> Dict[str, Any]:
  """Evaluates the latest checkpoint of `workdir`; writes `metrics.json`, then PNGs into it.

  Returns:
    The metrics dictionary (also in `DIR/metrics.json`).

  Raises:
    RuntimeError: a figure could not be drawn (`_draw`); `metrics.json` is written all the same.
    IsADirectoryError: `DIR/metrics.json` is a directory (before any inference).
  """
  run = Workdir(workdir)
  machine_config, train_config = run.read_config()
  require_file_destination(run.file(METRICS_FILE), "the evaluation's metrics")   # before inference
  machine = load_machine(workdir)
  simulator = machine.simulator
  require_grid_fits(simulator, config.grid_points, train_config.num_obs)   # before inference runs
  names = list(simulator.parameter_names)
  num_steps = config.num_steps or default_test_horizon(machine_config)
  config = dataclasses.replace(config, num_starts=resolve_starts(config.num_starts,
                                                                 machine_config.answer_starts))
  _require_memory_for_runs(config, simulator, train_config.num_obs, num_steps)
  seed = train_config.seed if config.seed is None else config.seed
  test = data_lib.generate_problems(simulator, config.num_problems, train_config.num_obs, seed,
                                    data_lib.TEST_STREAM)
  inferrer = Inferrer(machine, num_steps=num_steps, batch_size=config.batch_size)
  result = inferrer(test.observations, seed=seed + 1, num_starts=config.num_starts)
  references = reference_estimates(simulator, test.observations, config.grid_points)
  reference_rmse = _reference_rmse(simulator, references, test.theta)
  rmse_steps = metrics.rmse_per_step(result.trajectory_mean, test.theta)
  figures = _accuracy_figures(names, rmse_steps, reference_rmse, machine_config.num_steps,
                              result.mean, references, test.theta)
  report: Dict[str, Any] = {
      "simulator": simulator.name,
      "num_problems": config.num_problems,
      "num_obs": train_config.num_obs,
      "num_steps": num_steps,
      "training_horizon": machine_config.num_steps,
      "num_starts": config.num_starts,
      # How the answer is read off the machine: a run may change it after this evaluation.
      **answer_settings(machine_config),
      # The factors that multiplied the std at the test horizon (`calibration.json`), or None.
      "std_scales_at_horizon": _std_scales_at(machine, names, num_steps),
      # The shifts of the mean at the test horizon, in units of the answer's std, or None.
      "mean_shifts_at_horizon": (None if machine.mean_shifts is None else _per_parameter(
          names, machine.mean_shift_at(num_steps).numpy())),
      "simulations_per_inference": budgets.alfi_inference_simulations(
          machine_config, num_steps, config.num_starts),
      "training_simulations": budgets.alfi_training_simulations(
          machine_config, train_config, run.read_summary().get("steps", 0))["total"],
      **_accuracy(names, rmse_steps, reference_rmse),
      **_calibration(names, result, test.theta, references, figures),
      **_derived_parameters(machine, result, test.theta, references, seed),
      "robustness": _robustness(inferrer, test, seed, config, names, figures),
      "predictive": _predictive(machine, test, result.mean, seed, config, figures),
  }
  # The metrics first: a figure that cannot be drawn (a plotting error, a full disk) loses none.
  write_json_atomically(run.file(METRICS_FILE), report)
  _draw(run, figures)
  _figures_to_tensorboard(run, [figure.name for figure in figures])
  return report


def _draw(run: Workdir, figures: Sequence[Figure]) -> None:
  """Draws each of `figures` into the workdir, each whatever became of the others.

  Raises:
    RuntimeError: naming each figure that could not be drawn, why, and the metrics already kept.
  """
  failed = []
  for figure in figures:
    path = run.file(f"{figure.name}.png")
    try:
      figure.plot(path, *figure.arguments)
    except Exception as error:   # pylint: disable=broad-except
      # Any kind (matplotlib's own, an OSError of a full disk): reported as what it is, below.
      failed.append(f"{path} ({type(error).__name__}: {error})")
  if failed:
    raise RuntimeError(f"the evaluation's metrics are in {run.file(METRICS_FILE)}, but "
                       f"{len(failed)} of its figures could not be drawn: {'; '.join(failed)}; "
                       "fix that and evaluate again to draw them")


def _require_memory_for_runs(config: EvaluationConfig, simulator: Simulator, num_obs: int,
                             num_steps: int) -> None:
  """Refuses, before any work, runs whose inputs and trajectories cannot fit in memory: the
  Inferrer holds every run's observations (`num_starts` copies of each problem's, and
  `robustness_starts` of the robustness problems') and its mean and std at every step at once."""
  per_run = 4 * (num_obs * simulator.observation_dim
                 + 2 * (num_steps + 1) * simulator.parameter_dim)
  robustness_problems = min(config.robustness_problems, config.num_problems)
  for problems, starts, names in (
      (config.num_problems, config.num_starts, ("num_problems", "num_starts")),
      (robustness_problems, config.robustness_starts,
       ("robustness_problems", "robustness_starts"))):
    require_memory(per_run * problems * starts,
                            f"{names[0]}={problems} x {names[1]}={starts} inference runs",
                            f"use a smaller {names[1]} or {names[0]}")


def _std_scales_at(machine, names: List[str], step: int) -> Optional[Dict[str, float]]:
  if machine.std_scales is None:
    return None
  return _per_parameter(names, machine.std_scale_at(step).numpy())


def _reference_rmse(simulator: Simulator, references: Dict[str, np.ndarray],
                    theta: np.ndarray) -> Dict[str, np.ndarray]:
  """RMSE `[d]` over the problems `theta [K, d]` of the prior mean and of each point reference."""
  prior_mean = np.broadcast_to(np.asarray(simulator.prior.mean(), np.float32), theta.shape)
  reference_rmse = {"prior_mean": metrics.rmse(prior_mean, theta)}
  for key in ("mle", "posterior_mean"):
    if key in references:
      reference_rmse[key] = metrics.rmse(references[key], theta)
  return reference_rmse


def _accuracy(names: List[str], rmse_steps: np.ndarray,
              reference_rmse: Dict[str, np.ndarray]) -> Dict[str, Any]:
  """RMSE of `mu_T`, of `mu_t` per step (`rmse_steps [T, d]`), of the references, and the ratios."""
  alfi_rmse = rmse_steps[-1]
  return {
      "rmse": _per_parameter(names, alfi_rmse),
      "rmse_per_step": _per_parameter_curves(names, rmse_steps),
      "references": {key: _per_parameter(names, value) for key, value in reference_rmse.items()},
      "ratios": {f"to_{key}": _per_parameter(names, alfi_rmse / value)
                 for key, value in reference_rmse.items()},
  }


def _calibration(names: List[str], result: InferenceResult, theta: np.ndarray,
                 references: Dict[str, np.ndarray], figures: List[Figure]) -> Dict[str, Any]:
  """Interval coverage (final and per step), Gaussian NLL and SBC (with `sbc.png`, added to
  `figures`) of the proposals at the truths `theta [K, d]`, and of the exact posterior where the
  references have its std."""
  section = {
      "coverage": _coverage(names, result.mean, result.std, theta),
      "coverage_per_step": {
          level: _per_parameter_curves(names, values)
          for level, values in metrics.interval_coverage(
              result.trajectory_mean, result.trajectory_std, theta[:, np.newaxis]).items()},
      "nll": _per_parameter(names, metrics.gaussian_nll(result.mean, result.std, theta)),
      "sbc": _simulation_based_calibration(names, result, theta, figures),
  }
  if "posterior_std" in references:
    # A Gaussian with the exact posterior's moments: the calibration a perfect machine would reach.
    mean, std = references["posterior_mean"], references["posterior_std"]
    section["posterior_nll"] = _per_parameter(names, metrics.gaussian_nll(mean, std, theta))
    section["posterior_coverage"] = _coverage(names, mean, std, theta)
    # The answer's divergence from the exact posterior, through its marginal Gaussian summary
    # (exact where the posterior is Gaussian, e.g. linear_gaussian_<d>).
    section["marginal_kl_to_posterior"] = _per_parameter(
        names, metrics.gaussian_kl(result.mean, result.std, mean, std))
  return section


def _simulation_based_calibration(names: List[str], result: InferenceResult, theta: np.ndarray,
                                  figures: List[Figure]) -> Dict[str, Any]:
  """SBC of the final answers (`sbc.png`): the uniformity distance of the normalised ranks per
  parameter, the 95% simultaneous band it stays within when the answer is calibrated, the verdict."""
  pit = metrics.probability_integral_transform(result.mean, result.std, theta)
  distance = metrics.uniformity_distance(pit)
  band = metrics.dkw_band(pit.shape[0])
  figures.append(Figure("sbc", plots.plot_calibration, (names, pit, band)))
  return {"uniformity_distance": _per_parameter(names, distance), "band_95": band,
          "within_band": {name: bool(value <= band) for name, value in zip(names, distance)}}


#: Draws from each final proposal to average a derived parameter over it.
PROPOSAL_DRAWS = 256


def _derived_parameters(machine, result: InferenceResult, theta: np.ndarray,
                        references: Dict[str, np.ndarray], seed: int) -> Dict[str, Any]:
  """RMSE of the simulator's derived parameters at `mu_T` (`alfi`), averaged over the final
  proposal (`alfi_proposal_average`, E_q[A]: what a correlated proposal can get right that its
  mean alone cannot), and at the references (none: `{}`)."""
  simulator = machine.simulator
  derived_true = simulator.derived_parameters(tf.constant(theta))
  if not derived_true:
    return {}
  derived_alfi = simulator.derived_parameters(tf.constant(result.mean))
  averaged = {}
  if result.psi is not None:
    draws = machine.sample_final_proposal(tf.constant(result.psi), PROPOSAL_DRAWS,
                                          tf.constant([seed + 5, 0], tf.int32),
                                          step=result.trajectory_mean.shape[1])
    flat = tf.reshape(draws, [-1, simulator.parameter_dim])
    averaged = {name: tf.reduce_mean(tf.reshape(values, [-1, PROPOSAL_DRAWS]), axis=1).numpy()
                for name, values in simulator.derived_parameters(flat).items()}
  section = {}
  for name, truth in derived_true.items():
    truth = truth.numpy()
    entry = {"alfi": float(metrics.rmse(derived_alfi[name].numpy(), truth))}
    if name in averaged:
      entry["alfi_proposal_average"] = float(metrics.rmse(averaged[name], truth))
    for key in ("posterior_mean", "mle"):
      if f"derived/{name}/{key}" in references:
        entry[key] = float(metrics.rmse(references[f"derived/{name}/{key}"], truth))
    section[name] = entry
  return {"derived_rmse": section}


def _accuracy_figures(names: List[str], rmse_steps: np.ndarray,
                      reference_rmse: Dict[str, np.ndarray], training_horizon: int,
                      final_mean: np.ndarray, references: Dict[str, np.ndarray],
                      theta: np.ndarray) -> List[Figure]:
  """`rmse_per_step.png`, and `error_boxplots.png` of `mu_T` and the references (`[K, d]` each)."""
  errors = {"ALFI": final_mean - theta}
  for key, label in (("mle", "MLE"), ("posterior_mean", "posterior mean")):
    if key in references:
      errors[label] = references[key] - theta
  return [Figure("rmse_per_step", plots.plot_rmse_per_step,
                 (names, rmse_steps, reference_rmse, training_horizon)),
          Figure("error_boxplots", plots.plot_error_boxes, (names, errors))]


def _figures_to_tensorboard(run: Workdir, figures: Sequence[str]) -> None:
  """Adds the evaluation PNGs to the run's TensorBoard, at its last training step."""
  writer = tf.summary.create_file_writer(run.tensorboard)
  with writer.as_default(step=int(run.read_summary().get("steps", 0))):
    for name in figures:
      image = tf.io.decode_png(tf.io.read_file(run.file(f"{name}.png")), channels=4)
      tf.summary.image(f"evaluation/{name}", image[tf.newaxis])
  writer.close()


def _robustness(inferrer: Inferrer, test: data_lib.Problems, seed: int, config: EvaluationConfig,
                names: List[str], figures: List[Figure]) -> Dict[str, Any]:
  """Re-runs the first problems from many random starts: how much does `mu_T` depend on `psi_0`?
  (`robustness.png`, added to `figures`.)

  The starts are prior draws whatever the run's default start (`MachineConfig.start`)."""
  count, starts = min(config.robustness_problems, len(test.theta)), config.robustness_starts
  observations = np.repeat(test.observations[:count], starts, axis=0)
  draws = inferrer.machine.prior_draws(count * starts,
                                      tf.constant([seed + 2, 3], tf.int32)).numpy()
  result = inferrer(observations, seed=seed + 2, initial_mean=draws, num_starts=1)
  d = test.theta.shape[1]
  means = result.trajectory_mean.reshape(count, starts, -1, d)
  initial = result.initial_mean.reshape(count, starts, d)
  spread = means[:, :, -1].std(axis=1).mean(axis=0)
  rmse_all = metrics.rmse(means[:, :, -1].reshape(-1, d), np.repeat(test.theta[:count], starts, 0))
  shown = min(4, count)
  figures.append(Figure("robustness", plots.plot_robustness,
                        (names, initial[:shown], means[:shown], test.theta[:shown])))
  return {"problems": count, "starts": starts,
          "mean_std_over_starts": _per_parameter(names, spread),
          "rmse_over_starts": _per_parameter(names, rmse_all)}


def _predictive(machine, test: data_lib.Problems, final_mean: np.ndarray, seed: int,
                config: EvaluationConfig, figures: List[Figure]) -> Dict[str, Any]:
  """Observations simulated at `mu_T` against the real ones; KS against the KS at the truth
  (`predictive_histograms.png`, added to `figures`)."""
  simulator = machine.simulator
  num_obs = test.observations.shape[1]
  estimate = np.asarray(final_mean, np.float32)
  if simulator.parameter_bounds is not None:
    estimate = np.clip(estimate, *simulator.parameter_bounds)
  base = tf.constant([seed + 3, 0], tf.int32)

  def simulate(theta: np.ndarray, stream: int) -> np.ndarray:
    """Observations like the real ones at `theta`: at their design, where the simulator has one."""
    stream_seed = tf.random.experimental.stateless_fold_in(base, stream)
    if simulator.design_dim:
      design = tf.constant(test.observations[..., :simulator.design_dim], tf.float32)
      return simulator.simulate_at_design(tf.constant(theta), design, stream_seed).numpy()
    return simulator.simulate(tf.constant(theta), num_obs, stream_seed).numpy()

  at_estimate, at_truth = simulate(estimate, 0), simulate(test.theta, 1)

  def mean_ks(simulated: np.ndarray) -> float:
    return float(np.mean([metrics.ks_statistic(real[:, dim], sim[:, dim])
                          for real, sim in zip(test.observations, simulated)
                          for dim in range(real.shape[-1])]))

  shown = min(config.predictive_problems, len(test.theta))
  titles = [", ".join(f"{n}={v:.3g}" for n, v in zip(simulator.parameter_names, theta))
            for theta in test.theta[:shown]]
  figures.append(Figure("predictive_histograms", plots.plot_predictive,
                        (test.observations[:shown], at_estimate[:shown], titles)))
  return {"mean_ks_at_estimate": mean_ks(at_estimate), "mean_ks_at_truth": mean_ks(at_truth)}


def format_table(report: Dict[str, Any]) -> str:
  """A short plain-text table of the main figures."""
  names = list(report["rmse"])
  refs = report["references"]
  header = (f"{'parameter':<16}{'RMSE(mu_T)':>12}{'MLE':>10}{'post.mean':>11}{'prior':>9}"
            f"{'/MLE':>7}{'/Bayes':>8}{'cov68':>7}{'cov95':>7}")
  lines = [f"{report['simulator']}: {report['num_problems']} held-out problems, "
           f"n={report['num_obs']}, T={report['num_steps']} (trained at "
           f"T={report['training_horizon']})", header]

  def cell(section: Dict[str, Any], key: str, name: str, width: int, digits: int = 4) -> str:
    value = section.get(key, {}).get(name)
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

  for name in names:
    lines.append(f"{name:<16}{report['rmse'][name]:>12.4f}" + cell(refs, "mle", name, 10)
                 + cell(refs, "posterior_mean", name, 11) + cell(refs, "prior_mean", name, 9)
                 + cell(report["ratios"], "to_mle", name, 7, 2)
                 + cell(report["ratios"], "to_posterior_mean", name, 8, 2)
                 + cell(report["coverage"], "0.68", name, 7, 2)
                 + cell(report["coverage"], "0.95", name, 7, 2))
  for name, entry in report.get("derived_rmse", {}).items():
    lines.append(f"{name:<16}{entry['alfi']:>12.4f}{entry.get('mle', float('nan')):>10.4f}"
                 f"{entry.get('posterior_mean', float('nan')):>11.4f}")
    if "alfi_proposal_average" in entry:
      lines.append(f"{name + ' E_q':<16}{entry['alfi_proposal_average']:>12.4f}")
  return "\n".join(lines)
