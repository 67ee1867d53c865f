"""The map between raw parameters and the proposals' standardised space
(`alfi_tf.model.parameter_space`), and the machine's answers through it."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf.config import MachineConfig
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.model.normalization import Standardizer
from alfi_tf.model.parameter_space import ParameterSpace, parameter_bijector
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
