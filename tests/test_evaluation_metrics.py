"""Tests of the evaluation metrics and of the exact references (grid posterior, MLE).

Metrics are checked against hand-worked examples and scipy; the grid posterior against independent
numpy integrations of the same posteriors (Poisson: a dense 1-D grid; Gaussian: the closed-form
conditional over the mean, then a dense 1-D grid over the log-scale).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from alfi_tf import metrics
from alfi_tf.evaluation.references import (GridPosteriorEvaluator, reference_estimates,
                                           supports_grid_posterior)
from alfi_tf.simulators import NumpySimulator, box_prior, get_simulator
from alfi_tf.simulators.weinberg import WeinbergSimulator

NUM_OBS = 500


def _observations(name: str, theta, seed: int = 0) -> np.ndarray:
  simulator = get_simulator(name)
  return simulator.simulate(tf.constant(theta, tf.float32), NUM_OBS,
                            tf.constant([seed, 1], tf.int32)).numpy()


# --- Accuracy. ---

def test_rmse_by_hand():
  estimates = np.array([[1.0, 2.0], [3.0, 4.0]])
  truth = np.array([[0.0, 0.0], [0.0, 8.0]])
  np.testing.assert_allclose(metrics.rmse(estimates, truth), [math.sqrt(5.0), math.sqrt(10.0)])


def test_rmse_per_step_by_hand():
  rng = np.random.default_rng(0)
  means, theta = rng.normal(size=(6, 4, 2)), rng.normal(size=(6, 2))
  expected = np.zeros((4, 2))
  for t in range(4):
    for k in range(2):
      expected[t, k] = math.sqrt(sum((means[i, t, k] - theta[i, k]) ** 2 for i in range(6)) / 6)
  actual = metrics.rmse_per_step(means, theta)
  assert actual.shape == (4, 2)
  np.testing.assert_allclose(actual, expected, rtol=1e-12)


# --- Calibration. ---

def test_stragglers_and_flatness_by_hand():
  theta, posterior_std = np.zeros((3, 1)), np.ones((3, 1))
  means = np.array([[0.0, 5.0, 0.0], [5.0, 0.5, 0.5], [0.0, 0.0, -4.5]])[:, :, np.newaxis]
  # Problem 0 is 5 std off only at t = 2, problem 1 only at t = 1, problem 2 at t = 3.
  assert metrics.far_from_truth(means, theta, posterior_std, 2)[:, 0].tolist() == [True, False, True]
  assert metrics.far_from_truth(means, theta, posterior_std, 3)[:, 0].tolist() == [False, False, True]
  assert metrics.far_from_truth(means, theta, 2 * posterior_std, 1).sum() == 0
  with pytest.raises(ValueError, match=r"first_step must lie in \[1, 3\]"):
    metrics.far_from_truth(means, theta, posterior_std, 4)
  np.testing.assert_allclose(metrics.flatness(np.array([[4.0], [1.0], [2.0], [1.5]]), 2), [2.0])


def test_interval_coverage_by_hand():
  # Half-widths of the central intervals: 0.994 sigma (68%) and 1.960 sigma (95%).
  mean, std = np.zeros((4, 1)), np.full((4, 1), 2.0)
  theta = np.array([[1.9], [-2.1], [3.8], [-4.0]])
  coverage = metrics.interval_coverage(mean, std, theta)
  assert set(coverage) == {"0.68", "0.95"}
  np.testing.assert_allclose(coverage["0.68"], [0.25])
  np.testing.assert_allclose(coverage["0.95"], [0.75])


@pytest.mark.parametrize("levels", [(0.68, 0.95), (0.5, 0.9, 0.99)])
def test_interval_coverage_is_nominal_for_calibrated_proposals(levels):
  rng = np.random.default_rng(1)
  count = 20000
  mean = rng.normal(size=(count, 2))
  std = np.exp(rng.uniform(-2.0, 2.0, size=(count, 2)))
  theta = rng.normal(mean, std)
  coverage = metrics.interval_coverage(mean, std, theta, levels)
  for level in levels:
    standard_error = math.sqrt(level * (1.0 - level) / count)
    assert np.all(np.abs(coverage[f"{level:.2f}"] - level) < 3.0 * standard_error), coverage


def test_gaussian_nll_matches_scipy():
  rng = np.random.default_rng(2)
  mean = rng.normal(size=(50, 3))
  std = np.exp(rng.uniform(-3.0, 2.0, size=(50, 3)))
  theta = rng.normal(size=(50, 3)) * 3.0
  expected = -stats.norm.logpdf(theta, mean, std).mean(axis=0)
  np.testing.assert_allclose(metrics.gaussian_nll(mean, std, theta), expected, rtol=1e-10)


@pytest.mark.parametrize("draw", [
    lambda rng: (rng.normal(size=300), rng.normal(0.3, 1.2, size=211)),
    lambda rng: (rng.poisson(3.0, size=300), rng.poisson(3.5, size=150)),      # ties
    lambda rng: (rng.integers(0, 3, size=40), rng.integers(0, 3, size=40)),    # heavy ties
    lambda rng: (rng.normal(size=(10, 3)), rng.normal(size=(4, 1)) + 5.0),     # disjoint, 2-D
], ids=["continuous", "poisson", "few_values", "disjoint"])
def test_ks_statistic_matches_scipy(draw):
  a, b = draw(np.random.default_rng(3))
  expected = stats.ks_2samp(np.ravel(a), np.ravel(b)).statistic
  np.testing.assert_allclose(metrics.ks_statistic(a, b), expected, rtol=1e-12)


def test_probability_integral_transform_matches_scipy():
  rng = np.random.default_rng(3)
  mean, std, theta = rng.normal(size=(50, 2)), rng.uniform(0.1, 2.0, (50, 2)), rng.normal(size=(50, 2))
  np.testing.assert_allclose(metrics.probability_integral_transform(mean, std, theta),
                             stats.norm.cdf(theta, mean, std), rtol=1e-10, atol=1e-14)


def test_uniformity_distance_matches_scipy():
  values = np.random.default_rng(4).beta(2.0, 1.5, size=(300, 3))
  expected = [stats.kstest(values[:, i], "uniform").statistic for i in range(3)]
  np.testing.assert_allclose(metrics.uniformity_distance(values), expected, rtol=1e-12)


def test_sbc_tells_calibrated_from_overconfident_answers():
  # Posterior N(mean, std^2) and theta* drawn from it: a calibrated answer, and one with half the std.
  rng = np.random.default_rng(5)
  count = 2000
  mean, std = rng.normal(size=(count, 2)), rng.uniform(0.5, 2.0, (count, 2))
  theta = mean + std * rng.normal(size=(count, 2))
  band = metrics.dkw_band(count)
  assert band == pytest.approx(math.sqrt(math.log(40.0) / (2 * count)))   # 0.0304
  calibrated = metrics.uniformity_distance(metrics.probability_integral_transform(mean, std, theta))
  overconfident = metrics.uniformity_distance(
      metrics.probability_integral_transform(mean, std / 2, theta))
  assert np.all(calibrated <= band), calibrated
  # Halving std moves the ECDF to Phi(Phi^-1(u) / 2): at its furthest 0.16 from u, five bands away.
  assert np.all(overconfident > 3 * band), overconfident


def test_ks_statistic_of_identical_samples_is_zero():
  sample = np.random.default_rng(4).poisson(2.0, size=100)
  assert metrics.ks_statistic(sample, sample[::-1]) == 0.0


# --- The exact references. ---

def _poisson_posterior_by_integration(observations: np.ndarray):
  """Mean and std of `p(theta | x) ~ exp(S theta - n e^theta)` on U(0.2, 7), on a 2M-point grid."""
  grid = np.linspace(0.2, 7.0, 2_000_001)
  total = observations.astype(np.float64).sum()
  log_density = total * grid - observations.size * np.exp(grid)
  weights = np.exp(log_density - log_density.max())
  weights /= weights.sum()
  mean = weights @ grid
  return mean, math.sqrt(weights @ np.square(grid - mean))


@pytest.fixture(scope="module")
def poisson_posterior():
  theta = [[0.5], [1.5], [3.0], [6.5]]
  observations = _observations("poisson", theta)
  posterior = GridPosteriorEvaluator(get_simulator("poisson"), 201).posterior(observations)
  return np.asarray(theta), observations, posterior


def test_poisson_grid_posterior_moments(poisson_posterior):
  theta, observations, posterior = poisson_posterior
  assert posterior.mean.shape == posterior.std.shape == posterior.mode.shape == (4, 1)
  assert posterior.derived_mean == {} and posterior.derived_mode == {}
  for k in range(len(theta)):
    mean, std = _poisson_posterior_by_integration(observations[k, :, 0])
    # Tolerances are in posterior standard deviations, the scale of every estimator's error.
    assert abs(posterior.mean[k, 0] - mean) < 0.02 * std, (k, posterior.mean[k, 0], mean, std)
    assert abs(posterior.std[k, 0] / std - 1.0) < 0.02, (k, posterior.std[k, 0], std)
    # n = 500 observations pin the log-rate down to ~1 / sqrt(n e^theta).
    np.testing.assert_allclose(std, 1.0 / math.sqrt(NUM_OBS * math.exp(theta[k, 0])), rtol=0.1)


def test_poisson_grid_mode_is_the_mle(poisson_posterior):
  _, observations, posterior = poisson_posterior
  mle = np.log(observations[..., 0].astype(np.float64).mean(axis=1))
  # About one fine-grid cell (the fine grid spans >= 18 posterior stds in 200 cells), at every rate:
  # the log-likelihood is evaluated in float64, whose terms reach ~1e6 at theta = 6.5.
  error = np.abs(posterior.mode[:, 0] - mle) / posterior.std[:, 0]
  assert np.all(error < 0.1), error


def _gaussian_posterior_by_integration(observations: np.ndarray):
  """Posterior means and stds of `(m, log s)` under U[-10, 10] x U[-2, 1.5], far from the edges.

  Given s, `m ~ N(xbar, s^2 / n)`, so `E[m] = xbar` and `Var[m] = E[s^2] / n`; the log-scale's
  marginal is `~ exp(-(n - 1) log s - S / (2 s^2))`, `S` the sum of squared deviations.
  """
  x = observations.astype(np.float64)
  n, sample_mean = x.size, x.mean()
  squares = np.square(x - sample_mean).sum()
  grid = np.linspace(-2.0, 1.5, 1_000_001)
  log_density = -(n - 1) * grid - 0.5 * squares * np.exp(-2.0 * grid)
  weights = np.exp(log_density - log_density.max())
  weights /= weights.sum()
  log_scale_mean = weights @ grid
  log_scale_std = math.sqrt(weights @ np.square(grid - log_scale_mean))
  mean_std = math.sqrt(weights @ np.exp(2.0 * grid) / n)
  return np.array([sample_mean, log_scale_mean]), np.array([mean_std, log_scale_std])


def test_gaussian_grid_posterior():
  theta = [[2.0, -1.0], [-4.0, 0.5], [7.0, 1.0]]
  observations = _observations("gaussian", theta, seed=5)
  simulator = get_simulator("gaussian")
  posterior = GridPosteriorEvaluator(simulator, 101).posterior(observations)
  assert posterior.mean.shape == posterior.std.shape == posterior.mode.shape == (3, 2)
  mle = simulator.maximum_likelihood(observations).numpy()
  for k in range(len(theta)):
    mean, std = _gaussian_posterior_by_integration(observations[k, :, 0])
    # The sufficient statistics keep the float32 likelihood exact enough for 1e-3 of a std.
    np.testing.assert_array_less(np.abs(posterior.mean[k] - mean), 1e-3 * std)
    np.testing.assert_array_less(np.abs(posterior.std[k] / std - 1.0), 1e-3)
    # The MLE (sample mean, log of the ddof=0 std) sits within a fraction of a posterior std.
    np.testing.assert_array_less(np.abs(posterior.mean[k] - mle[k]), 0.2 * std)
    np.testing.assert_array_less(np.abs(posterior.mode[k] - mle[k]), 0.2 * std)
    # And the data pin theta down: within 5 posterior stds of the truth.
    np.testing.assert_array_less(np.abs(posterior.mean[k] - theta[k]), 5.0 * std)


@pytest.mark.parametrize("name, supported", [
    ("poisson", True), ("gaussian", True), ("weinberg", True),
    ("linear_regression", False),     # d = 4 parameters
    ("multi_distribution", False),    # no likelihood, d = 3
    ("lotka_volterra", False),        # no likelihood, d = 4
])
def test_supports_grid_posterior(name, supported):
  simulator = get_simulator(name)
  assert supports_grid_posterior(simulator) == supported
  if not supported:
    with pytest.raises(ValueError, match=f"simulator '{name}' does not support a grid posterior"):
      GridPosteriorEvaluator(simulator)


def test_reference_estimates_for_poisson():
  observations = _observations("poisson", [[1.0], [4.0]])
  references = reference_estimates(get_simulator("poisson"), observations, grid_points=101)
  assert set(references) == {"mle", "posterior_mean", "posterior_std"}
  for value in references.values():
    assert value.shape == (2, 1)
  # The closed-form MLE, not the grid mode.
  np.testing.assert_allclose(references["mle"][:, 0],
                             np.log(observations[..., 0].mean(axis=1)), rtol=1e-6)
  assert np.all(references["posterior_std"] > 0)


def test_reference_estimates_for_weinberg():
  theta = [[42.0, 0.8], [48.0, 1.3]]
  observations = _observations("weinberg", theta, seed=2)
  simulator = get_simulator("weinberg")
  references = reference_estimates(simulator, observations, grid_points=61)
  assert set(references) == {"mle", "posterior_mean", "posterior_std",
                             "derived/asymmetry/posterior_mean", "derived/asymmetry/mle"}
  posterior = GridPosteriorEvaluator(simulator, 61).posterior(observations)
  # No closed-form MLE: the grid mode stands in for it.
  np.testing.assert_array_equal(references["mle"], posterior.mode)
  np.testing.assert_array_equal(references["posterior_mean"], posterior.mean)
  for key in ("mle", "posterior_mean", "posterior_std"):
    assert references[key].shape == (2, 2)
  for key in ("derived/asymmetry/posterior_mean", "derived/asymmetry/mle"):
    assert references[key].shape == (2,)
  # The derived MLE is the asymmetry at the mode; both estimates are close to the true asymmetry
  # (n = 500 measures A to ~0.1).
  np.testing.assert_allclose(references["derived/asymmetry/mle"],
                             WeinbergSimulator.asymmetry(references["mle"]).numpy(), rtol=1e-5)
  true_asymmetry = WeinbergSimulator.asymmetry(np.asarray(theta, np.float32)).numpy()
  for key in ("derived/asymmetry/posterior_mean", "derived/asymmetry/mle"):
    np.testing.assert_array_less(np.abs(references[key] - true_asymmetry), 0.3)


class _NumpyDecay(NumpySimulator):
  """Exponential lifetimes whose reference hooks are numpy code, as a user writes them."""

  name = "numpy_decay"

  def __init__(self, mle=None):
    super().__init__(parameter_names=["log_lifetime"], observation_dim=1,
                     prior=box_prior([-1.0], [2.0]))
    self._mle = mle or (lambda observations: np.log(np.mean(observations, axis=1)))

  def simulate_numpy(self, theta, num_obs, rng):
    return rng.exponential(np.exp(theta)[:, None, :], size=(len(theta), num_obs, 1))

  def maximum_likelihood(self, observations):
    return self._mle(observations)

  def log_likelihood(self, theta, observations):   # [b, k, 1], [b, n, 1] -> [b, k]
    total, count = np.sum(observations, axis=(1, 2)), observations.shape[1]
    return -count * theta[..., 0] - total[:, None] * np.exp(-theta[..., 0])


def test_reference_hooks_written_in_numpy_are_used_as_written():
  simulator = _NumpyDecay()
  observations = simulator.simulate_checked(np.array([[0.5], [1.2]]), 400, np.array([1, 2]))
  references = reference_estimates(simulator, observations, grid_points=201)
  expected = np.log(observations.mean(axis=1))
  np.testing.assert_allclose(references["mle"], expected, rtol=1e-5)
  # The grid posterior's mode of the numpy likelihood is the closed-form MLE, within a cell.
  np.testing.assert_allclose(references["posterior_mean"], expected, atol=0.01)


@pytest.mark.parametrize("mle, message", [
    (lambda observations: 1 / 0, "maximum_likelihood hook raised ZeroDivisionError"),
    (lambda observations: np.zeros([3]), r"shape \[2, 1\], got float64 of shape \[3\]"),
    (lambda observations: np.array([["a"], ["b"]]), "must return real numbers"),
])
def test_a_failing_reference_hook_is_named(mle, message):
  simulator = _NumpyDecay(mle)
  observations = simulator.simulate_checked(np.array([[0.5], [1.2]]), 50, np.array([1, 2]))
  with pytest.raises(ValueError, match=message):
    reference_estimates(simulator, observations)
