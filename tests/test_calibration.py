"""Recalibration of the answer's location and std: the fit (`alfi_tf.model.calibration`), the machine
applying it, and the run recording it (`alfi_tf.training.calibration`) for `load_machine`, `.keras`
and export."""

import contextlib
import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from hypothesis import given, settings
from hypothesis import strategies as st

from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.evaluation.evaluator import EvaluationConfig, evaluate
from alfi_tf.model.calibration import (FINE_GRID, PooledStdScales, fit_mean_shifts,
                                       fit_std_scales, half_normal_kolmogorov_distance)
from alfi_tf.model.inference import InferenceResult, pool_starts
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.metrics import interval_coverage
from alfi_tf.serving.deploy import DeployedMachine
from alfi_tf.serving.export import export_machine
from alfi_tf.simulators import get_simulator
from alfi_tf.training import Trainer, set_global_seed
from alfi_tf.workdir import CALIBRATION_FILE, apply_calibration, load_machine

K = 4000
GRID_STEP = FINE_GRID[1] / FINE_GRID[0]


def _answers(errors: np.ndarray, std: np.ndarray):
  """Answers `mean = theta* + error` around `theta* = 0`, all `[K, T, d]`."""
  return errors, np.broadcast_to(std, errors.shape), np.zeros((errors.shape[0], errors.shape[2]))


def test_the_fit_recovers_a_known_misscaling():
  rng = np.random.default_rng(0)
  true_scales = np.array([[0.5, 2.0], [1.0, 4.0]])        # [T, d]: over- and under-confident
  std = rng.uniform(0.1, 3.0, size=(K, 2, 2))             # each answer its own width
  mean, std, theta = _answers(rng.normal(size=(K, 2, 2)) * true_scales * std, std)
  fitted = fit_std_scales(mean, std, theta)
  assert fitted.shape == (2, 2) and fitted.dtype == np.float32
  # The Kolmogorov fit of a scale from 4000 draws: a few percent (k = 4 standard errors).
  np.testing.assert_allclose(fitted, true_scales, rtol=0.06)


def test_heavy_tails_are_calibrated_at_every_level_at_once():
  rng = np.random.default_rng(1)
  errors = rng.standard_t(3, size=(K, 1, 1))              # stragglers: a tail heavier than N(0, 1)
  mean, std, theta = _answers(errors, np.ones((1, 1)))
  scale = fit_std_scales(mean, std, theta)
  distance = half_normal_kolmogorov_distance(np.abs(errors.ravel()) / scale[0, 0], np.ones(1))[0]
  before = half_normal_kolmogorov_distance(np.abs(errors.ravel()), np.ones(1))[0]
  assert distance < before
  coverage = interval_coverage(mean * 1.0, std * scale, theta[:, None])
  for level in ("0.68", "0.95"):      # no level misses by more than the distance (and the grid)
    assert abs(coverage[level].item() - float(level)) <= distance + 0.01


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.floats(1e-3, 1e4))
def test_the_factor_is_inverse_to_a_rescaling_of_std(factor):
  rng = np.random.default_rng(2)
  mean, std, theta = _answers(rng.normal(size=(500, 1, 1)), np.ones((1, 1)))
  base = fit_std_scales(mean, std, theta)[0, 0]
  rescaled = fit_std_scales(mean, std * factor, theta)[0, 0]
  # The distance is piecewise constant, so its argmin may move within a grid step or two.
  assert abs(np.log(rescaled * factor / base)) <= 2.01 * np.log(GRID_STEP)


