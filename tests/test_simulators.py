"""Tests of the six simulators: the interface contract, exact distributions, likelihoods and estimators.

Statistical checks compare sample statistics with closed forms in units of their standard error, with
fixed seeds, so they are deterministic and a failure means a real discrepancy, not bad luck.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence, Tuple

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from scipy import integrate, stats

from alfi_tf.config import MachineConfig
from alfi_tf.model.machine import InferenceMachine
import alfi_tf.simulators
from alfi_tf.simulators import (LinearRegressionSimulator, NumpySimulator, Simulator,
                                available_simulators, box_prior, get_simulator,
                                register_simulator)
from alfi_tf.simulators.lotka_volterra import solve_log_populations
from alfi_tf.simulators.multi_distribution import MIXING_MATRIX
from alfi_tf.simulators.weinberg import WeinbergSimulator, inverse_cdf, normaliser

ALL_NAMES = ("gaussian", "linear_gaussian_10", "linear_gaussian_2", "linear_gaussian_20",
             "linear_gaussian_5", "linear_regression", "lotka_volterra", "multi_distribution",
             "poisson", "weinberg")
# Deviations beyond this many standard errors fail a statistical check (two-sided p ~ 6e-7).
TOLERANCE_SE = 5.0


def _seed(a: int, b: int = 0) -> tf.Tensor:
  return tf.constant([a, b], tf.int32)


def _simulate(simulator: Simulator, theta: Sequence[Sequence[float]], num_obs: int,
              seed: int = 0) -> np.ndarray:
  """`[batch, num_obs, d_x]` observations as numpy, for `theta [batch, d]`."""
  return simulator.simulate(tf.constant(theta, tf.float32), num_obs, _seed(seed)).numpy()


def _assert_within_standard_errors(estimate, expected, standard_error) -> None:
  deviation = (np.asarray(estimate, np.float64) - expected) / standard_error
  assert np.all(np.abs(deviation) < TOLERANCE_SE), f"deviations in standard errors: {deviation}"


def _assert_variance_matches(samples: np.ndarray, variance, fourth_central_moment) -> None:
  """Sample variance along the last axis vs the truth; `Var(s^2) ~ (mu_4 - sigma^4) / n`."""
  n = samples.shape[-1]
  _assert_within_standard_errors(samples.var(axis=-1), variance,
                                 np.sqrt((fourth_central_moment - np.square(variance)) / n))


@pytest.fixture(params=ALL_NAMES)
def simulator(request) -> Simulator:
  return get_simulator(request.param)


# --- The interface contract, for every simulator. ---

def _prior_draws(simulator: Simulator, batch: int = 3) -> tf.Tensor:
  return simulator.prior.sample(batch, seed=_seed(11))


def test_prior_and_simulation_shapes(simulator):
  theta = _prior_draws(simulator)
  assert theta.dtype == tf.float32 and theta.shape == (3, simulator.parameter_dim)
  if simulator.parameter_bounds is not None:   # a box prior (linear_gaussian_<d>'s is Gaussian)
    low, high = simulator.parameter_bounds
    assert low.shape == high.shape == (simulator.parameter_dim,)
    assert np.all((low <= theta.numpy()) & (theta.numpy() <= high))
  observations = simulator.simulate(theta, 7, _seed(1))
  assert observations.dtype == tf.float32
  assert observations.shape == (3, 7, simulator.observation_dim)
  assert np.all(np.isfinite(observations.numpy()))
  problems_theta, problems_x = simulator.sample_problems(5, 4, _seed(2))
  assert problems_theta.shape == (5, simulator.parameter_dim)
  assert problems_x.shape == (5, 4, simulator.observation_dim)


def test_simulation_is_a_function_of_the_seed(simulator):
  theta = _prior_draws(simulator)
  first = simulator.simulate(theta, 7, _seed(1)).numpy()
  np.testing.assert_array_equal(first, simulator.simulate(theta, 7, _seed(1)).numpy())
  assert not np.array_equal(first, simulator.simulate(theta, 7, _seed(2)).numpy())


@pytest.mark.parametrize("static_batch", [True, False], ids=["static_batch", "dynamic_batch"])
def test_simulation_inside_tf_function(simulator, static_batch):
  theta = _prior_draws(simulator)
  simulate = tf.function(lambda theta, seed: simulator.simulate(theta, 7, seed))
  batch = 3 if static_batch else None
  concrete = simulate.get_concrete_function(tf.TensorSpec([batch, simulator.parameter_dim]),
                                            tf.TensorSpec([2], tf.int32))
  assert concrete.structured_outputs.shape.as_list() == [batch, 7, simulator.observation_dim]
  # Run that very trace (a plain call would retrace for the static batch of `theta`).
  np.testing.assert_allclose(concrete(theta, _seed(1)).numpy(),
                             simulator.simulate(theta, 7, _seed(1)).numpy(), rtol=1e-5, atol=1e-6)


# --- The registry. ---

def test_registry_has_every_simulator():
  assert available_simulators() == sorted(ALL_NAMES)
  for name in ALL_NAMES:
    simulator = get_simulator(name)
    assert isinstance(simulator, Simulator) and simulator.name == name


def test_unknown_simulator_lists_the_valid_names():
  with pytest.raises(ValueError, match="unknown simulator 'nope'") as error:
    get_simulator("nope")
  for name in ALL_NAMES:
    assert name in str(error.value)


@pytest.mark.parametrize("name, has_likelihood, has_reference", [
    ("poisson", True, True), ("weinberg", True, False), ("gaussian", True, True),
    ("linear_regression", True, True), ("multi_distribution", False, True),
    ("lotka_volterra", False, False)])
def test_tractability_flags(name, has_likelihood, has_reference):
  simulator = get_simulator(name)
  assert simulator.has_likelihood == has_likelihood
  assert simulator.has_reference_estimator == has_reference


@pytest.mark.parametrize("name, theta", [
    ("poisson", [[1.0], [3.0]]), ("gaussian", [[2.0, -1.0], [-4.0, 0.5]]),
    ("linear_regression", [[0.3, 0.8, 1.2, 0.4], [1.0, 0.1, 0.5, -0.7]]),
    ("linear_gaussian_5", [[0.3, -1.0, 0.5, 2.0, 0.0], [1.0, 0.1, -0.5, 0.7, -1.2]])])
def test_maximum_likelihood_maximises_log_likelihood(name, theta):
  simulator = get_simulator(name)
  observations = _simulate(simulator, theta, 200)
  estimate = simulator.maximum_likelihood(observations).numpy()            # [batch, d]
  # The estimate, then the estimate moved by +-0.02 along each axis: [batch, 1 + 2d, d].
  steps = np.concatenate([np.zeros((1, estimate.shape[1])), 0.02 * np.eye(estimate.shape[1]),
                          -0.02 * np.eye(estimate.shape[1])])
  candidates = estimate[:, np.newaxis, :] + steps
  log_likelihood = simulator.log_likelihood(candidates.astype(np.float32), observations).numpy()
  assert np.all(log_likelihood[:, :1] > log_likelihood[:, 1:])


# --- The base constructor, and a user-defined simulator. ---

class _MinimalSimulator(Simulator):
  """Passes its arguments straight to `Simulator.__init__`, to test its validation."""

  def simulate(self, theta, num_obs, seed):
    raise NotImplementedError


@pytest.mark.parametrize("kwargs, argument", [
    (dict(parameter_names=[]), "parameter_names"),
    (dict(parameter_names="ab"), "parameter_names"),
    (dict(parameter_names=["a", ""]), "parameter_names"),
    (dict(parameter_names=["a", 1]), "parameter_names"),
    (dict(parameter_names=["a", "a"]), "parameter_names"),
    (dict(observation_dim=0), "observation_dim"),
    (dict(observation_dim=-2), "observation_dim"),
    (dict(observation_dim=1.5), "observation_dim"),
    (dict(observation_dim=True), "observation_dim"),
    (dict(prior=box_prior([0.0], [1.0])), "prior"),
    (dict(prior=box_prior([0.0] * 3, [1.0] * 3)), "prior"),
    (dict(prior=tf.constant([0.0, 1.0])), "prior"),
    # A batch of three priors over (a, b): theta came out [K, 3, 2].
    (dict(prior=tfp.distributions.Independent(tfp.distributions.Normal(tf.zeros([3, 2]), 1.0), 1)),
     r"prior must be one distribution \(batch shape \[\]\), got batch shape \(3,\)"),
], ids=["no_names", "string_names", "empty_name", "non_string_name", "duplicate_names",
        "zero_dim", "negative_dim", "float_dim", "bool_dim", "prior_too_small", "prior_too_big",
        "prior_not_a_distribution", "prior_batch"])
def test_constructor_rejects_bad_arguments(kwargs, argument):
  arguments = dict(parameter_names=["a", "b"], observation_dim=3,
                   prior=box_prior([0.0, 0.0], [1.0, 1.0]))
  arguments.update(kwargs)
  with pytest.raises(ValueError, match=argument):
    _MinimalSimulator(**arguments)


class _OneExtraObservation(_MinimalSimulator):
  name = "one_extra"

  def simulate(self, theta, num_obs, seed):
    return tf.zeros([tf.shape(theta)[0], num_obs + 1, 1])


class _Counts(_MinimalSimulator):
  name = "counts"

  def simulate(self, theta, num_obs, seed):
    return tf.zeros([tf.shape(theta)[0], num_obs, 1], tf.int32)


def test_a_tf_simulators_returns_are_checked_where_the_library_calls_it():
  """Built directly (no spec, so no trial call), a simulate of another shape was reshaped into
  scrambled observations, or silently returned as problems; int32 failed deep in the machine."""
  arguments = dict(parameter_names=["a"], observation_dim=1, prior=box_prior([0.0], [1.0]))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"simulator 'one_extra': simulate returned observations of "
                           r"another shape than \[parameter vectors, num_obs, observation_dim=1\]"):
    _OneExtraObservation(**arguments).sample_problems(4, 5, tf.constant([1, 2]))
  machine = InferenceMachine(_OneExtraObservation(**arguments), MachineConfig(simulator="one_extra",
                                                                          num_steps=1))
  with pytest.raises(tf.errors.InvalidArgumentError, match="simulate returned observations of "
                                                           "another shape"):
    machine.infer(np.zeros([2, 5, 1], np.float32), tf.constant([1, 2]))
  with pytest.raises(ValueError, match=r"simulator 'counts': simulate returned int32 "
                                       r"observations .*; expected float32"):
    _Counts(**arguments).sample_problems(4, 5, tf.constant([1, 2]))


def test_constructor_names_the_duplicates():
  with pytest.raises(ValueError, match="unique.*beta"):
    _MinimalSimulator(parameter_names=["alpha", "beta", "beta"], observation_dim=1,
                      prior=box_prior([0.0] * 3, [1.0] * 3))


def test_constructor_stores_its_arguments():
  prior = box_prior([0.0, -1.0], [1.0, 1.0])
  simulator = _MinimalSimulator(parameter_names=["a", "b"], observation_dim=np.int64(4), prior=prior)
  assert simulator.parameter_names == ("a", "b") and isinstance(simulator.parameter_names, tuple)
  assert simulator.observation_dim == 4 and type(simulator.observation_dim) is int
  assert simulator.prior is prior and simulator.parameter_dim == 2
  with pytest.raises(AttributeError):
    simulator.observation_dim = 5


class _SkipsSuperInit(_MinimalSimulator):
  """A subclass whose `__init__` forgets `super().__init__(...)`."""

  def __init__(self):   # pylint: disable=super-init-not-called
    self.rate = 1.0


def test_a_subclass_that_skips_super_init_is_named():
  simulator = _SkipsSuperInit()
  for attribute in ("parameter_names", "observation_dim", "prior", "parameter_dim"):
    with pytest.raises(ValueError, match=r"^simulator class _SkipsSuperInit: its __init__ must "
                                         r"call super\(\)\.__init__\(parameter_names=\.\.\., "
                                         r"observation_dim=\.\.\., prior=\.\.\.\)$"):
      getattr(simulator, attribute)
  # Other missing attributes stay ordinary AttributeErrors (getattr's default, hasattr).
  assert getattr(simulator, "missing", None) is None and simulator.rate == 1.0


@pytest.mark.parametrize("low, high, message", [
    ([2.0], [1.0], "the prior's box needs finite low < high"),
    ([1.0], [1.0], "the prior's box needs finite low < high"),
    ([0.0, 1.0], [1.0, math.nan], r"the prior's box needs finite low < high .* \(not so for "
                                  r"parameter\(s\) 1\)$"),
    ([-math.inf], [1.0], "the prior's box needs finite low < high"),
    ([0.0], [1e39], r"as float32 numbers \(bounds and width at most 3\.403e\+38\)"),
    ([-3e38], [3e38], "as float32 numbers"),   # the width overflows float32
    ([1.0], [1.00000001], "as float32 numbers"),   # equal once rounded to float32
    ([0.0, 1.0], [1.0], r"low and high must be two equally long lists of numbers, one per "
                        r"parameter, got \[0\.0, 1\.0\] and \[1\.0\]$"),
    ([[0.0]], [[1.0]], "two equally long lists"),
    ([], [], "two equally long lists"),
    (["a"], [1.0], r"low and high must be lists of numbers, got \['a'\] and \[1\.0\]$"),
], ids=["low_above_high", "low_equals_high", "nan", "inf", "beyond_float32", "width_overflows",
        "equal_in_float32", "broadcast", "two_dimensional", "empty", "strings"])
def test_box_prior_refuses_bounds_it_cannot_sample_from(low, high, message):
  with pytest.raises(ValueError, match=rf"^box_prior: .*{message}"):
    box_prior(low, high)


def test_a_box_prior_built_by_hand_is_checked_naming_the_simulator():
  tfd = tfp.distributions
  with pytest.raises(ValueError, match=r"^simulator '_MinimalSimulator': prior: the prior's box "
                                       r"needs finite low < high .* \(not so for parameter\(s\) 1\)$"):
    _MinimalSimulator(parameter_names=["a", "b"], observation_dim=1,
                      prior=tfd.Independent(tfd.Uniform([0.0, 1.0], [1.0, 1.0]), 1))
  # A bound given once for every parameter is broadcast, as TFP does.
  simulator = _MinimalSimulator(parameter_names=["a", "b"], observation_dim=1,
                                prior=tfd.Independent(tfd.Uniform(0.0, [1.0, 2.0]), 1))
  np.testing.assert_array_equal(simulator.parameter_bounds[0], [0.0, 0.0])


class ExponentialDecaySimulator(NumpySimulator):
  """Decay times of a particle with lifetime `exp(log_lifetime)`, written as a user would."""

  name = "test_exponential_decay"

  def __init__(self):
    super().__init__(parameter_names=["log_lifetime"], observation_dim=1,
                     prior=box_prior([-1.0], [2.0]))

  def simulate_numpy(self, theta, num_obs, rng):
    return rng.exponential(np.exp(theta)[:, None, :], size=(len(theta), num_obs, 1))


@pytest.fixture
def registered_decay():
  """Registers `ExponentialDecaySimulator`, and removes it again after the test."""
  register_simulator(ExponentialDecaySimulator)
  yield ExponentialDecaySimulator.name
  del alfi_tf.simulators._REGISTRY[ExponentialDecaySimulator.name]


def test_user_defined_numpy_simulator_end_to_end(registered_decay):
  simulator = get_simulator(registered_decay)
  assert isinstance(simulator, ExponentialDecaySimulator)
  assert registered_decay in available_simulators()
  assert simulator.parameter_names == ("log_lifetime",) and simulator.observation_dim == 1
  np.testing.assert_array_equal(simulator.parameter_bounds[0], [-1.0])
  np.testing.assert_array_equal(simulator.parameter_bounds[1], [2.0])
  theta = simulator.prior.sample(4, seed=_seed(8))
  observations = simulator.simulate(theta, 5_000, _seed(9))
  assert observations.dtype == tf.float32 and observations.shape == (4, 5_000, 1)
  np.testing.assert_array_equal(observations.numpy(),
                                simulator.simulate(theta, 5_000, _seed(9)).numpy())
  assert not np.array_equal(observations.numpy(),
                            simulator.simulate(theta, 5_000, _seed(10)).numpy())
  assert np.all(observations.numpy() >= 0.0)
  # Exponential with mean (and standard deviation) exp(log_lifetime).
  lifetime = np.exp(theta.numpy()[:, 0])
  _assert_within_standard_errors(observations.numpy()[..., 0].mean(axis=1), lifetime,
                                 lifetime / np.sqrt(5_000))
  # Also inside a tf.function, as in the unrolled inference loop.
  simulate = tf.function(lambda theta, seed: simulator.simulate(theta, 5, seed))
  np.testing.assert_array_equal(simulate(theta, _seed(9)).numpy(),
                                simulator.simulate(theta, 5, _seed(9)).numpy())


@pytest.mark.parametrize("name", ["my decay (v2)!", "_decay", "zerfall/é", ""])
def test_a_numpy_simulator_of_any_name_traces(name):
  simulator = ExponentialDecaySimulator()
  simulator.name = name   # no TensorFlow op name: spaces, a leading '_', non-ASCII, none
  theta = tf.constant([[0.5], [1.0]])
  simulate = tf.function(lambda theta, seed: simulator.simulate(theta, 3, seed))
  np.testing.assert_array_equal(simulate(theta, _seed(9)).numpy(),
                                simulator.simulate(theta, 3, _seed(9)).numpy())


def test_registry_is_restored_after_the_user_simulator():
  assert available_simulators() == sorted(ALL_NAMES)


# --- Poisson. ---

def test_poisson_moments():
  log_rate = np.array([0.5, 2.0, 5.0])
  counts = _simulate(get_simulator("poisson"), log_rate[:, np.newaxis], 20_000)[..., 0]
  rate = np.exp(log_rate)
  assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0
  _assert_within_standard_errors(counts.mean(axis=1), rate, np.sqrt(rate / counts.shape[1]))
  # Poisson central moments: variance rate, fourth rate (1 + 3 rate).
  _assert_variance_matches(counts, rate, rate * (1.0 + 3.0 * rate))


def _assert_poisson_goodness_of_fit(counts: np.ndarray, rate: float) -> None:
  """Pearson chi-square test of `counts` against Poisson(rate) and a check of the first two moments.

  The cells are split at the distribution's 2%-quantiles, so each expects enough draws for the test.
  """
  counts = counts.ravel()
  cuts = np.unique(stats.poisson.ppf(np.linspace(0.0, 1.0, 51)[1:-1], rate))   # upper cell edges
  observed = np.bincount(np.searchsorted(cuts, counts), minlength=cuts.size + 1)
  cell_probabilities = np.diff(np.concatenate([[0.0], stats.poisson.cdf(cuts, rate), [1.0]]))
  _, p_value = stats.chisquare(observed, counts.size * cell_probabilities)
  assert p_value > 1e-3, f"rate {rate}: chi-square p-value {p_value:.2g}"
  _assert_within_standard_errors(counts.mean(), rate, np.sqrt(rate / counts.size))
  _assert_variance_matches(counts, rate, rate * (1.0 + 3.0 * rate))


def _simulate_poisson(rate, num_obs: int, seed: tf.Tensor, jit_compile: bool = True) -> np.ndarray:
  """Counts `[len(rate), num_obs]` of the Poisson simulator at log-rates `log(rate)`, traced for XLA
  (TFP's sampler) or not (`tf.random.stateless_poisson`)."""
  simulator = get_simulator("poisson")
  simulate = tf.function(lambda theta, seed: simulator.simulate(theta, num_obs, seed),
                         jit_compile=jit_compile)
  log_rate = np.log(np.asarray(rate, np.float32))[:, np.newaxis]
  return simulate(tf.constant(log_rate), seed).numpy()[..., 0]


# Small, medium and large rates: under XLA, Knuth's branch, the rejection branch just above its
# switch, and the prior's top.
@pytest.mark.parametrize("rate", [1.2, 20.0, 1000.0])
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_poisson_simulator_is_poisson(rate, jit_compile):
  counts = _simulate_poisson([rate], 20_000, _seed(3), jit_compile)
  assert counts.dtype == np.float32 and np.array_equal(counts, np.round(counts))
  # The simulator draws at exp(float32 log(rate)): a relative 1e-6 off `rate`, far below resolution.
  _assert_poisson_goodness_of_fit(counts.astype(np.float64), rate)


def test_poisson_simulator_under_xla_mixes_both_branches_elementwise():
  rate = np.array([0.5, 9.9, 10.0, 300.0], np.float32)
  counts = _simulate_poisson(rate, 5_000, _seed(4))
  _assert_within_standard_errors(counts.mean(axis=1), rate, np.sqrt(rate / counts.shape[1]))


def test_poisson_simulator_under_xla_is_a_function_of_the_seed():
  rate = [0.5, 30.0]
  first = _simulate_poisson(rate, 50, _seed(7))
  np.testing.assert_array_equal(first, _simulate_poisson(rate, 50, _seed(7)))
  assert not np.array_equal(first, _simulate_poisson(rate, 50, _seed(8)))


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_poisson_simulator_gives_nan_for_a_non_finite_rate(jit_compile):
  # log-rates NaN, +inf and 100 (rate overflows to inf) would hang the samplers; -inf is rate 0.
  simulator = get_simulator("poisson")
  simulate = tf.function(lambda theta, seed: simulator.simulate(theta, 5, seed),
                         jit_compile=jit_compile)
  log_rate = tf.constant([[1.0], [np.nan], [np.inf], [100.0], [-np.inf], [4.0]])
  counts = simulate(log_rate, _seed(6)).numpy()[..., 0]
  assert np.array_equal(np.isnan(counts).all(axis=1), [False, True, True, True, False, False])
  assert not np.isnan(counts[[0, 4, 5]]).any() and np.all(counts[4] == 0.0)


# The trained figures rest on these draws: outside XLA they must stay `stateless_poisson`'s, in
# every context that simulates (eager, `tf.function`, and `tf.data`, where meta-datasets are made).
@pytest.mark.parametrize("context", ["eager", "tf_function", "tf_data"])
def test_poisson_simulator_draws_are_stateless_poisson(context):
  simulator = get_simulator("poisson")
  log_rate = tf.constant([[0.2], [1.7], [2.31], [4.0], [7.0]])
  seeds = [_seed(0), _seed(12, 34), _seed(-5, 2**31 - 1)]

  def simulate(seed):
    return simulator.simulate(log_rate, 30, seed)

  if context == "tf_function":
    simulate = tf.function(simulate)
  if context == "tf_data":
    actual = list(tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(simulate))
  else:
    actual = [simulate(seed) for seed in seeds]
  for seed, counts in zip(seeds, actual):
    expected = tf.random.stateless_poisson([30, 5], seed, tf.exp(log_rate[:, 0]), dtype=tf.float32)
    np.testing.assert_array_equal(counts.numpy(), tf.transpose(expected).numpy()[..., np.newaxis])


def test_poisson_simulator_compiles_with_xla():
  simulator = get_simulator("poisson")
  log_rate = np.array([[0.2], [2.0], [7.0]], np.float32)
  simulate = tf.function(lambda theta, seed: simulator.simulate(theta, 2_000, seed),
                         jit_compile=True)
  counts = simulate(tf.constant(log_rate), _seed(5)).numpy()
  assert counts.shape == (3, 2_000, 1)
  rate = np.exp(log_rate[:, 0])
  _assert_within_standard_errors(counts[..., 0].mean(axis=1), rate, np.sqrt(rate / 2_000))


def test_poisson_log_likelihood_matches_scipy():
  simulator = get_simulator("poisson")
  counts = _simulate(simulator, [[1.0], [3.0]], 50)
  grid = np.broadcast_to(np.linspace(0.2, 7.0, 9)[np.newaxis, :, np.newaxis], (2, 9, 1))
  expected = stats.poisson.logpmf(counts[:, np.newaxis, :, 0], np.exp(grid)).sum(axis=-1)
  np.testing.assert_allclose(simulator.log_likelihood(grid.astype(np.float32), counts).numpy(),
                             expected, rtol=1e-5)


def test_poisson_maximum_likelihood_is_log_mean():
  simulator = get_simulator("poisson")
  counts = _simulate(simulator, [[1.0], [3.0]], 50)
  np.testing.assert_allclose(simulator.maximum_likelihood(counts).numpy()[:, 0],
                             np.log(counts[..., 0].mean(axis=1)), rtol=1e-6)
  # An all-zero set has no finite MLE; the documented continuity correction is half a count.
  zeros = np.zeros((1, 50, 1), np.float32)
  np.testing.assert_allclose(simulator.maximum_likelihood(zeros).numpy(), [[np.log(0.5 / 50)]],
                             rtol=1e-6)


# --- Weinberg. ---

def _weinberg_asymmetry(beam_energy: float, fermi_constant: float) -> float:
  return 2.0 * math.tanh(10.0 * (2.0 * beam_energy - 90.0) / 90.0) * fermi_constant


def _weinberg_integral(asymmetry: float, low: float = -1.0, high: float = 1.0) -> float:
  """`int max(0, 1 + x^2 + A x) dx` over `[low, high]`, by quadrature, told where the kinks are."""
  kinks = np.roots([1.0, asymmetry, 1.0])
  kinks = [float(k.real) for k in kinks if abs(k.imag) < 1e-12 and low < k.real < high]
  return integrate.quad(lambda x: max(0.0, 1.0 + x * x + asymmetry * x), low, high,
                        points=kinks or None, epsabs=1e-13, epsrel=1e-12)[0]


# (E_beam, G_F) giving A = 0, 1.5 (G_F = 1, E_beam solving tanh(...) = 0.75), and the truncated
# densities A = +-2.41 (|A| > 2: zero on part of [-1, 1]).
WEINBERG_THETAS = [(45.0, 1.0), (45.0 + 4.5 * math.atanh(0.75), 1.0), (50.0, 1.5), (40.0, 1.5)]
WEINBERG_IDS = ["A=0", "A=1.5", "A=2.41", "A=-2.41"]


@pytest.mark.parametrize("theta", WEINBERG_THETAS, ids=WEINBERG_IDS)
def test_weinberg_samples_follow_the_density(theta):
  asymmetry = _weinberg_asymmetry(*theta)
  np.testing.assert_allclose(WeinbergSimulator.asymmetry(tf.constant(theta)).numpy(), asymmetry,
                             rtol=1e-5, atol=1e-6)
  samples = _simulate(get_simulator("weinberg"), [theta], 200_000)[0, :, 0]
  assert samples.min() >= -1.0 and samples.max() <= 1.0
  edges = np.linspace(-1.0, 1.0, 41)
  counts = np.histogram(samples, edges)[0]
  probabilities = np.array([_weinberg_integral(asymmetry, a, b) for a, b in zip(edges, edges[1:])])
  probabilities /= _weinberg_integral(asymmetry)
  support = probabilities > 0.0
  assert np.all(counts[~support] == 0), "samples where the density is zero"
  expected = probabilities[support] * samples.size
  chi_square = np.sum(np.square(counts[support] - expected) / expected)
  assert stats.chi2.sf(chi_square, support.sum() - 1) > 1e-4, f"chi2 = {chi_square}"


def _weinberg_cdf(x: np.ndarray, asymmetry: np.ndarray) -> np.ndarray:
  """The float64 CDF on `[-1, 1]`: the antiderivative minus the part where `1 + t^2 + A t < 0`."""
  def antiderivative(t):
    return t + t ** 3 / 3.0 + 0.5 * asymmetry * t * t
  root = np.sqrt(np.maximum(asymmetry * asymmetry - 4.0, 0.0))
  low = np.clip(0.5 * (-asymmetry - root), -1.0, 1.0)
  high = np.clip(0.5 * (-asymmetry + root), -1.0, 1.0)
  def unnormalised(t):
    return (antiderivative(t) - antiderivative(-1.0)
            - (antiderivative(np.clip(t, low, high)) - antiderivative(low)))
  return unnormalised(x) / unnormalised(np.ones_like(x))


def test_weinberg_inverse_cdf_matches_bisection():
  # |A| < 2, the edge |A| = 2 (density zero at an endpoint), |A| > 2 (zero on an interval), and the
  # prior's extremes; uniforms include both ends and values close to them.
  asymmetry = np.array([0.0, 0.3, -1.0, 1.999, 2.0, -2.0, 2.001, 2.2, -2.2, 2.41, -2.41])[:, None]
  # float32 uniforms, as the simulator draws: near a zero of the density x is very sensitive to u.
  uniform = np.float32([0.0, 1e-7, 1e-3, 0.1, 0.37, 0.5, 0.9, 1.0 - 1e-6, 1.0])[None, :]
  asymmetry, uniform = np.broadcast_arrays(asymmetry, uniform.astype(np.float64))
  left, right = -np.ones_like(uniform), np.ones_like(uniform)
  for _ in range(60):   # float64 bisection: 2^-59 is far below float32 resolution
    middle = 0.5 * (left + right)
    below = _weinberg_cdf(middle, asymmetry) < uniform
    left, right = np.where(below, middle, left), np.where(below, right, middle)
  x = inverse_cdf(tf.constant(uniform, tf.float32), tf.constant(asymmetry, tf.float32)).numpy()
  np.testing.assert_allclose(_weinberg_cdf(x.astype(np.float64), asymmetry), uniform, atol=1e-6)
  # At u = 0 or 1 with a vanishing density the inverse is a flat stretch or a triple root: the CDF
  # check above covers them.
  inner = (0.0 < uniform) & (uniform < 1.0)
  np.testing.assert_allclose(x[inner], 0.5 * (left + right)[inner], atol=2e-6)


def test_weinberg_normaliser_matches_quadrature():
  asymmetries = np.concatenate([np.linspace(-3.0, 3.0, 13), [-2.41, -2.0, 2.0, 2.41]])
  expected = [_weinberg_integral(a) for a in asymmetries]
  np.testing.assert_allclose(normaliser(tf.constant(asymmetries, tf.float32)).numpy(), expected,
                             rtol=1e-5)


@pytest.mark.parametrize("theta", WEINBERG_THETAS, ids=WEINBERG_IDS)
def test_weinberg_log_likelihood_is_a_normalised_density(theta):
  simulator = get_simulator("weinberg")
  # Each grid point is its own one-observation problem, so exp(log_likelihood) is the density there.
  grid = np.linspace(-1.0, 1.0, 20_001)
  thetas = np.broadcast_to(np.array(theta, np.float32), (grid.size, 1, 2))
  density = np.exp(simulator.log_likelihood(thetas, grid[:, np.newaxis, np.newaxis]).numpy()[:, 0])
  assert integrate.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
  # The log-likelihood of a set is the sum over its observations.
  observations = _simulate(simulator, [theta], 10)
  single = simulator.log_likelihood(np.reshape(theta, (1, 1, 2)).repeat(10, axis=0),
                                    observations.reshape(10, 1, 1)).numpy()
  np.testing.assert_allclose(simulator.log_likelihood(np.reshape(theta, (1, 1, 2)),
                                                      observations).numpy(),
                             [[single.sum()]], rtol=1e-5)


# --- Gaussian. ---

def test_gaussian_moments():
  theta = np.array([[0.0, 0.0], [-5.0, 1.5], [7.0, -2.0]])
  samples = _simulate(get_simulator("gaussian"), theta, 200_000)[..., 0]
  scale = np.exp(theta[:, 1])
  _assert_within_standard_errors(samples.mean(axis=1), theta[:, 0], scale / np.sqrt(samples.shape[1]))
  _assert_variance_matches(samples, scale**2, 3.0 * scale**4)


def test_gaussian_log_likelihood_matches_scipy():
  simulator = get_simulator("gaussian")
  observations = _simulate(simulator, [[2.0, -1.0], [-4.0, 0.5]], 30)
  grid = simulator.prior.sample([2, 16], seed=_seed(3)).numpy()           # [2, 16, 2]
  expected = stats.norm.logpdf(observations[:, np.newaxis, :, 0], grid[..., :1],
                               np.exp(grid[..., 1:])).sum(axis=-1)
  np.testing.assert_allclose(simulator.log_likelihood(grid, observations).numpy(), expected,
                             rtol=2e-5)


def test_gaussian_maximum_likelihood():
  simulator = get_simulator("gaussian")
  theta = np.array([[2.0, -1.0], [-4.0, 0.5]])
  observations = _simulate(simulator, theta, 20_000)[..., 0]
  estimate = simulator.maximum_likelihood(observations[..., np.newaxis]).numpy()
  np.testing.assert_allclose(estimate[:, 0], observations.mean(axis=1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(estimate[:, 1], np.log(observations.std(axis=1, ddof=0)), atol=1e-5)
  n = observations.shape[1]
  _assert_within_standard_errors(estimate, theta,
                                 np.stack([np.exp(theta[:, 1]) / np.sqrt(n),
                                           np.full(2, 1.0 / np.sqrt(2 * n))], axis=-1))


# --- Linear regression. ---

def _angle_and_offset_standard_errors(observations: np.ndarray, theta: np.ndarray) -> np.ndarray:
  """Large-sample standard errors of (angles, offset): `0.1 sqrt(diag (D^T D)^-1)`, slopes by delta."""
  design = observations[..., :-1].astype(np.float64)
  coefficient_se = 0.1 * np.sqrt(np.diagonal(np.linalg.inv(design.transpose(0, 2, 1) @ design),
                                             axis1=1, axis2=2))
  p = theta.shape[1] - 1
  # d angle / d slope = cos^2(angle).
  return coefficient_se * np.concatenate([np.cos(theta[:, :p])**2, np.ones((len(theta), 1))], axis=1)


def test_linear_regression_observations_and_least_squares():
  simulator = get_simulator("linear_regression")
  theta = np.array([[0.3, 0.8, 1.2, 0.4], [1.0, 0.1, 0.5, -0.7]])
  observations = _simulate(simulator, theta, 20_000)
  covariates, constant, response = observations[..., :3], observations[..., 3], observations[..., 4]
  assert covariates.min() >= -1.0 and covariates.max() <= 1.0
  assert np.all(constant == 1.0)
  residuals = response - np.einsum("bnp,bp->bn", covariates, np.tan(theta[:, :3])) - theta[:, 3:]
  _assert_within_standard_errors(residuals.std(axis=1), 0.1, 0.1 / np.sqrt(2 * residuals.shape[1]))
  estimate = simulator.maximum_likelihood(observations).numpy()
  _assert_within_standard_errors(estimate, theta,
                                 _angle_and_offset_standard_errors(observations, theta))


def test_linear_regression_log_likelihood_matches_direct_sum():
  simulator = get_simulator("linear_regression")
  observations = _simulate(simulator, [[0.3, 0.8, 1.2, 0.4], [1.0, 0.1, 0.5, -0.7]], 40)
  grid = simulator.prior.sample([2, 8], seed=_seed(4)).numpy()            # [2, 8, 4]
  means = (np.einsum("bnp,bkp->bkn", observations[..., :3], np.tan(grid[..., :3]))
           + grid[..., 3:])
  expected = stats.norm.logpdf(observations[:, np.newaxis, :, 4], means, 0.1).sum(axis=-1)
  np.testing.assert_allclose(simulator.log_likelihood(grid, observations).numpy(), expected,
                             rtol=1e-5)


def test_linear_regression_top_of_the_box_keeps_the_slope_positive():
  # float32(pi/2) is just past the pole, where a naive tan is about -2.3e7.
  simulator = get_simulator("linear_regression")
  observations = _simulate(simulator, [simulator.parameter_bounds[1]], 100)[0].astype(np.float64)
  slopes = np.linalg.lstsq(observations[:, :-1], observations[:, -1], rcond=None)[0][:3]
  # The largest float32 angle below pi/2 instead: a slope of 1 / (pi/2 - angle) ~ 1.3e7.
  np.testing.assert_allclose(slopes, 1.3245e7, rtol=1e-3)


def test_linear_regression_posterior_mean_close_to_truth_and_mle():
  simulator = get_simulator("linear_regression")
  # Away from the box's edges relative to the n = 500 posterior width, so the MLE is nearly Bayes.
  theta = np.array([[0.3, 0.8, 1.2, 0.4], [1.0, 0.1, 0.5, -0.7], [0.6, 0.6, 0.2, 0.0]])
  observations = _simulate(simulator, theta, 500)
  posterior_mean = simulator.posterior_mean(observations, _seed(5)).numpy()
  np.testing.assert_array_equal(posterior_mean,
                                simulator.posterior_mean(observations, _seed(5)).numpy())
  posterior_std = _angle_and_offset_standard_errors(observations, theta)
  _assert_within_standard_errors(posterior_mean, theta, posterior_std)
  # The prior's tilt and the Monte-Carlo error each move it well under half a posterior std.
  estimate = simulator.maximum_likelihood(observations).numpy()
  assert np.all(np.abs(posterior_mean - estimate) < 0.5 * posterior_std)


@pytest.mark.parametrize("theta, num_obs", [
    # Truth at the corner (angle 0, offset 1): the posterior is truncated on both parameters.
    ((0.005, 0.995), 30),
    # Few observations: a wide posterior, skewed by atan and tilted by the prior's 1 / (1 + slope^2).
    ((math.pi / 4, 0.0), 4)], ids=["truncated", "wide"])
def test_linear_regression_posterior_mean_matches_grid_posterior(theta, num_obs):
  simulator = LinearRegressionSimulator(num_covariates=1)
  observations = _simulate(simulator, [theta], num_obs, seed=6)
  posterior_mean = simulator.posterior_mean(observations, _seed(7), num_samples=200_000).numpy()[0]
  # Uniform prior on the box, so the posterior on a midpoint grid is the normalised likelihood.
  angles = (np.arange(800) + 0.5) * (math.pi / 2) / 800
  offsets = (np.arange(800) + 0.5) * 2.0 / 800 - 1.0
  grid = np.stack(np.meshgrid(angles, offsets, indexing="ij"), axis=-1).reshape(1, -1, 2)
  log_likelihood = simulator.log_likelihood(grid.astype(np.float32), observations).numpy()[0]
  weights = np.exp(log_likelihood - log_likelihood.max())
  weights /= weights.sum()
  grid_mean = weights @ grid[0]
  grid_std = np.sqrt(weights @ np.square(grid[0] - grid_mean))
  estimate = simulator.maximum_likelihood(observations).numpy()[0]
  assert np.max(np.abs(estimate - grid_mean) / grid_std) > 0.1, "the MLE would pass as well"
  np.testing.assert_allclose(posterior_mean, grid_mean, atol=0.03 * grid_std.min())


# --- Multi-distribution. ---

# The spec's matrix, retyped: the simulator must use exactly these digits.
SPEC_MIXING_MATRIX = np.array([
    [1.31229955, 0.10499961, 0.48310515, -0.3249938, -0.26387927],
    [0.10499961, 1.15833058, -0.55865473, 0.25275522, -0.39790775],
    [0.48310515, -0.55865473, 2.25874579, -0.52087938, -0.39271231],
    [-0.3249938, 0.25275522, -0.52087938, 1.4034925, -0.63521059],
    [-0.26387927, -0.39790775, -0.39271231, -0.63521059, 1.0]])
MULTI_THETA = np.array([[-2.0, 1.5, 0.5], [2.5, -3.0, -2.8]])
MULTI_NUM_OBS = 50_000


@pytest.fixture(scope="module")
def multi_distribution_data() -> Tuple[np.ndarray, np.ndarray]:
  """`(observations [2, n, 5], latents [2, n, 5])` at `MULTI_THETA`."""
  observations = _simulate(get_simulator("multi_distribution"), MULTI_THETA, MULTI_NUM_OBS)
  latents = observations.astype(np.float64) @ np.linalg.inv(SPEC_MIXING_MATRIX).T
  return observations, latents


def test_multi_distribution_mixing_matrix_is_the_spec_one():
  np.testing.assert_array_equal(MIXING_MATRIX, SPEC_MIXING_MATRIX)
  np.testing.assert_array_equal(MIXING_MATRIX, MIXING_MATRIX.T)


def test_multi_distribution_latent_distributions(multi_distribution_data):
  _, latents = multi_distribution_data
  n = MULTI_NUM_OBS
  z0, z1, z2, z3, z4 = np.moveaxis(latents, -1, 0)                        # each [2, n]
  theta0, theta1, theta2 = MULTI_THETA.T
  _assert_within_standard_errors(z0.mean(axis=1), theta0, 1.0 / np.sqrt(n))
  _assert_variance_matches(z0, 1.0, 3.0)
  scale = np.exp(theta1 / 3.0)
  _assert_within_standard_errors(z1.mean(axis=1), 3.0, scale / np.sqrt(n))
  _assert_variance_matches(z1, scale**2, 3.0 * scale**4)
  # Mixture 0.5 N(-2, 1) + 0.5 N(2, 0.5^2): mean 0, so raw moments are central ones;
  # E[X^2] = m^2 + s^2, E[X^4] = m^4 + 6 m^2 s^2 + 3 s^4 per component.
  variance = 0.5 * (4.0 + 1.0) + 0.5 * (4.0 + 0.25)
  fourth = 0.5 * (16.0 + 24.0 + 3.0) + 0.5 * (16.0 + 6.0 + 3.0 * 0.0625)
  _assert_within_standard_errors(z2.mean(axis=1), 0.0, np.sqrt(variance / n))
  _assert_variance_matches(z2, variance, fourth)
  positive = 0.5 * stats.norm.sf(2.0) + 0.5 * stats.norm.cdf(4.0)
  _assert_within_standard_errors((z2 > 0).mean(axis=1), positive,
                                 np.sqrt(positive * (1 - positive) / n))
  # U(-5, theta2): the extremes approach the ends within ~width / n; float32 data add ~1e-5.
  width = theta2 + 5.0
  assert np.all((z3.max(axis=1) <= theta2 + 1e-4) & (z3.max(axis=1) > theta2 - 10.0 * width / n))
  assert np.all((z3.min(axis=1) >= -5.0 - 1e-4) & (z3.min(axis=1) < -5.0 + 10.0 * width / n))
  _assert_within_standard_errors(z3.mean(axis=1), (theta2 - 5.0) / 2.0, width / np.sqrt(12.0 * n))
  # Exponential(rate 0.5): mean 2, variance 4, fourth central moment 9 / rate^4.
  _assert_within_standard_errors(z4.mean(axis=1), 2.0, 2.0 / np.sqrt(n))
  _assert_variance_matches(z4, 4.0, 144.0)


def test_multi_distribution_reference_estimator(multi_distribution_data):
  observations, latents = multi_distribution_data
  estimate = get_simulator("multi_distribution").maximum_likelihood(observations).numpy()
  expected = np.stack([latents[..., 0].mean(axis=1), 3.0 * np.log(latents[..., 1].std(axis=1)),
                       latents[..., 3].max(axis=1)], axis=-1)
  np.testing.assert_allclose(estimate, expected, atol=1e-4)
  n = MULTI_NUM_OBS
  _assert_within_standard_errors(estimate[:, :2], MULTI_THETA[:, :2],
                                 [1.0 / np.sqrt(n), 3.0 / np.sqrt(2 * n)])
  np.testing.assert_allclose(estimate[:, 2], MULTI_THETA[:, 2], atol=1e-3)


# --- Lotka-Volterra. ---

def test_lotka_volterra_solver_matches_scipy():
  low, high = math.log(0.5), math.log(2.0)
  corners = np.array(list(itertools.product([low, high], repeat=4)))
  inside = np.random.default_rng(0).uniform(low, high, (4, 4))
  theta = np.concatenate([corners, inside])
  solution = solve_log_populations(theta)
  assert solution.shape == (len(theta), 2, 10)
  for log_populations, (alpha, beta, gamma, delta) in zip(solution, np.exp(theta)):
    reference = integrate.solve_ivp(
        lambda t, z: [alpha * z[0] - beta * z[0] * z[1], delta * z[0] * z[1] - gamma * z[1]],
        (0.0, 10.0), [1.0, 0.5], t_eval=np.arange(1.0, 11.0), rtol=1e-8, atol=1e-12)
    assert reference.success
    np.testing.assert_allclose(log_populations, np.log(reference.y), atol=1e-3)


def test_lotka_volterra_replicates_are_noisy_copies_of_the_trajectory():
  simulator = get_simulator("lotka_volterra")
  theta = np.array([[0.0, 0.0, 0.0, 0.0], [-0.5, 0.6, 0.2, -0.3]], np.float32)
  observations = _simulate(simulator, theta, 2_000)
  # Prey at t = 1..10, then predators.
  trajectory = solve_log_populations(theta.astype(np.float64)).reshape(2, 1, 20)
  noise = (observations - trajectory).reshape(2, -1)
  n = noise.shape[1]
  _assert_within_standard_errors(noise.mean(axis=1), 0.0, 0.1 / np.sqrt(n))
  _assert_within_standard_errors(noise.std(axis=1), 0.1, 0.1 / np.sqrt(2 * n))


# --- linear_gaussian_<d>: the scaling benchmark's exact posterior. ---

def test_linear_gaussian_posterior_is_the_normalised_likelihood_times_prior():
  """Against an independent route: the posterior as the Gaussian whose log-density is
  log-likelihood + log-prior (the Hessian gives the precision, the gradient's root the mean)."""
  simulator = get_simulator("linear_gaussian_5")
  theta = _prior_draws(simulator, batch=2)
  observations = simulator.simulate(theta, 50, _seed(3))
  mean = simulator.posterior_mean(observations, _seed(0)).numpy().astype(np.float64)
  std = simulator.posterior_std(observations).numpy()
  point = tf.Variable(tf.constant(mean[:, np.newaxis], tf.float64))          # [2, 1, 5]
  with tf.GradientTape() as outer:
    with tf.GradientTape() as inner:
      log_posterior = (simulator.log_likelihood(point, observations)
                       - 0.5 * tf.reduce_sum(tf.square(point), axis=-1))
    gradient = inner.gradient(log_posterior, point)[:, 0]                    # [2, 5]
  hessian = outer.batch_jacobian(gradient, point)[:, :, 0]                   # [2, 5, 5]
  covariance = np.linalg.inv(-hessian.numpy())
  # The mean is the mode: the Newton step from it vanishes (to float32 rounding of the mean).
  newton_step = np.einsum("bij,bj->bi", covariance, gradient.numpy())
  np.testing.assert_allclose(newton_step, 0.0, atol=1e-6)
  np.testing.assert_allclose(std, np.sqrt(np.diagonal(covariance, axis1=1, axis2=2)), rtol=1e-5)
  # Neighbouring parameters are confounded: a correlated posterior.
  correlation = covariance[0, 0, 1] / np.sqrt(covariance[0, 0, 0] * covariance[0, 1, 1])
  assert correlation < -0.3


def test_linear_gaussian_posterior_covers_the_truth():
  """Coverage of the exact posterior's 68% intervals over prior draws is 0.68 (3 SE)."""
  simulator = get_simulator("linear_gaussian_10")
  theta, observations = simulator.sample_problems(400, 20, _seed(8))
  mean = simulator.posterior_mean(observations, _seed(0)).numpy()
  std = simulator.posterior_std(observations).numpy()
  covered = np.mean(np.abs(theta.numpy() - mean) <= 0.9945 * std)
  assert abs(covered - 0.68) < 3 * math.sqrt(0.68 * 0.32 / 4000)
