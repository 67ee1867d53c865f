"""The map between raw parameters and the proposals' standardised space
(`alfi_tf.model.parameter_space`), and the machine's answers through it."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf.config import MachineConfig
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.model.normalization import Standardizer
from alfi_tf.model.parameter_space import (ParameterSpace, box_restricted_moments,
                                           parameter_bijector)
from alfi_tf.model.proposals import FAMILIES, get_proposal
from alfi_tf.simulators import get_simulator
from alfi_tf.simulators.base import Simulator, box_prior

tfb, tfd = tfp.bijectors, tfp.distributions
LOW, HIGH = np.array([0.0, -1.0], np.float32), np.array([math.pi / 2, 1.0], np.float32)


def _standardizer(mean, std) -> Standardizer:
  standardizer = Standardizer(len(mean))
  standardizer.mean.assign(mean)
  standardizer.std.assign(std)
  return standardizer


def _box_space(mean=(0.5, -0.2), std=(2.0, 1.5)) -> ParameterSpace:
  return ParameterSpace(_standardizer(mean, std), tfb.Sigmoid(low=LOW, high=HIGH),
                        (tf.constant(LOW), tf.constant(HIGH)))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_without_a_bijector_the_moments_undo_the_standardisation(name):
  family = get_proposal(name, 2, initial_scale=0.5)
  space = ParameterSpace(_standardizer([10.0, 0.0], [2.0, 3.0]), None, None)
  psi = family.initial_psi(tf.constant([[1.0, -2.0]]))
  mean, std = space.moments(family, psi, tf.constant([1.0, 2.0]))
  np.testing.assert_allclose(mean.numpy(), [[12.0, -6.0]], rtol=1e-6)
  np.testing.assert_allclose(std.numpy(), [[1.0, 3.0]] if family.has_density else [[0.0, 0.0]],
                             rtol=1e-5)


def test_the_box_space_round_trips_and_stays_inside_the_box():
  space = _box_space()
  z = tf.random.stateless_normal([1000, 2], seed=[1, 2]) * 5.0
  theta = space.inverse(z)
  assert np.all((theta.numpy() >= LOW) & (theta.numpy() <= HIGH))
  inside = tf.abs(z) < 3.0   # where float32 resolves the round trip
  np.testing.assert_allclose(tf.boolean_mask(space.forward(theta), inside),
                             tf.boolean_mask(z, inside), atol=2e-3)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(low=st.floats(-1e3, 1e3), width=st.floats(1e-2, 1e3), mean=st.floats(-3.0, 3.0),
       std=st.floats(0.2, 5.0), z=st.floats(-3.0, 3.0))
def test_any_box_round_trips_inside_it(low, width, mean, std, z):
  """Whatever the box and the statistics of `u`, `z` maps into the box and back."""
  bounds = np.float32([low]), np.float32([low + width])
  space = ParameterSpace(_standardizer([mean], [std]), tfb.Sigmoid(low=bounds[0], high=bounds[1]),
                         tuple(tf.constant(b) for b in bounds))
  theta = space.inverse(tf.constant([[z]]))
  assert bounds[0] <= theta.numpy()[0, 0] <= bounds[1]
  # float32 resolves theta to eps (|low| + width); dz / dtheta = 1 / (width s (1 - s) std) at
  # s = sigmoid(u): z comes back to that precision (a few eps, for the sums on the way).
  s = 1 / (1 + math.exp(-(mean + std * z)))
  tolerance = 8 * 6e-8 * (abs(low) + width) / (width * s * (1 - s) * std) + 1e-5
  np.testing.assert_allclose(space.forward(theta).numpy()[0, 0], z, atol=tolerance)


def test_the_box_edges_map_to_finite_values():
  space = _box_space()
  edges = tf.constant([LOW, HIGH])
  assert np.all(np.isfinite(space.forward(edges).numpy()))
  assert np.all(np.isfinite(space.forward_log_det_jacobian(edges).numpy()))


def test_the_log_det_jacobian_is_autodiffs_and_minus_infinity_outside_the_box():
  space = _box_space()
  theta = tf.constant([[0.3, 0.1], [1.5, -0.9], [1.0, 0.95]])
  with tf.GradientTape() as tape:
    tape.watch(theta)
    z = space.forward(theta)
  # Elementwise: the Jacobian is diagonal, and its diagonal is the gradient of the sum.
  expected = tf.reduce_sum(tf.math.log(tf.abs(tape.gradient(z, theta))), axis=-1)
  np.testing.assert_allclose(space.forward_log_det_jacobian(theta), expected, rtol=1e-4)
  outside = space.forward_log_det_jacobian(tf.constant([[1.6, 0.0], [0.5, -1.5]]))
  assert np.all(np.isneginf(outside.numpy()))


def test_the_moments_are_the_push_forwards_and_batch_independent():
  """Under `exp`, a Gaussian `u ~ N(m, s^2)` pushes forward to a log-normal of known moments."""
  space = ParameterSpace(_standardizer([0.2, -1.0], [0.5, 1.0]), tfb.Exp(), None)
  family = get_proposal("diagonal_gaussian", 2, initial_scale=0.6)
  psi = family.initial_psi(tf.constant([[0.4, 0.5], [-1.0, 0.0]]))
  scale = tf.constant([1.0, 0.5])
  mean, std = space.moments(family, psi, scale)
  m = np.array([0.2, -1.0]) + np.array([0.5, 1.0]) * np.array([[0.4, 0.5], [-1.0, 0.0]])
  s = np.array([0.5, 1.0]) * 0.6 * scale.numpy()
  exact_mean = np.exp(m + s ** 2 / 2)
  np.testing.assert_allclose(mean.numpy(), exact_mean, rtol=1e-5)
  np.testing.assert_allclose(std.numpy(), np.sqrt(np.expm1(s ** 2)) * exact_mean, rtol=1e-4)
  # A data set's answer does not depend on the rest of its batch or on a time axis.
  alone, _ = space.moments(family, psi[1:], scale)
  np.testing.assert_array_equal(alone.numpy(), mean.numpy()[1:])
  over_time, _ = space.moments(family, tf.stack([psi, psi], axis=1), scale)
  np.testing.assert_array_equal(over_time.numpy()[:, 1], mean.numpy())


def test_a_mixtures_moments_match_its_draws():
  space = _box_space()
  family = get_proposal("gaussian_mixture", 2, initial_scale=1.5, mixture_components=3)
  psi = family.initial_psi(tf.constant([[0.5, -0.5]]))
  scale = tf.constant([0.7, 1.3])
  mean, std = space.moments(family, psi, scale)
  draws = family.sample(psi, 200_000, tf.constant([1, 2]))
  centre = family.mean(psi)[:, tf.newaxis]
  theta = space.inverse(centre + scale * (draws - centre)).numpy()[0]
  standard_error = theta.std(axis=0) / math.sqrt(len(theta))
  np.testing.assert_array_less(np.abs(theta.mean(axis=0) - mean.numpy()[0]), 4 * standard_error)
  np.testing.assert_allclose(std.numpy()[0], theta.std(axis=0), rtol=0.01)


def _restricted(weights, means, stds, low, high):
  mean, std = box_restricted_moments(tf.constant(weights, tf.float32),
                                     tf.constant(means, tf.float32), tf.constant(stds, tf.float32),
                                     tf.constant(low, tf.float32), tf.constant(high, tf.float32))
  return mean.numpy(), std.numpy()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.floats(-5.0, 5.0), st.floats(0.01, 10.0), st.floats(-3.0, 3.0), st.floats(0.05, 6.0))
def test_a_normal_restricted_to_a_box_is_the_truncated_normal(centre, scale, low, width):
  """Within 20 standard deviations of the box (scipy's truncnorm is exact there), and always
  inside the box."""
  high = low + width
  mean, std = _restricted([[1.0]], [[[centre]]], [[[scale]]], [low], [high])
  alpha, beta = (low - centre) / scale, (high - centre) / scale
  assert low <= mean[0, 0] <= high
  if max(alpha, -beta) < 20:
    exact = stats.truncnorm(alpha, beta, loc=centre, scale=scale)
    np.testing.assert_allclose(mean[0, 0], exact.mean(), rtol=1e-5, atol=1e-6 * width)
    np.testing.assert_allclose(std[0, 0], exact.std(), rtol=1e-4, atol=1e-6 * width)


def test_a_normal_far_outside_the_box_becomes_a_narrow_answer_at_its_edge():
  """5,000 standard deviations below the box: just inside its lower edge (mean and std about
  `low + s / |alpha|` and `s / |alpha|`), where a naive ratio of normal masses is 0 / 0."""
  mean, std = _restricted([[1.0], [1.0]], [[[-100.0]], [[300.0]]], [[[0.02]], [[0.1]]],
                          [0.2], [7.0])
  np.testing.assert_allclose(mean[:, 0], [0.2 + 0.02 / (100.2 / 0.02), 7.0 - 0.1 / 2930.0],
                             rtol=1e-6)
  np.testing.assert_allclose(std[:, 0], [0.02 / (100.2 / 0.02), 0.1 / 2930.0], rtol=1e-3)


@pytest.mark.parametrize("distance", [19.0, 21.0, 80.0, 1e4])
def test_far_from_the_box_the_restriction_keeps_its_digits(distance):
  """On either side of the far-tail switch: one-sided, the restriction's shift into the box and
  its std are `s / x (1 - 2 u + 10 u^2)` and `s / x (1 - 3 u + 20.5 u^2)`, `u = 1 / x^2`, to
  O(u^3) (x = `distance`, Mills' series); in a box far narrower than `s / x` the density is
  nearly exponential, whose moments are closed forms."""
  x, s, u = distance, 0.5, 1.0 / distance ** 2
  mean, std = _restricted([[1.0], [1.0]], [[[2.0 - x * s]], [[3.0 + x * s]]], [[[s]], [[s]]],
                          [2.0], [3.0])
  shift = s / x * (1 - 2 * u + 10 * u ** 2)
  np.testing.assert_allclose(mean[:, 0], [2.0 + shift, 3.0 - shift], rtol=1e-6)
  np.testing.assert_allclose(std[:, 0], s / x * (1 - 3 * u + 20.5 * u ** 2), rtol=2e-5)
  width = 0.1 / x                                 # std units: rate x, so x * width = 0.1
  mean, std = _restricted([[1.0]], [[[-x * s]]], [[[s]]], [0.0], [width * s])
  rate = x + width / 2   # exp(-x t - t^2 / 2) on [0, width], nearly exp(-(x + width / 2) t)
  exact_variance = 1 / rate ** 2 - width ** 2 / (4 * np.sinh(rate * width / 2) ** 2)
  np.testing.assert_allclose(std[0, 0], s * np.sqrt(exact_variance), rtol=1e-4)


def test_unbounded_sides_and_points_restrict_as_they_should():
  mean, std = _restricted([[1.0, 0.0]] * 3, [[[0.5], [0.0]], [[-4.0], [0.0]], [[9.0], [0.0]]],
                          [[[2.0], [1.0]], [[0.0], [1.0]], [[0.0], [1.0]]], [-np.inf], [1.0])
  # One side open: the half-normal side of a normal centred 0.25 s below the edge...
  exact = stats.truncnorm(-np.inf, 0.25, loc=0.5, scale=2.0)
  np.testing.assert_allclose([mean[0, 0], std[0, 0]], [exact.mean(), exact.std()], rtol=1e-5)
  # ... and a point (std 0) is clipped into the box, or kept where it is inside.
  np.testing.assert_allclose(mean[1:, 0], [-4.0, 1.0])
  np.testing.assert_array_equal(std[1:, 0], [0.0, 0.0])


def test_a_mixture_restricted_to_a_box_matches_its_draws_inside_the_box():
  """Components are reweighted by their mass in the whole box (the product over parameters), not
  parameter by parameter: a component outside the box in one parameter loses its weight in the
  other parameter's marginal too."""
  weights = np.array([[0.3, 0.7]], np.float32)
  means = np.array([[[0.1, 0.5], [1.2, -0.6]]], np.float32)
  stds = np.array([[[0.4, 0.3], [0.5, 0.2]]], np.float32)
  low, high = np.array([0.0, -0.5], np.float32), np.array([1.0, 1.0], np.float32)
  mean, std = _restricted(weights, means, stds, low, high)
  rng = np.random.default_rng(0)
  component = rng.random(2_000_000) < weights[0, 1]
  draws = means[0][component.astype(int)] + stds[0][component.astype(int)] * rng.standard_normal(
      (len(component), 2))
  inside = draws[np.all((draws >= low) & (draws <= high), axis=1)]
  standard_error = inside.std(axis=0) / math.sqrt(len(inside))
  np.testing.assert_array_less(np.abs(inside.mean(axis=0) - mean[0]), 4 * standard_error)
  np.testing.assert_allclose(std[0], inside.std(axis=0), rtol=5e-3)


def test_without_a_bijector_the_answer_is_restricted_to_the_box_and_the_proposal_mean_is_not():
  """A Poisson problem at the prior's lower edge: the machine's proposal may sit below the box
  (its best fit, simulated at the clipped samples); the answer is its part inside the box."""
  space = ParameterSpace(_standardizer([3.6], [2.0]), None,
                         (tf.constant([0.2]), tf.constant([7.0])))
  family = get_proposal("diagonal_gaussian", 1, initial_scale=0.02)
  psi = family.initial_psi(tf.constant([[(0.11 - 3.6) / 2.0], [(3.0 - 3.6) / 2.0]]))
  mean, std = space.moments(family, psi, tf.constant([1.0]))
  exact = stats.truncnorm((0.2 - 0.11) / 0.04, np.inf, loc=0.11, scale=0.04)
  np.testing.assert_allclose(mean.numpy()[:, 0], [exact.mean(), 3.0], rtol=1e-5)
  np.testing.assert_allclose(std.numpy()[:, 0], [exact.std(), 0.04], rtol=1e-4)
  np.testing.assert_allclose(space.proposal_mean(family, psi).numpy()[:, 0], [0.11, 3.0],
                             rtol=1e-5)


@pytest.fixture(name="machine", scope="module")
def _machine():
  simulator = get_simulator("linear_regression")
  machine = InferenceMachine(simulator, MachineConfig(
      simulator="linear_regression", unconstrained_parameters=True, num_steps=2, num_samples=4,
      num_simulated_obs=5, encoder_hidden=8, encoder_out=4, aggregator_hidden=8,
      aggregator_out=4, updater_hidden=8, lstm_units=4))
  problems = simulator.sample_problems(64, 20, seed=tf.constant([3, 4]))
  machine.adapt(problems[0].numpy(), problems[1].numpy())
  machine.set_std_scales(np.array([[0.5, 2.0, 1.0, 1.5]] * 2))
  return machine, problems


def test_the_machine_answers_with_the_moments_of_the_distribution_it_draws_from(machine):
  machine, (theta, observations) = machine
  outputs = machine.infer(observations[:3], seed=tf.constant([5, 6]))
  draws = machine.sample_final_proposal(outputs["answer_psi"], 4000, tf.constant([7, 8]), 2)
  standard_error = outputs["std"].numpy() / math.sqrt(draws.shape[1])
  np.testing.assert_array_less(np.abs(draws.numpy().mean(axis=1) - outputs["mean"].numpy()),
                               4 * standard_error + 1e-6)
  np.testing.assert_allclose(draws.numpy().std(axis=1), outputs["std"].numpy(), rtol=0.1)
  assert outputs["trajectory_answer_psi"].shape == (3, 2, machine.proposal.psi_size)
  assert np.all(np.isfinite(machine.answer_log_prob(theta[:3], outputs["answer_psi"], 2)))


def test_the_machine_answer_density_integrates_to_one_along_a_line(machine):
  """`answer_log_prob` is a density in raw units: on a 1-D slice through a one-parameter
  simulator's answer it integrates to 1 (the Jacobian of the logit included)."""
  del machine
  simulator = get_simulator("poisson")
  one = InferenceMachine(simulator, MachineConfig(
      simulator="poisson", unconstrained_parameters=True, num_steps=1, num_samples=4,
      num_simulated_obs=5, encoder_hidden=8, encoder_out=4, aggregator_hidden=8,
      aggregator_out=4, updater_hidden=8, lstm_units=4, initial_scale=1.0))
  theta, observations = simulator.sample_problems(32, 10, seed=tf.constant([1, 2]))
  one.adapt(theta.numpy(), observations.numpy())
  psi = one.proposal.initial_psi(tf.constant([[0.3]]))
  low, high = (float(b[0]) for b in simulator.parameter_bounds)
  grid = np.linspace(low, high, 20001, dtype=np.float32)[1:-1, np.newaxis]
  density = np.exp(one.answer_log_prob(grid, tf.repeat(psi, len(grid), axis=0), 0).numpy())
  integral = np.sum((density[1:] + density[:-1]) / 2 * np.diff(grid[:, 0]))   # trapezoids
  np.testing.assert_allclose(integral, 1.0, atol=2e-3)


class _Triangular(Simulator):
  name = "triangular_bijector"

  def __init__(self):
    super().__init__(parameter_names=("a", "b"), observation_dim=1,
                     prior=box_prior([0.0, 0.0], [1.0, 1.0]))

  @property
  def parameter_bijector(self):
    return tfb.FillScaleTriL()

  def simulate(self, theta, num_obs, seed):
    return tf.zeros([tf.shape(theta)[0], num_obs, 1])


def test_a_bijector_that_mixes_parameters_is_refused_naming_the_simulator():
  with pytest.raises(ValueError, match="triangular_bijector.*parameter_bijector must map each "
                     "parameter on its own"):
    parameter_bijector(_Triangular())
  with pytest.raises(ValueError, match="parameter_bijector must map each parameter"):
    InferenceMachine(_Triangular(), MachineConfig(simulator="triangular_bijector",
                                                  unconstrained_parameters=True))
  # Without the setting the bijector is never used.
  InferenceMachine(_Triangular(), MachineConfig(simulator="triangular_bijector"))


def test_the_regression_bijector_is_asinh_of_the_slope_and_its_jacobian_autodiffs():
  bijector = get_simulator("linear_regression").parameter_bijector
  theta = tf.constant([[0.1, 0.7853982, 1.4711277, 0.5]])       # slopes 0.1003, 1, 10
  u = bijector.inverse(theta)
  np.testing.assert_allclose(u.numpy()[0, :3], np.arcsinh(np.tan(theta.numpy()[0, :3])), rtol=1e-5)
  assert u.numpy()[0, 3] == 0.5                                  # the offset as it is
  np.testing.assert_allclose(bijector.forward(u), theta, rtol=1e-6)
  u = tf.constant(u.numpy())   # a new tensor: TFP would answer forward(inverse(x)) from its cache
  with tf.GradientTape() as tape:
    tape.watch(u)
    forward = bijector.forward(u)
  expected = np.sum(np.log(np.abs(tape.gradient(forward, u).numpy())))
  np.testing.assert_allclose(bijector.forward_log_det_jacobian(u, event_ndims=1), [expected],
                             rtol=1e-5)


def test_a_bijector_onto_more_than_the_box_is_clipped_for_simulation(machine):
  """The regression's `gd` maps onto angles in (-pi/2, pi/2): a proposal below 0 is a negative
  angle, with a finite density, and is simulated at the box's edge."""
  machine, _ = machine
  below = tf.constant([[-0.2, 0.5, 0.5, 0.0]])
  z = machine.parameter_space.forward(below)
  np.testing.assert_allclose(machine.parameter_space.inverse(z), below, atol=1e-6)
  assert np.isfinite(machine.parameter_space.forward_log_det_jacobian(below).numpy()).all()
  simulated_at = machine.simulation_parameters(z[tf.newaxis])
  np.testing.assert_allclose(simulated_at.numpy()[0, 0], [0.0, 0.5, 0.5, 0.0], atol=1e-6)


class _HalfLine(_Triangular):
  """A bijector onto the positive half-line under a box prior that reaches below 0."""
  name = "half_line_bijector"

  def __init__(self):
    Simulator.__init__(self, parameter_names=("a", "b"), observation_dim=1,
                       prior=box_prior([-1.0, 0.0], [1.0, 1.0]))

  @property
  def parameter_bijector(self):
    return tfb.Exp()


def test_a_bijector_whose_image_misses_part_of_the_prior_is_refused():
  with pytest.raises(ValueError, match="half_line_bijector.*parameter_bijector \\(exp\\) must map "
                     "draws from the prior to finite values"):
    parameter_bijector(_HalfLine())