def test_the_shift_recovers_a_known_lag_despite_stragglers():
  """Answers a known number of their own std to one side (a lag per step and parameter), with 2%
  of them unsettled far off: the median recovers the lag; after the shift the factors see only
  the spread."""
  rng = np.random.default_rng(3)
  lag = np.array([[-0.3, 0.0], [0.2, 1.5]])                 # [T, d], in units of the std
  std = rng.uniform(0.1, 3.0, size=(K, 2, 2))
  errors = (rng.normal(size=(K, 2, 2)) - lag) * std            # mean = theta* + error
  errors[:K // 50] += 50.0 * std[:K // 50]
  mean, std, theta = _answers(errors, std)
  shifts = fit_mean_shifts(mean, std, theta)
  assert shifts.shape == (2, 2) and shifts.dtype == np.float32
  # The median of 4000 normal draws: a standard error of 1.25 / sqrt(K) = 0.02 (k = 4), plus the
  # stragglers' pull on it (2% of the draws moved: about 0.025).
  np.testing.assert_allclose(shifts, lag, atol=0.08 + 0.03)
  np.testing.assert_allclose(fit_std_scales(mean + shifts * std, std, theta), 1.0, rtol=0.08)


def test_a_point_answer_is_not_shifted():
  mean, std, theta = _answers(np.ones((5, 1, 2)), np.array([[0.0, 1.0]]))
  np.testing.assert_array_equal(fit_mean_shifts(mean, std, theta), [[0.0, -1.0]])


@pytest.mark.parametrize("fit", [fit_std_scales, fit_mean_shifts])
@pytest.mark.parametrize("mean, std, theta, message", [
    (np.zeros((3, 2)), np.ones((3, 2)), np.zeros((3, 2)), "expected mean and std"),
    (np.zeros((1, 2, 1)), np.ones((1, 2, 1)), np.zeros((1, 1)), "at least 2 problems"),
    (np.full((3, 2, 1), np.nan), np.ones((3, 2, 1)), np.zeros((3, 1)), "finite answers"),
    (np.zeros((3, 2, 1)), -np.ones((3, 2, 1)), np.zeros((3, 1)), "non-negative std"),
])
def test_the_fit_rejects_bad_answers(fit, mean, std, theta, message):
  with pytest.raises(ValueError, match=message):
    fit(mean, std, theta)


# --- The machine applies the factors. ---


def _runs_that_cover_their_own_errors(seed: int, num_starts: int = 4, num_steps: int = 2):
  """`K` data sets of `R` runs whose std each covers the run's own error: errors `N(0, s^2)` (a
  part shared by the data set's runs, a part each run's own), std `s`, `s` per data set.

  Returns:
    The runs (`K R` rows of an `InferenceResult`, `[K R, T, 1]` trajectories) and `theta [K, 1]`.
  """
  rng = np.random.default_rng(seed)
  theta = rng.normal(size=(K, 1))
  scale = rng.uniform(0.2, 2.0, size=(K, 1, 1, 1))
  errors = scale * (0.5 * rng.normal(size=(K, 1, num_steps, 1))
                    + np.sqrt(0.75) * rng.normal(size=(K, num_starts, num_steps, 1)))
  shape = (K * num_starts, num_steps, 1)
  mean = (theta[:, np.newaxis, np.newaxis] + errors).reshape(shape).astype(np.float32)
  std = np.broadcast_to(scale, errors.shape).reshape(shape).astype(np.float32)
  return InferenceResult(mean[:, -1], std[:, -1], mean, std, mean[:, 0]), theta


def test_factors_fitted_to_pooled_answers_make_their_coverage_nominal():
  """Each run covers its own error, so their pool (which adds the runs' spread) over-covers;
  factors fitted to pools make fresh pools cover as they claim."""
  runs, theta = _runs_that_cover_their_own_errors(0)
  single = interval_coverage(runs.trajectory_mean, runs.trajectory_std,
                             np.repeat(theta, 4, axis=0)[:, None])
  np.testing.assert_allclose(single["0.68"], 0.68, atol=0.03)     # 16000 runs: k = 4 errors
  pooled = pool_starts(runs, 4)
  over = interval_coverage(pooled.trajectory_mean, pooled.trajectory_std, theta[:, None])
  assert np.all(over["0.68"] > 0.85) and np.all(over["0.95"] > 0.99)
  scales = fit_std_scales(pooled.trajectory_mean, pooled.trajectory_std, theta)
  assert np.all(scales < 0.7)
  fresh, fresh_theta = _runs_that_cover_their_own_errors(1)
  recalibrated = pool_starts(fresh, 4, PooledStdScales(4, scales))
  coverage = interval_coverage(recalibrated.trajectory_mean, recalibrated.trajectory_std,
                               fresh_theta[:, None])
  for level in ("0.68", "0.95"):        # 4000 data sets: a standard error under 0.0075
    np.testing.assert_allclose(coverage[level], float(level), atol=0.03)


@pytest.fixture(scope="module")
def machine():
  config = MachineConfig(simulator="weinberg", num_steps=2, num_samples=4, num_simulated_obs=8,
                         encoder_hidden=8, encoder_out=4, aggregator_hidden=8, aggregator_out=4,
                         updater_hidden=8, lstm_units=4)
  machine = InferenceMachine(get_simulator("weinberg"), config)
  # Standardised units of a tenth and a fifth of the box: the proposals (sigma_0 = 0.1 unit,
  # times factors up to 3) stay far from its edges, where the answer's restriction to the box
  # would bend them.
  machine.theta_standardizer.mean.assign([45.0, 1.0])
  machine.theta_standardizer.std.assign([1.0, 0.2])
  return machine


def _observations(num_problems: int = 3) -> tf.Tensor:
  _, observations = get_simulator("weinberg").sample_problems(num_problems, 30, tf.constant([5, 0]))
  return observations


def _infer(machine, observations, seed, **kwargs):
  """`machine.infer` from the prior's centre: the untrained machine stays about its start, whose
  answer is then far from the box's edges, where the restriction to the box would bend it
  (`parameter_space.box_restricted_moments`)."""
  low, high = machine.simulator.parameter_bounds
  centre = np.tile((low + high) / 2, (observations.shape[0], 1)).astype(np.float32)
  return machine.infer(observations, seed, initial_mean=tf.constant(centre), **kwargs)


def test_the_answer_is_rescaled_per_step_and_later_steps_use_the_last(machine):
  observations, seed = _observations(), tf.constant([1, 2])
  plain = _infer(machine, observations, seed, num_steps=4)
  scales = np.array([[2.0, 0.5], [3.0, 0.25]], np.float32)
  machine.set_std_scales(scales)
  try:
    calibrated = _infer(machine, observations, seed, num_steps=4)
    assert machine.std_scales.tolist() == scales.tolist()
  finally:
    machine.set_std_scales(None)
  expected = np.concatenate([scales, scales[-1:], scales[-1:]])          # steps 1, 2, 3, 4
  np.testing.assert_allclose(calibrated["trajectory_std"], plain["trajectory_std"] * expected,
                             rtol=1e-6)
  np.testing.assert_allclose(calibrated["std"], plain["std"] * scales[-1], rtol=1e-6)
  for key in ("mean", "trajectory_mean", "psi"):           # the mean and the proposals: untouched
    np.testing.assert_array_equal(calibrated[key], plain[key])
  assert machine.std_scales is None


@contextlib.contextmanager
def _calibrated(machine, scales=None, shifts=None):
  """`machine` with these factors and shifts set, and without them again afterwards."""
  machine.set_std_scales(scales)
  machine.set_mean_shifts(shifts)
  try:
    yield machine
  finally:
    machine.set_std_scales(None)
    machine.set_mean_shifts(None)


def test_the_answer_is_shifted_by_its_unscaled_std_per_step(machine):
  observations, seed = _observations(), tf.constant([1, 2])
  plain = _infer(machine, observations, seed, num_steps=3)
  shifts = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
  with _calibrated(machine, scales=np.full((2, 2), 3.0), shifts=shifts):
    calibrated = _infer(machine, observations, seed, num_steps=3)
    assert machine.mean_shifts.tolist() == shifts.tolist()
  expected = np.concatenate([shifts, shifts[-1:]])                       # steps 1, 2, 3
  np.testing.assert_allclose(calibrated["trajectory_mean"],
                             plain["trajectory_mean"] + expected * plain["trajectory_std"],
                             rtol=1e-6)
  np.testing.assert_allclose(calibrated["std"], 3.0 * plain["std"], rtol=1e-6)
  np.testing.assert_array_equal(calibrated["psi"], plain["psi"])        # the proposals: untouched
  assert machine.mean_shifts is None


def test_the_answers_draws_are_shifted_and_spread_by_the_calibration(machine):
  plain = _infer(machine, _observations(), tf.constant([1, 2]))
  with _calibrated(machine, np.array([[3.0, 0.5]]), np.array([[1.0, -2.0]])) as calibrated:
    outputs = _infer(calibrated, _observations(), tf.constant([1, 2]))
    draws = machine.sample_final_proposal(outputs["psi"], 20000, tf.constant([3, 4]), step=2)
  np.testing.assert_allclose(draws.numpy().std(axis=1), plain["std"].numpy() * [3.0, 0.5],
                             rtol=0.03)    # 20000 draws: a standard error of 0.5%
  widest = 3.0 * float(tf.reduce_max(plain["std"]))
  np.testing.assert_allclose(draws.numpy().mean(axis=1), outputs["mean"].numpy(),
                             atol=5 * widest / np.sqrt(20000))     # 5 standard errors
  np.testing.assert_allclose(outputs["mean"], plain["mean"] + [1.0, -2.0] * plain["std"],
                             rtol=1e-6)


def test_the_answers_density_is_the_recalibrated_gaussian(machine):
  scales, shifts = np.array([[3.0, 0.5]], np.float32), np.array([[-0.5, 1.5]], np.float32)
  with _calibrated(machine, scales, shifts):
    outputs = _infer(machine, _observations(), tf.constant([1, 2]))
    theta = outputs["mean"] + 0.7 * outputs["std"] * np.array([1.0, -2.0], np.float32)
    log_prob = machine.answer_log_prob(theta, outputs["psi"], step=2).numpy()
  expected = tfp.distributions.Normal(outputs["mean"], outputs["std"]).log_prob(theta)
  # Absolute: float32 rounds theta near E_beam = 45 to a few 1e-6, 1e-5 of the answer's std.
  np.testing.assert_allclose(log_prob, tf.reduce_sum(expected, axis=-1).numpy(), atol=1e-4)


@pytest.mark.parametrize("scales, message", [
    (np.ones((2, 3)), r"shape \[steps >= 1, 2\]"), (np.ones((0, 2)), "shape"),
    (np.array([[1.0, 0.0]]), "finite and positive"), (np.array([[1.0, np.inf]]), "finite"),
])
def test_bad_factors_are_refused(machine, scales, message):
  with pytest.raises(ValueError, match=message):
    machine.set_std_scales(scales)
  assert machine.std_scales is None


@pytest.mark.parametrize("shifts, message", [
    (np.ones((2, 3)), r"mean shifts must have shape \[steps >= 1, 2\]"),
    (np.array([[1.0, np.nan]]), "mean shifts must be finite"),
])
def test_bad_shifts_are_refused(machine, shifts, message):
  with pytest.raises(ValueError, match=message):
    machine.set_mean_shifts(shifts)
  assert machine.mean_shifts is None


def test_the_factors_and_shifts_travel_in_the_keras_file(machine, tmp_path):
  with _calibrated(machine, np.array([[2.0, 0.5]]), np.array([[0.25, -1.0]])):
    path = str(tmp_path / "machine.keras")
    machine.save(path)
    loaded = keras.saving.load_model(path)
  assert loaded.std_scales.tolist() == [[2.0, 0.5]]
  assert loaded.mean_shifts.tolist() == [[0.25, -1.0]]


# --- The run calibrates once training ends, and `load_machine` applies it. ---


TINY_TRAIN = TrainConfig(num_problems=32, num_obs=30, epochs=1, batch_size=16, learning_rate=1e-2,
                         num_validation_problems=8, validate_every=100, checkpoint_every=100,
                         seed=4, calibration_problems=64, calibration_horizon=3)


@pytest.mark.parametrize("proposal", ["full_covariance_gaussian", "fixed_variance_gaussian",
                                      "point"])
def test_every_proposal_familys_run_finishes_with_its_calibration(tmp_path, proposal, caplog):
  """The families whose mean slices psi returned the inference result's numpy array as it was:
  every such run trained to its end, then died in the calibration with an AttributeError. Past
  the test horizon (15), the calibration warned of a horizon no user chose."""
  workdir = str(tmp_path / "run")
  set_global_seed(TINY_TRAIN.seed)
  train_config = dataclasses.replace(TINY_TRAIN, loss="mse" if proposal == "point" else "nll",
                                     calibration_horizon=16)
  Trainer(MachineConfig(simulator="weinberg", proposal=proposal, num_steps=2, num_samples=4,
                        num_simulated_obs=8, encoder_hidden=8, encoder_out=4, aggregator_hidden=8,
                        aggregator_out=4, updater_hidden=8, lstm_units=4),
          train_config, workdir, log_every=1000).train()
  record = json.load(open(os.path.join(workdir, CALIBRATION_FILE)))
  assert np.asarray(record["std_scales"]).shape == (16, 2)
  assert "past its training horizon" not in caplog.text


def test_a_finished_run_is_calibrated_and_loads_calibrated(tmp_path):
  workdir = str(tmp_path / "run")
  set_global_seed(TINY_TRAIN.seed)
  trainer = Trainer(MachineConfig(simulator="weinberg", num_steps=2, num_samples=4,
                                  num_simulated_obs=8, encoder_hidden=8, encoder_out=4,
                                  aggregator_hidden=8, aggregator_out=4, updater_hidden=8,
                                  lstm_units=4), TINY_TRAIN, workdir, log_every=1000)
  trainer.train(stop_at_step=1)
  assert not os.path.exists(os.path.join(workdir, CALIBRATION_FILE)), "only a finished run"
  trainer.train()
  record = json.load(open(os.path.join(workdir, CALIBRATION_FILE)))
  assert record["checkpoint"] == "ckpt-2" and record["num_problems"] == 64
  assert np.asarray(record["std_scales"]).shape == np.asarray(record["mean_shifts"]).shape == (3, 2)
  # On the problems it was fitted to, calibration brings the 68% coverage no further from nominal.
  for before, after in zip(np.ravel(record["coverage_before"]["0.68"]),
                           np.ravel(record["coverage_after"]["0.68"])):
    assert abs(after - 0.68) <= abs(before - 0.68) + 0.05
  loaded = load_machine(workdir)
  np.testing.assert_allclose(loaded.std_scales, record["std_scales"])
  np.testing.assert_allclose(loaded.mean_shifts, record["mean_shifts"])
  # A record of before the shifts: its factors, and the mean as it is.
  del record["mean_shifts"]
  json.dump(record, open(os.path.join(workdir, CALIBRATION_FILE), "w"))
  loaded = load_machine(workdir)
  assert loaded.mean_shifts is None and loaded.std_scales is not None
  # Factors fitted to another checkpoint are not applied.
  json.dump({**record, "checkpoint": "ckpt-1"}, open(os.path.join(workdir, CALIBRATION_FILE), "w"))
  assert load_machine(workdir).std_scales is None
  # Resuming a finished run refits them for its final checkpoint, and leaves its summary alone.
  summary = open(os.path.join(workdir, "training_summary.json")).read()
  result = Trainer(trainer.machine_config, TINY_TRAIN, workdir, log_every=1000).train()
  assert json.load(open(os.path.join(workdir, CALIBRATION_FILE)))["checkpoint"] == "ckpt-2"
  assert open(os.path.join(workdir, "training_summary.json")).read() == summary
  assert result.steps == 2 and np.isfinite(result.final_loss)
  _change_the_tail_averaging(workdir, trainer.machine_config, summary)


def _change_the_tail_averaging(workdir: str, machine_config: MachineConfig, summary: str) -> None:
  """A finished run may change how its answer is read off (`tail_averaging`) without training:
  the weights stay, the factors are refitted to the new answer, and only then applied."""
  checkpoints = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  window_one = json.load(open(os.path.join(workdir, CALIBRATION_FILE)))
  averaged_config = dataclasses.replace(machine_config, tail_averaging=0.5, start="prior_mean")
  with pytest.raises(ValueError, match="lstm_units"):   # a setting the weights depend on
    Trainer(dataclasses.replace(averaged_config, lstm_units=5), TINY_TRAIN, workdir)
  Trainer(averaged_config, TINY_TRAIN, workdir, log_every=1000).train()
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == checkpoints
  assert open(os.path.join(workdir, "training_summary.json")).read() == summary
  record = json.load(open(os.path.join(workdir, CALIBRATION_FILE)))
  assert record["tail_averaging"] == 0.5 and record["checkpoint"] == "ckpt-2"
  assert record["start"] == "prior_mean"
  assert record["std_scales"] != window_one["std_scales"]
  loaded = load_machine(workdir)
  assert loaded.config.tail_averaging == 0.5
  np.testing.assert_allclose(loaded.std_scales, record["std_scales"])
  # Factors fitted to the last iterate are not applied to the averaged answer.
  json.dump(window_one, open(os.path.join(workdir, CALIBRATION_FILE), "w"))
  assert load_machine(workdir).std_scales is None


def test_a_machine_answering_with_two_starts_is_calibrated_for_their_pool(tmp_path):
  """`answer_starts = 2`: the run fits pooled factors after the per-run ones, records them in
  calibration.json, and the loaded machine, a rerun of its command and its export answer with two
  pooled runs, recalibrated, unless told otherwise."""
  workdir = str(tmp_path / "run")
  set_global_seed(TINY_TRAIN.seed)
  config = MachineConfig(simulator="weinberg", num_steps=2, num_samples=4, num_simulated_obs=8,
                         encoder_hidden=8, encoder_out=4, aggregator_hidden=8, aggregator_out=4,
                         updater_hidden=8, lstm_units=4, answer_starts=2)
  Trainer(config, TINY_TRAIN, workdir, log_every=1000).train()
  record = json.load(open(os.path.join(workdir, CALIBRATION_FILE)))
  pooled = record["pooled_std_scales"]
  assert record["answer_starts"] == 2 and pooled["num_starts"] == 2
  assert np.asarray(pooled["scales"]).shape == (3, 2)      # the calibration horizon's steps
  assert np.asarray(record["pooled_coverage_after"]["0.68"]).shape == (3, 2)
  loaded = load_machine(workdir)
  np.testing.assert_allclose(loaded.pooled_std_scales.scales, pooled["scales"])
  # A rerun of the finished run's command keeps calibration.json and restores both factors.
  rerun = Trainer(config, TINY_TRAIN, workdir, log_every=1000)
  rerun.train()
  assert json.load(open(os.path.join(workdir, CALIBRATION_FILE))) == record
  np.testing.assert_allclose(rerun.machine.pooled_std_scales.scales, pooled["scales"])
  with pytest.raises(ValueError, match="damaged: pooled_std_scales must hold factors fitted for "
                                       "answer_starts=2") as damaged:
    apply_calibration(loaded, {**record, "pooled_std_scales": None}, "run/checkpoints/ckpt-2")
  assert "std_scales: [" not in str(damaged.value)   # the per-run factors are fine: not quoted
  with pytest.raises(ValueError, match=r"damaged: mean shifts must have shape \[steps >= 1, 2\], "
                                       r"got \(3,\) \(mean_shifts: \[1, 2, 3\]\)"):
    apply_calibration(loaded, {**record, "mean_shifts": [1, 2, 3]}, "run/checkpoints/ckpt-2")
  _check_the_export_answers_with_two_pooled_runs(loaded, str(tmp_path / "export"), pooled)
  # The evaluation measures the answers the machine gives, two pooled runs, and counts them.
  report = evaluate(workdir, EvaluationConfig(num_problems=4, robustness_problems=2,
                                              robustness_starts=2, predictive_problems=1))
  assert report["num_starts"] == 2 and report["answer_starts"] == 2
  assert report["simulations_per_inference"] == 2 * 15 * 4 * 8      # R T M N, T the test horizon


def _check_the_export_answers_with_two_pooled_runs(machine: InferenceMachine, export_dir: str,
                                                   pooled: dict) -> None:
  deployed = DeployedMachine.load(export_machine(machine, export_dir, num_steps=3))
  assert deployed.answer_starts == 2 and deployed.metadata["pooled_std_scales"] == pooled
  observations = _observations(3).numpy()
  default = deployed.infer(observations, seed=5)
  # Two runs of each data set (the same seeds as the repeated sets' single runs), pooled and
  # rescaled by the pooled factors of step 3 (past the calibrated 3 steps: the last).
  runs = deployed.infer(np.repeat(observations, 2, axis=0), seed=5, num_starts=1)
  expected = pool_starts(runs, 2, PooledStdScales(2, np.asarray(pooled["scales"])))
  for field in ("mean", "std", "trajectory_mean", "trajectory_std", "failed_sets"):
    np.testing.assert_allclose(getattr(default, field), getattr(expected, field), rtol=1e-6)
  assert default.failed_sets.shape == (3,) and default.psi is None       # pooled: no single psi
  assert not np.allclose(default.std, pool_starts(runs, 2).std)      # the factors did apply
  explicit = deployed.infer(observations, seed=5, num_starts=2)
  np.testing.assert_array_equal(default.std, explicit.std)
  assert deployed.infer(observations, seed=5, num_starts=1).psi is not None   # explicit wins
