"""Tests of the inference machine and what surrounds it: standardisation, configuration, input
validation and the batched `Inferrer`.

Machines are tiny (a few units per layer, M=4, N=8, T=3) so every test runs in seconds. An untrained
machine's output layer is zero, so it never moves `psi`; tests that need real updates give that layer
large random weights (`_activate`), which also makes the bound on `Delta psi` bite.
"""

from __future__ import annotations

import dataclasses
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from alfi_tf.model import losses
from alfi_tf.config import MAX_STEPS, MachineConfig, TrainConfig, default_test_horizon
from alfi_tf.model.inference import InferenceResult, Inferrer, extrapolations
from alfi_tf.model.machine import InferenceMachine, Trajectory, regression_step, tail_window
from alfi_tf.model.normalization import Standardizer, transform_observations
from alfi_tf.simulators import get_simulator
from alfi_tf.checks import check_observations

NUM_PROBLEMS = 5
NUM_OBS = 16
TINY = dict(num_steps=3, num_samples=4, num_simulated_obs=8, encoder_hidden=8, encoder_out=6,
            aggregator_hidden=8, aggregator_out=6, updater_hidden=8, lstm_units=5)


def _seed(a: int, b: int = 0) -> tf.Tensor:
  return tf.constant([a, b], tf.int32)


def _problems(name: str, num_problems: int = NUM_PROBLEMS, num_obs: int = NUM_OBS, seed: int = 1):
  theta, observations = get_simulator(name).sample_problems(num_problems, num_obs, _seed(seed))
  return theta.numpy(), observations.numpy()


def _machine(name: str = "poisson", **overrides) -> InferenceMachine:
  """A tiny machine with deterministic weights, adapted to a few problems."""
  keras.utils.set_random_seed(0)
  simulator = get_simulator(name)
  machine = InferenceMachine(simulator, MachineConfig(simulator=name, **{**TINY, **overrides}))
  machine.adapt(*_problems(name, num_problems=32, seed=100))
  return machine


def _activate(machine: InferenceMachine, scale: float = 0.5, seed: int = 0) -> None:
  """Gives the (zero-initialised) output layer random weights (large ones make steps hit the bound)."""
  rng = np.random.default_rng(seed)
  layer = machine.updater.output_net.layers[-1]
  layer.kernel.assign(scale * rng.normal(size=layer.kernel.shape).astype(np.float32))
  layer.bias.assign(scale * rng.normal(size=layer.bias.shape).astype(np.float32))


def _steps(trajectory: Trajectory) -> np.ndarray:
  """`|psi_t - psi_{t-1}|` for t = 1..T: `[batch, T, 2d]`."""
  psi = np.concatenate([trajectory.initial_psi.numpy()[:, np.newaxis], trajectory.psi.numpy()], 1)
  return np.abs(np.diff(psi, axis=1))


# --- Standardisation. ---

def test_standardizer_statistics_and_round_trip():
  rng = np.random.default_rng(0)
  data = rng.normal([3.0, -20.0, 0.0], [0.5, 4.0, 1e-3], size=(10, 7, 3))
  standardizer = Standardizer(3, name="s")
  standardizer.adapt_to(data)
  flat = data.reshape(-1, 3)
  np.testing.assert_allclose(standardizer.mean.numpy(), flat.mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(standardizer.std.numpy(), flat.std(axis=0), rtol=1e-6)
  forward = standardizer.forward(tf.constant(data, tf.float32))
  flat_forward = forward.numpy().reshape(-1, 3)
  np.testing.assert_allclose(flat_forward.mean(axis=0), 0.0, atol=1e-4)
  np.testing.assert_allclose(flat_forward.std(axis=0), 1.0, rtol=1e-4)
  np.testing.assert_array_equal(standardizer(tf.constant(data, tf.float32)).numpy(),
                                forward.numpy())
  np.testing.assert_allclose(standardizer.inverse(forward).numpy(), data, rtol=1e-5, atol=1e-5)


def test_standardizer_constant_feature_gets_unit_std():
  data = np.stack([np.full(6, 4.0), np.arange(6.0)], axis=-1)
  standardizer = Standardizer(2, name="s")
  standardizer.adapt_to(data)
  np.testing.assert_allclose(standardizer.mean.numpy(), [4.0, 2.5])
  np.testing.assert_allclose(standardizer.std.numpy(), [1.0, np.std(np.arange(6.0))], rtol=1e-6)
  np.testing.assert_array_equal(standardizer.forward(tf.constant(data, tf.float32)).numpy()[:, 0],
                                0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_standardizer_rejects_non_finite_data(bad):
  data = np.ones((4, 2))
  data[2, 1] = bad
  with pytest.raises(ValueError, match="non-finite"):
    Standardizer(2, name="s").adapt_to(data)


OBSERVATIONS = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0, 1e4]], np.float32)


@pytest.mark.parametrize("kind, expected", [
    ("none", OBSERVATIONS),
    ("log1p", np.log1p(np.maximum(OBSERVATIONS, 0.0))),   # negative counts are clamped to 0
    ("asinh", np.arcsinh(OBSERVATIONS)),
])
def test_transform_observations(kind, expected):
  actual = transform_observations(tf.constant(OBSERVATIONS), kind).numpy()
  np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_transform_observations_unknown_kind_raises():
  with pytest.raises(ValueError, match="observation_transform must be one of"):
    transform_observations(tf.constant(OBSERVATIONS), "sqrt")


# --- Configuration. ---

@pytest.mark.parametrize("config_class, field, value", [
    (MachineConfig, "num_steps", 0),
    (MachineConfig, "num_samples", 1),
    (MachineConfig, "num_samples", 0),
    (MachineConfig, "num_simulated_obs", 0),
    (MachineConfig, "encoder_hidden", -1),
    (MachineConfig, "encoder_out", 0),
    (MachineConfig, "aggregator_out", 0),
    (MachineConfig, "lstm_units", 0),
    (MachineConfig, "bound", 0.0),
    (MachineConfig, "initial_scale", -0.1),
    (MachineConfig, "bound_type", "sigmoid"),
    (MachineConfig, "observation_transform", "log"),
    (MachineConfig, "tail_averaging", -0.5),
    (MachineConfig, "tail_averaging", 1.5),
    (MachineConfig, "start", "center"),
    (MachineConfig, "tail_averaging", float("nan")),
    (TrainConfig, "num_problems", 0),
    (TrainConfig, "num_obs", -5),
    (TrainConfig, "epochs", 0),
    (TrainConfig, "batch_size", 0),
    (TrainConfig, "learning_rate", 0.0),
    (TrainConfig, "validate_every", 0),
    (TrainConfig, "final_learning_rate_fraction", 0.0),
    (TrainConfig, "final_learning_rate_fraction", 1.5),
    (TrainConfig, "grad_clip_norm", -1.0),
    (TrainConfig, "loss", "huber"),
    (TrainConfig, "time_weights", "linear"),
])
def test_config_validation_names_the_field(config_class, field, value):
  with pytest.raises(ValueError, match=field):
    config_class(**{field: value})


def test_default_configs_are_valid():
  assert MachineConfig().num_steps == 15 and TrainConfig().loss == "nll"
  TrainConfig(grad_clip_norm=0.0, final_learning_rate_fraction=1.0)   # the allowed edges


# --- The machine. ---

@pytest.mark.parametrize("name", ["poisson", "weinberg"])
def test_trajectory_shapes(name):
  machine = _machine(name)
  _, observations = _problems(name)
  trajectory = machine(observations, seed=_seed(3))
  d = machine.simulator.parameter_dim
  assert isinstance(trajectory, Trajectory)
  assert trajectory.initial_psi.shape == (NUM_PROBLEMS, 2 * d)
  assert trajectory.psi.shape == (NUM_PROBLEMS, 3, 2 * d)
  assert np.all(np.isfinite(trajectory.psi.numpy()))


def test_num_steps_override():
  machine = _machine()
  _activate(machine)
  _, observations = _problems("poisson")
  trajectory = machine(observations, seed=_seed(3), num_steps=7)
  assert trajectory.psi.shape == (NUM_PROBLEMS, 7, 2)
  # All seven steps are taken: each moves psi.
  assert np.all(_steps(trajectory).max(axis=-1) > 0)


def test_trajectory_is_a_function_of_the_seed():
  machine = _machine()
  _activate(machine)
  _, observations = _problems("poisson")
  start = np.full((NUM_PROBLEMS, 1), 2.0, np.float32)
  first = machine(observations, seed=_seed(3), initial_mean=start).psi.numpy()
  np.testing.assert_array_equal(
      first, machine(observations, seed=_seed(3), initial_mean=start).psi.numpy())
  # With the start fixed, only the proposals and simulations differ between the seeds.
  assert not np.allclose(
      first, machine(observations, seed=_seed(4), initial_mean=start).psi.numpy())


@pytest.mark.parametrize("bound_type", ["tanh", "clip"])
@pytest.mark.parametrize("name", ["poisson", "weinberg"])
def test_steps_are_bounded(name, bound_type):
  bound = 0.2
  machine = _machine(name, bound=bound, bound_type=bound_type)
  _activate(machine, scale=20.0)
  _, observations = _problems(name)
  steps = _steps(machine(observations, seed=_seed(3)))
  assert np.all(steps <= bound * (1.0 + 1e-5)), steps.max()
  # The bound is active: the raw outputs are far beyond it.
  assert steps.max() > 0.9 * bound
  if bound_type == "clip":
    assert np.any(np.isclose(steps, bound, rtol=1e-5))


@pytest.mark.parametrize("proposal", ["diagonal_gaussian", "gaussian_mixture"])
def test_relative_updates_measure_the_step_in_the_proposals_units(proposal):
  machines = [_machine("weinberg", proposal=proposal, relative_updates=relative)
              for relative in (False, True)]
  for machine in machines:                  # the same weights: only the units of the step differ
    _activate(machine, scale=20.0)
  _, observations = _problems("weinberg")
  state, loop_seed = machines[0].begin(observations, _seed(3))
  theta = machines[0].propose(state, machines[0].step_seeds(loop_seed, 0)[0])
  simulated = machines[0]._simulate(theta, _seed(4), machines[0].config.num_simulated_obs)
  absolute, relative = (machine.update(state, theta, simulated).psi - state.psi
                        for machine in machines)
  units = machines[0].proposal.update_units(state.psi)
  np.testing.assert_allclose(relative.numpy(), (units * absolute).numpy(), rtol=1e-5, atol=1e-7)
  assert np.abs(absolute.numpy()).max() > 0.1, "the step is not trivially zero"


def test_untrained_machine_leaves_psi_unchanged():
  machine = _machine()
  _, observations = _problems("poisson")
  trajectory = machine(observations, seed=_seed(3))
  for t in range(3):
    np.testing.assert_array_equal(trajectory.psi.numpy()[:, t], trajectory.initial_psi.numpy())


def test_initial_psi_in_standardised_units():
  machine = _machine(initial_scale=0.3)
  _, observations = _problems("poisson")
  start = np.array([[0.5], [1.0], [2.0], [4.0], [6.5]], np.float32)
  initial_psi = machine(observations, seed=_seed(3), initial_mean=start).initial_psi.numpy()
  mean, std = machine.theta_standardizer.mean.numpy(), machine.theta_standardizer.std.numpy()
  np.testing.assert_allclose(initial_psi[:, :1], (start - mean) / std, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(initial_psi[:, 1:], math.log(0.3), rtol=1e-6)


def test_default_initial_mean_is_a_prior_draw():
  machine = _machine("weinberg")
  _, observations = _problems("weinberg")
  initial_psi = machine(observations, seed=_seed(3)).initial_psi
  raw_mean = machine.parameter_space.proposal_mean(machine.proposal, initial_psi).numpy()
  low, high = machine.simulator.parameter_bounds
  assert np.all((low - 1e-4 <= raw_mean) & (raw_mean <= high + 1e-4))
  np.testing.assert_allclose(machine.proposal.stddev(initial_psi).numpy(), 0.1, rtol=1e-6)


def test_to_raw_inverts_the_standardisation():
  machine = _machine("weinberg")
  mean, std = machine.theta_standardizer.mean.numpy(), machine.theta_standardizer.std.numpy()
  # Far inside the box (the answer is restricted to it: `test_parameter_space.py`).
  psi = np.array([[0.5, -1.0, math.log(0.05), -3.5], [0.0, 1.0, -2.3, -3.9]], np.float32)
  raw_mean, raw_std = machine.to_raw(tf.constant(psi))
  np.testing.assert_allclose(raw_mean.numpy(), psi[:, :2] * std + mean, rtol=1e-6)
  np.testing.assert_allclose(raw_std.numpy(), np.exp(psi[:, 2:]) * std, rtol=1e-6)
  # Works on trajectories too: `[batch, T, 2d] -> [batch, T, d]`.
  assert machine.to_raw(tf.constant(psi[:, np.newaxis].repeat(3, 1)))[0].shape == (2, 3, 2)


def test_tf_function_matches_eager():
  machine = _machine()
  _activate(machine)
  _, observations = _problems("poisson")
  observations = tf.constant(observations)
  eager = machine(observations, seed=_seed(3))
  graph = tf.function(lambda x, seed: machine(x, seed=seed))(observations, _seed(3))
  np.testing.assert_allclose(graph.initial_psi.numpy(), eager.initial_psi.numpy(), rtol=1e-6)
  np.testing.assert_allclose(graph.psi.numpy(), eager.psi.numpy(), rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_trainable_variable():
  machine = _machine()
  _activate(machine)
  theta, observations = _problems("poisson")
  theta = machine.theta_standardizer.forward(theta)
  with tf.GradientTape() as tape:
    trajectory = machine(observations, seed=_seed(3))
    loss = losses.weighted_loss(
        losses.step_losses(theta, trajectory.psi, "nll", machine.proposal), "exp")
  variables = machine.trainable_variables
  gradients = tape.gradient(loss, variables)
  assert len(variables) == 17
  for variable, gradient in zip(variables, gradients):
    assert gradient is not None, variable.path
    assert np.all(np.isfinite(gradient.numpy())), variable.path
  by_part = {}
  for variable, gradient in zip(variables, gradients):
    part = variable.path.split("/")[0]
    by_part[part] = by_part.get(part, 0.0) + float(tf.reduce_sum(tf.abs(gradient)))
  assert set(by_part) == {"set_encoder", "sample_aggregator", "updater"}
  assert all(total > 0 for total in by_part.values()), by_part
  # The statistics are weights, but not trainable ones.
  assert not any("standardizer" in v.path for v in variables)


def test_simulator_mismatch_raises():
  with pytest.raises(ValueError, match="config.simulator is 'weinberg'"):
    InferenceMachine(get_simulator("poisson"), MachineConfig(simulator="weinberg"))


@pytest.mark.parametrize("transform", ["none", "log1p"])
def test_adapt_sets_statistics_from_the_data(transform):
  keras.utils.set_random_seed(0)
  machine = InferenceMachine(get_simulator("poisson"),
                             MachineConfig(simulator="poisson", observation_transform=transform,
                                           **TINY))
  theta, observations = _problems("poisson", num_problems=20)
  machine.adapt(theta, observations)
  np.testing.assert_allclose(machine.theta_standardizer.mean.numpy(), theta.mean(0), rtol=1e-5)
  np.testing.assert_allclose(machine.theta_standardizer.std.numpy(), theta.std(0), rtol=1e-5)
  x = observations.astype(np.float64).reshape(-1, 1)
  x = np.log1p(x) if transform == "log1p" else x
  np.testing.assert_allclose(machine.observation_standardizer.mean.numpy(), x.mean(0), rtol=1e-5)
  np.testing.assert_allclose(machine.observation_standardizer.std.numpy(), x.std(0), rtol=1e-5)
  # The machine's input is then standardised.
  encoded = machine.standardize_observations(tf.constant(observations)).numpy().reshape(-1)
  assert abs(encoded.mean()) < 1e-4 and abs(encoded.std() - 1.0) < 1e-4


def test_numpy_simulator_inside_the_unrolled_graph():
  machine = _machine("lotka_volterra", num_steps=2, num_samples=3, num_simulated_obs=4)
  _activate(machine)
  _, observations = _problems("lotka_volterra", num_problems=3, num_obs=5)
  run = tf.function(lambda x, seed: machine(x, seed=seed))
  trajectory = run(tf.constant(observations), _seed(3))
  assert trajectory.psi.shape == (3, 2, 8)
  assert np.all(np.isfinite(trajectory.psi.numpy()))
  np.testing.assert_array_equal(trajectory.psi.numpy(),
                                run(tf.constant(observations), _seed(3)).psi.numpy())
  assert np.all(_steps(trajectory) > 0)


# --- Input validation. ---

def _with(value, index=(1, 2, 0)):
  array = np.zeros((2, 4, 1), np.float32)
  array[index] = value
  return array


@pytest.mark.parametrize("observations, message", [
    (np.zeros((4, 1)), r"shape \[num_problems, num_obs, 1\], got shape \(4, 1\)"),
    (np.zeros((2, 4, 1, 1)), r"got shape \(2, 4, 1, 1\)"),
    (np.zeros((2, 4, 3)), r"1 values per observation \(last axis\), got shape \(2, 4, 3\)"),
    (np.zeros((0, 4, 1)), r"empty: shape \(0, 4, 1\)"),
    (np.zeros((2, 0, 1)), r"empty: shape \(2, 0, 1\)"),
    (_with(np.nan), r"1 NaN/inf value\(s\), the first at \[1, 2, 0\] = nan"),
    (_with(np.inf, (0, 3, 0)), r"the first at \[0, 3, 0\] = inf"),
    (np.array([[["a"]]]), "must be numeric, got dtype <U1"),
    (np.array([[[None]]]), "must be numeric, got dtype object"),
    ([[[1.0], [2.0]], [[3.0]]], "must be a regular numeric array .* got a ragged list"),
], ids=["rank2", "rank4", "d_x", "no_problems", "no_observations", "nan", "inf", "str", "object",
        "ragged"])
def test_check_observations_rejects(observations, message):
  with pytest.raises(ValueError, match="^observations .*" + message):
    check_observations(observations, 1)


def test_check_observations_counts_non_finite_values():
  observations = _with(np.nan)
  observations[0, 0, 0] = -np.inf
  with pytest.raises(ValueError, match=r"2 NaN/inf value\(s\), the first at \[0, 0, 0\] = -inf"):
    check_observations(observations, 1, name="test set")


@pytest.mark.parametrize("observations", [
    np.arange(6, dtype=np.int64).reshape(1, 3, 2),
    np.arange(6, dtype=np.float64).reshape(1, 3, 2),
    [[[0, 1], [2, 3], [4, 5]]],
])
def test_check_observations_accepts_numeric_input(observations):
  checked = check_observations(observations, 2)
  assert checked.dtype == np.float32
  np.testing.assert_array_equal(checked, np.arange(6).reshape(1, 3, 2))


# --- The Inferrer. ---

@pytest.fixture(scope="module")
def inferrer():
  return Inferrer(_machine(), num_steps=4, batch_size=2)


def test_a_horizon_beyond_the_unrolling_limit_is_refused_before_tracing():
  with pytest.raises(ValueError, match=rf"num_steps must be at most {MAX_STEPS} "):
    Inferrer(_machine(), num_steps=MAX_STEPS + 1)


def test_a_horizon_past_the_default_test_horizon_is_warned_about(inferrer, caplog):
  """Some machines drift past their training horizon: a longer one is run, with a warning."""
  horizon = default_test_horizon(inferrer.machine.config)
  Inferrer(inferrer.machine, num_steps=horizon)
  assert "past its training horizon" not in caplog.text
  Inferrer(inferrer.machine, num_steps=horizon + 1)
  assert (f"num_steps={horizon + 1} runs the machine past its training horizon "
          f"T={inferrer.machine.config.num_steps} (and the default test horizon {horizon})"
          in caplog.text)


def test_observations_unlike_the_training_data_are_warned_about(inferrer, caplog):
  """A machine answers anything; an answer to data far outside its training range (a unit error,
  another experiment) is an extrapolation, and the user is told which data sets those are."""
  _, observations = _problems("poisson")
  assert inferrer(observations, seed=0).extrapolations == ((),) * len(observations)
  assert "far outside the observations" not in caplog.text
  result = inferrer(np.concatenate([observations, observations[:1] * 1e6]), seed=0)
  assert (f"1 of {len(observations) + 1} answer(s) are extrapolations, do not trust them (data "
          f"set {len(observations)}: observations far outside the training data (mean "
          "standardised observation [" in caplog.text)
  # The answer carries the reasons it was warned about.
  assert result.extrapolations[:-1] == ((),) * len(observations)
  assert [note[:45] for note in result.extrapolations[-1]] == [
      "observations far outside the training data (m"]


@pytest.mark.parametrize("restricted", [False, True])
def test_answers_centred_outside_the_priors_box_are_extrapolations(restricted):
  """The check reads where the machine's proposal is centred: the answer's own mean is restricted
  to the box, so it cannot tell (exports of before `proposal_mean`: the mean, unrestricted)."""
  centre = np.array([[1.0, 0.0], [7.3, 0.0], [7.5, 0.0], [1.0, -2.0]])
  bounds = (np.array([0.2, -1.0]), np.array([7.0, 1.0]))
  mean = np.clip(centre, *bounds) if restricted else centre
  result = InferenceResult(mean, np.ones_like(mean), mean[:, None], np.ones_like(mean[:, None]),
                           mean, proposal_mean=centre if restricted else None)
  set_means = np.array([[0.0], [0.0], [-11.0], [9.0]])
  # 7.3 is within 5% of the box's width of its edge: a settled answer may sit there.
  assert extrapolations(result, set_means, bounds, ["rate", "shift"]) == [
      [], [],
      ["observations far outside the training data (mean standardised observation [-11.0], "
       "beyond +-10)",
       "the machine's answer for rate is centred at 7.5, outside the prior's support [0.2, 7]"],
      ["the machine's answer for shift is centred at -2, outside the prior's support [-1, 1]"]]


@pytest.mark.parametrize("name, value", [("num_steps", bad) for bad in (-1, 0, 1.5, math.nan, "5", True)]
                         + [("batch_size", bad) for bad in (0, 2.0, None)])
def test_inferrer_refuses_a_horizon_or_batch_size_not_a_positive_integer(inferrer, name, value):
  with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got {value!r}"):
    Inferrer(inferrer.machine, **{name: value})


@pytest.mark.parametrize("seed", [2 ** 31, -2 ** 31 - 1, 1.5, True, "1", None])
def test_inferrer_refuses_a_seed_that_is_not_an_int32(inferrer, seed):
  _, observations = _problems("poisson")
  with pytest.raises(ValueError, match=r"seed must be an integer in \[-2147483648, \d+\] \(an "
                                       rf"int32 seed\), got {re.escape(repr(seed))}"):
    inferrer(observations, seed=seed)


def test_inferrer_shapes_and_determinism(inferrer):
  _, observations = _problems("poisson")
  result = inferrer(observations, seed=5)
  assert result.trajectory_mean.shape == result.trajectory_std.shape == (NUM_PROBLEMS, 4, 1)
  assert result.mean.shape == result.std.shape == result.initial_mean.shape == (NUM_PROBLEMS, 1)
  np.testing.assert_array_equal(result.mean, result.trajectory_mean[:, -1])
  np.testing.assert_array_equal(result.std, result.trajectory_std[:, -1])
  again = inferrer(observations, seed=5)
  for actual, expected in zip(again, result):
    np.testing.assert_array_equal(actual, expected)
  # Prior draws of the start: inside the prior's box, different for another seed.
  assert np.all((0.2 - 1e-5 <= result.initial_mean) & (result.initial_mean <= 7.0 + 1e-5))
  assert not np.allclose(inferrer(observations, seed=6).initial_mean, result.initial_mean)


def test_inferrer_respects_initial_mean(inferrer):
  _, observations = _problems("poisson")
  # Starts at least 6 sigma_0 inside the box, where the answer is not bent by its edges.
  start = np.array([[1.5], [2.0], [3.0], [4.5], [5.5]], np.float32)
  result = inferrer(observations, seed=5, initial_mean=start)
  np.testing.assert_allclose(result.initial_mean, start, rtol=1e-5)
  # Untrained: every step stays at the start, with sigma_0 = 0.1 standardised units.
  np.testing.assert_allclose(result.trajectory_mean, np.repeat(start[:, np.newaxis], 4, axis=1),
                             rtol=1e-5)
  np.testing.assert_allclose(
      result.trajectory_std, 0.1 * inferrer.machine.theta_standardizer.std.numpy() * np.ones((5, 4, 1)),
      rtol=1e-5)


@pytest.mark.parametrize("shape", [(5,), (4, 1), (5, 2)])
def test_inferrer_rejects_bad_initial_mean(inferrer, shape):
  _, observations = _problems("poisson")
  with pytest.raises(ValueError, match=r"initial_mean must have shape \(5, 1\)"):
    inferrer(observations, seed=5, initial_mean=np.zeros(shape))


def test_inferrer_validates_observations(inferrer):
  with pytest.raises(ValueError, match="observations must have 1 values per observation"):
    inferrer(np.zeros((2, 4, 3)), seed=5)


def test_inferrer_matches_the_machine_for_one_batch():
  machine = _machine()
  _activate(machine)
  _, observations = _problems("poisson")
  start = np.full((NUM_PROBLEMS, 1), 2.0, np.float32)
  result = Inferrer(machine, batch_size=NUM_PROBLEMS)(observations, seed=5, initial_mean=start)
  # One batch, index 0: fold_in([seed, 0], 0) split into the start's and the run's seeds.
  _, seed = tf.unstack(tf.random.experimental.stateless_split(
      tf.random.experimental.stateless_fold_in(tf.constant([5, 0], tf.int32), 0), 2))
  mean, std = machine.to_raw(machine(observations, seed=seed, initial_mean=start).psi)
  np.testing.assert_allclose(result.trajectory_mean, mean.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(result.trajectory_std, std.numpy(), rtol=1e-5, atol=1e-5)
  assert result.trajectory_mean.shape == (NUM_PROBLEMS, 3, 1)


def test_averaging_the_last_iterates_divides_their_noise_by_the_root_of_their_number():
  """Iterates that scatter independently about theta* (a settled machine's Monte-Carlo noise):
  the answer after step 15, which averages the last ceil(0.5 * 15) = 8 of them, has 1 / sqrt(8)
  of their error."""
  machine = _machine(tail_averaging=0.5)
  rng = np.random.default_rng(0)
  problems, steps, noise = 20000, 15, np.array([0.1, 2.0])      # psi = (mean, log std), [P = 2]
  theta = rng.uniform(-1.0, 1.0, size=(problems, 1, 2))
  psi = (theta + noise * rng.standard_normal((problems, steps, 2))).astype(np.float32)
  answers = machine.average_iterates(tf.constant(psi)).numpy()
  np.testing.assert_array_equal(answers[:, 0], psi[:, 0])
  # Relative standard error of an RMSE over 20,000 problems: about 1 / sqrt(2 * 20000) = 0.5%.
  rmse = np.sqrt(np.mean(np.square(answers[:, -1] - theta[:, 0]), axis=0))
  np.testing.assert_allclose(rmse, noise / np.sqrt(8), rtol=0.02)


def test_inference_starts_where_config_start_says_and_training_from_prior_draws():
  machine = _machine(start="prior_mean")
  _activate(machine)
  _, observations = _problems("poisson")
  center = machine.theta_standardizer.mean.numpy()
  result = Inferrer(machine, batch_size=2)(observations, seed=3)
  np.testing.assert_allclose(result.initial_mean, np.broadcast_to(center, (NUM_PROBLEMS, 1)),
                             rtol=1e-6)
  outputs = machine.infer(tf.constant(observations), _seed(3))
  np.testing.assert_allclose(outputs["initial_mean"], result.initial_mean, rtol=1e-6)
  # Given starts win; meta-training starts from prior draws, so the machine learns to arrive
  # from anywhere.
  start = np.full((NUM_PROBLEMS, 1), 2.0, np.float32)
  np.testing.assert_allclose(Inferrer(machine)(observations, seed=3, initial_mean=start)
                             .initial_mean, start)
  training_starts = machine.to_raw(machine(tf.constant(observations), seed=_seed(3),
                                           training=True).initial_psi)[0].numpy()
  assert np.ptp(training_starts) > 0.5
  drawn = _machine()
  assert np.ptp(Inferrer(drawn)(observations, seed=3).initial_mean) > 0.5


def test_the_tail_window_grows_with_the_step():
  assert tail_window(tf.range(1, 11), 0.5).numpy().tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
  # 0.3 * 10 is 3.0000000000000004 in floating point: still 3 steps, not 4.
  assert tail_window(tf.constant([1, 4, 10, 30]), 0.3).numpy().tolist() == [1, 2, 3, 9]
  assert tail_window(tf.constant([1, 7]), 0.0).numpy().tolist() == [1, 1]
  assert tail_window(tf.constant([1, 7]), 0.99).numpy().tolist() == [1, 7]
  assert tail_window(tf.constant([1, 7]), 1.0).numpy().tolist() == [1, 7]


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9])
def test_the_answer_averages_the_last_iterates(fraction):
  """`tail_averaging = f`: the answer after step t has the mean of the last max(1, ceil(f t))
  iterates as parameters; the iterates themselves (what the machine proposes from) do not
  change."""
  num_steps = 7
  last_only = _machine(num_steps=num_steps)
  _activate(last_only)
  averaged = InferenceMachine(last_only.simulator,
                              dataclasses.replace(last_only.config, tail_averaging=fraction))
  averaged.adapt(*_problems("poisson", num_problems=32, seed=100))
  averaged.set_weights(last_only.get_weights())
  _, observations = _problems("poisson")
  inputs = (tf.constant(observations), _seed(5))
  iterates, answers = last_only.infer(*inputs), averaged.infer(*inputs)
  psi = last_only(*inputs).psi.numpy()                                            # [K, T, P]
  widths = [max(1, math.ceil(round(fraction * t, 9))) for t in range(1, num_steps + 1)]
  expected = np.stack([psi[:, t + 1 - width:t + 1].mean(axis=1)
                       for t, width in enumerate(widths)], axis=1)
  np.testing.assert_allclose(averaged.average_iterates(tf.constant(psi)), expected, atol=1e-6)
  np.testing.assert_allclose(answers["answer_psi"], expected[:, -1], atol=1e-6)
  np.testing.assert_allclose(answers["psi"], psi[:, -1], atol=1e-6)
  np.testing.assert_allclose(iterates["answer_psi"], psi[:, -1], atol=1e-6)
  # The diagonal Gaussian's mean is linear in psi: the proposals' means average the iterates'.
  mean = last_only.parameter_space.proposal_mean(last_only.proposal, tf.constant(psi)).numpy()
  np.testing.assert_allclose(answers["proposal_mean"], mean[:, -widths[-1]:].mean(axis=1),
                             rtol=1e-5, atol=1e-5)
  assert np.abs(answers["mean"] - iterates["mean"]).max() > 1e-4
  assert averaged.average_iterates(tf.zeros([2, 0, psi.shape[2]])).shape == (2, 0, psi.shape[2])


# --- The Keras surface: compile / fit / save. ---

def _fit_dataset(name: str = "poisson", num_problems: int = 64, batch: int = 16) -> tf.data.Dataset:
  theta, observations = _problems(name, num_problems=num_problems, seed=200)
  seeds = tf.random.experimental.stateless_split(_seed(42), num_problems)
  return tf.data.Dataset.from_tensor_slices((theta, observations, seeds)).batch(batch)


def test_fit_reduces_the_meta_loss():
  machine = _machine()
  data = _fit_dataset()
  machine.compile(keras.optimizers.Adam(3e-3))
  before = machine.evaluate(data, verbose=0)
  history = machine.fit(data, epochs=8, verbose=0, shuffle=False)
  after = machine.evaluate(data, verbose=0)
  assert len(history.history["loss"]) == 8
  assert np.isfinite(after) and after < before - 0.1, (before, after)


def test_fit_minimises_the_trainers_meta_loss():
  """One `train_step` equals a hand-written Adam step on `losses.meta_loss`."""
  machine, reference = _machine(), _machine()
  theta, observations = _problems("poisson", num_problems=8, seed=201)
  seed = _seed(3)
  machine.compile(keras.optimizers.Adam(1e-2), loss="nll", time_weights="constant")
  logs = machine.train_step((tf.constant(theta), tf.constant(observations), seed))
  with tf.GradientTape() as tape:
    loss = losses.meta_loss(reference, tf.constant(theta), tf.constant(observations), seed,
                            "nll", "constant")
  optimizer = keras.optimizers.Adam(1e-2)
  optimizer.apply(tape.gradient(loss, reference.trainable_variables),
                  reference.trainable_variables)
  np.testing.assert_allclose(float(logs["loss"]), float(loss), rtol=1e-6)
  for ours, theirs in zip(machine.trainable_variables, reference.trainable_variables):
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)


def test_config_round_trip():
  machine = _machine("weinberg", bound=0.3)
  clone = InferenceMachine.from_config(machine.get_config())
  assert clone.config == machine.config and clone.simulator.name == "weinberg"
  assert [w.shape for w in clone.weights] == [w.shape for w in machine.weights]


def test_keras_file_round_trip_gives_identical_inference(tmp_path):
  machine = _machine()
  machine.compile(keras.optimizers.Adam(3e-3), time_weights="last")
  machine.fit(_fit_dataset(num_problems=32), epochs=1, verbose=0, shuffle=False)
  path = str(tmp_path / "machine.keras")
  machine.save(path)
  loaded = keras.saving.load_model(path)
  assert isinstance(loaded, InferenceMachine) and loaded.config == machine.config
  _, observations = _problems("poisson")
  expected = Inferrer(machine, num_steps=4)(observations, seed=7)
  actual = Inferrer(loaded, num_steps=4)(observations, seed=7)
  for field, value in expected._asdict().items():
    np.testing.assert_array_equal(getattr(actual, field), value, err_msg=field)
  # The optimizer and the meta-loss settings come back too: training can continue.
  assert loaded.get_compile_config()["time_weights"] == "last"
  assert int(loaded.optimizer.iterations) == int(machine.optimizer.iterations)


def test_observations_outside_the_transforms_domain_are_refused():
  """A log1p machine reads counts: negative values are refused, not silently clamped to 0."""
  machine = _machine(observation_transform="log1p")
  _, observations = _problems("poisson")
  observations[1, 3, 0] = -2.0
  with pytest.raises(ValueError, match=r"must be >= 0 for this machine \(it reads them through "
                                       r"log1p\); 1 value\(s\) are not, the first at \[1, 3, 0\] = -2"):
    Inferrer(machine, num_steps=2)(observations, seed=0)


def test_a_failed_simulation_is_left_out_of_the_update():
  """A simulated set with NaN/inf does not reach psi: whatever values it holds, the update is the
  same, and finite; all-finite sets update as the plain mean over the samples did."""
  machine = _machine()
  _activate(machine)
  _, observations = _problems("poisson")
  state, loop_seed = machine.begin(observations, _seed(4))
  proposal_seed, simulation_seed = machine.step_seeds(loop_seed, 0)
  theta = machine.propose(state, proposal_seed)
  parameters = tf.reshape(machine.simulation_parameters(theta), [-1, 1])
  simulated = machine.simulator.simulate(parameters, 8, simulation_seed).numpy().reshape(
      NUM_PROBLEMS, 4, 8, 1)                                      # [batch, M, N, d_x]
  updates = []
  for failure in (np.nan, np.inf):
    broken = simulated.copy()
    broken[1, 2, 5] = failure   # problem 1, sample 2: one failed set
    updates.append(machine.update(state, theta, tf.constant(broken)).psi.numpy())
  np.testing.assert_array_equal(updates[0], updates[1])
  assert np.all(np.isfinite(updates[0]))
  # Problems without a failed set are untouched by the mask.
  finite = machine.update(state, theta, tf.constant(simulated)).psi.numpy()
  np.testing.assert_array_equal(np.delete(updates[0], 1, axis=0), np.delete(finite, 1, axis=0))
  assert not np.allclose(updates[0][1], finite[1])
  # Every set failed: the step still leaves psi finite.
  nothing = machine.update(state, theta, tf.fill(simulated.shape, np.nan)).psi.numpy()
  assert np.all(np.isfinite(nothing))


def test_a_simulated_set_outside_the_transforms_domain_fails_like_nan():
  """Under log1p a negative simulated value is not clamped to 0: its set is left out of the update
  exactly as a NaN set is, and counted; negative meta-training observations are refused."""
  machine = _machine(observation_transform="log1p")
  _activate(machine)
  _, observations = _problems("poisson")
  state, _ = machine.begin(observations, _seed(4))
  theta = machine.propose(state, _seed(5))
  simulated = np.random.default_rng(0).poisson(3.0, (NUM_PROBLEMS, 4, 8, 1)).astype(np.float32)
  updates = {}
  for name, failure in (("negative", -1.0), ("nan", np.nan)):
    broken = simulated.copy()
    broken[1, 2, 5] = failure
    updates[name] = machine.update(state, theta, tf.constant(broken)).psi.numpy()
  np.testing.assert_array_equal(updates["negative"], updates["nan"])
  clamped = simulated.copy()
  clamped[1, 2, 5] = 0.0
  assert not np.allclose(machine.update(state, theta, tf.constant(clamped)).psi.numpy()[1],
                         updates["negative"][1])

  class NegativePoisson(type(machine.simulator)):
    def simulate(self, theta, num_obs, seed):
      return super().simulate(theta, num_obs, seed) - 1.0   # zero counts become -1

  machine.simulator = NegativePoisson()
  assert int(tf.reduce_sum(machine(observations, seed=_seed(3)).masked_samples)) > 0
  theta_train, observations_train = _problems("poisson")
  observations_train[2, 7, 0] = -3.0
  with pytest.raises(ValueError, match=r"observations that simulator 'poisson' returned for the "
                                       r"meta-training problems must be >= 0 .* log1p.*\[2, 7, 0\]"):
    machine.adapt(theta_train, observations_train)


# --- Every proposal family and the score-feature switch, through the machine. ---

@pytest.mark.parametrize("proposal", ["diagonal_gaussian", "full_covariance_gaussian",
                                      "gaussian_mixture", "fixed_variance_gaussian", "point"])
def test_every_proposal_family_runs_trains_and_infers(proposal):
  machine = _machine("weinberg", proposal=proposal, mixture_components=2)
  _activate(machine, scale=0.05)
  _, observations = _problems("weinberg")
  trajectory = machine(observations, seed=_seed(3))
  assert trajectory.psi.shape == (NUM_PROBLEMS, 3, machine.proposal.psi_size)
  assert np.all(np.isfinite(trajectory.psi.numpy()))
  loss = "nll" if machine.proposal.has_density else "mse"
  machine.compile(keras.optimizers.Adam(3e-3), loss=loss)
  data = _fit_dataset("weinberg", num_problems=32)
  before = machine.evaluate(data, verbose=0)
  machine.fit(data, epochs=6, verbose=0, shuffle=False)
  assert machine.evaluate(data, verbose=0) < before
  result = Inferrer(machine, batch_size=4)(observations, seed=1)
  assert result.mean.shape == result.std.shape == (NUM_PROBLEMS, 2)
  assert np.all(np.isfinite(result.trajectory_std))


def test_point_proposal_refuses_the_nll_loss():
  machine = _machine(proposal="point")
  with pytest.raises(ValueError, match="loss 'nll' needs a proposal with a density; the 'point' "
                                       "proposal has none: use loss 'mse' or 'l1'"):
    machine.compile(keras.optimizers.Adam(3e-3))


def test_without_score_features_the_aggregator_sees_encodings_and_samples_only():
  with_scores, without = _machine("weinberg"), _machine("weinberg", score_features=False)
  first_layer = lambda machine: machine.aggregator.net.layers[0].kernel.shape[0]
  assert first_layer(with_scores) - first_layer(without) == with_scores.proposal.psi_size
  _activate(without)
  _, observations = _problems("weinberg")
  with tf.GradientTape() as tape:
    loss = losses.meta_loss(without, *_problems("weinberg"), _seed(1))
  assert all(g is not None for g in tape.gradient(loss, without.trainable_variables))
  assert np.all(np.isfinite(without(observations, seed=_seed(3)).psi.numpy()))


# --- Multi-start inference. ---

def test_pooled_starts_are_the_moments_of_the_equal_weight_mixture():
  from alfi_tf.model.inference import InferenceResult, pool_starts
  # One data set, R = 2 runs of d = 1: N(0, 1^2) and N(2, 1^2) -> mean 1, variance 1 + 1.
  mean, std = np.array([[0.0], [2.0]]), np.array([[1.0], [1.0]])
  result = InferenceResult(mean, std, mean[:, np.newaxis], std[:, np.newaxis], mean,
                           proposal_mean=np.array([[-0.5], [2.5]]))
  pooled = pool_starts(result, 2)
  np.testing.assert_allclose(pooled.mean, [[1.0]])
  np.testing.assert_allclose(pooled.std, [[math.sqrt(2.0)]], rtol=1e-6)
  np.testing.assert_allclose(pooled.trajectory_std, [[[math.sqrt(2.0)]]], rtol=1e-6)
  np.testing.assert_allclose(pooled.proposal_mean, [[1.0]])     # where the runs' proposals sit
  assert pool_starts(result, 1) is result


def test_pooled_factors_rescale_only_pools_of_the_size_they_were_fitted_for(caplog):
  from alfi_tf.model.calibration import PooledStdScales
  from alfi_tf.model.inference import InferenceResult, pool_starts
  # One data set, R = 2 runs of d = 2 over T = 3 steps, every pooled std sqrt(2) (as above).
  mean = np.array([[0.0, 0.0], [2.0, 2.0]])
  std = np.ones_like(mean)
  trajectory = lambda value: np.repeat(value[:, np.newaxis], 3, axis=1)   # [2, 3, 2]
  result = InferenceResult(mean, std, trajectory(mean), trajectory(std), mean)
  # Fitted for C = 2 steps: step 3 takes step 2's factors, as the machine's own table does.
  scales = np.array([[0.5, 2.0], [0.25, 3.0]], np.float32)
  pooled = pool_starts(result, 2, PooledStdScales(2, scales))
  root2 = math.sqrt(2.0)
  np.testing.assert_allclose(pooled.trajectory_std,
                             root2 * np.array([[[0.5, 2.0], [0.25, 3.0], [0.25, 3.0]]]), rtol=1e-6)
  np.testing.assert_allclose(pooled.std, root2 * np.array([[0.25, 3.0]]), rtol=1e-6)
  np.testing.assert_allclose(pooled.mean, [[1.0, 1.0]])       # the means: untouched
  # Pools of another size are pooled as they are, with one warning naming both sizes.
  four_runs = InferenceResult(*(np.repeat(field, 2, axis=0) for field in result[:5]))
  with caplog.at_level("WARNING"):
    other = pool_starts(four_runs, 4, PooledStdScales(2, scales))
  np.testing.assert_allclose(other.std, [[root2, root2]], rtol=1e-6)
  warnings = [r.getMessage() for r in caplog.records if "not recalibrated" in r.getMessage()]
  assert len(warnings) == 1 and "pooled over 4 starts" in warnings[0]
  assert "fitted for 2 starts" in warnings[0]
  assert pool_starts(result, 1, PooledStdScales(2, scales)) is result   # single runs: their own


def test_extrapolation_notes_join_with_their_batches_and_are_not_pooled():
  """A run's notes are about its own answer: batches keep theirs, a pooled answer needs a check of
  its own."""
  from alfi_tf.model.inference import InferenceResult, pool_starts
  mean = np.array([[0.0], [2.0]])
  result = InferenceResult(mean, mean, mean[:, np.newaxis], mean[:, np.newaxis], mean,
                           extrapolations=((), ("far",)))
  assert InferenceResult.concatenate([result, result]).extrapolations == ((), ("far",)) * 2
  assert InferenceResult.concatenate([result, result._replace(extrapolations=None)]
                                     ).extrapolations is None
  assert pool_starts(result, 2).extrapolations is None


def test_multi_start_inference_pools_independent_runs(inferrer):
  _, observations = _problems("poisson")
  pooled = inferrer(observations, seed=4, num_starts=3)
  assert pooled.mean.shape == (NUM_PROBLEMS, 1)
  assert pooled.trajectory_mean.shape == (NUM_PROBLEMS, inferrer.num_steps, 1)
  runs = inferrer(np.repeat(observations, 3, axis=0), seed=4)
  means = runs.mean.reshape(NUM_PROBLEMS, 3, 1)
  assert np.all(means.std(axis=1) > 0), "the runs start apart"
  np.testing.assert_allclose(pooled.mean, means.mean(axis=1), rtol=1e-6)
  # The pooled spread covers the disagreement between the runs.
  assert np.all(pooled.std >= runs.std.reshape(NUM_PROBLEMS, 3, 1).min(axis=1))
  assert np.all(pooled.std ** 2 >= means.var(axis=1) - 1e-9)
  for bad in (0, 2.5, True):
    with pytest.raises(ValueError, match=f"num_starts must be a positive integer, got {bad!r}"):
      inferrer(observations, seed=4, num_starts=bad)


def test_the_result_carries_the_final_proposal(inferrer):
  _, observations = _problems("poisson")
  result = inferrer(observations, seed=4)
  machine = inferrer.machine
  assert result.psi.shape == (NUM_PROBLEMS, machine.proposal.psi_size)
  mean, std = machine.to_raw(tf.constant(result.psi))
  np.testing.assert_allclose(mean.numpy(), result.mean, rtol=1e-6)
  np.testing.assert_allclose(std.numpy(), result.std, rtol=1e-6)
  draws = machine.sample_final_proposal(tf.constant(result.psi), 4000, _seed(1),
                                        step=result.trajectory_mean.shape[1]).numpy()
  assert draws.shape == (NUM_PROBLEMS, 4000, 1)
  deviation = (draws.mean(axis=1) - result.mean) / (result.std / math.sqrt(4000))
  assert np.all(np.abs(deviation) < 5), deviation
  assert inferrer(observations, seed=4, num_starts=2).psi is None   # pooled: no single proposal


# --- The set encoder's explicit moments. ---

def test_set_encoder_appends_the_sets_moments_and_cross_moments():
  from alfi_tf.model.networks import SetEncoder
  encoder = SetEncoder(8, 4, moment_features=True, observation_dim=3, cross_moment_features=True)
  observations = np.random.default_rng(2).normal(size=(2, 5, 50, 3)).astype(np.float32)
  encoded = encoder(tf.constant(observations)).numpy()
  assert encoder.size == 4 + 2 * 3 + 6 and encoded.shape == (2, 5, encoder.size)
  np.testing.assert_allclose(encoded[..., 4:7], observations.mean(axis=-2), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(encoded[..., 7:10], np.log(observations.std(axis=-2)), atol=1e-5)
  products = np.einsum("...ni,...nj->...ij", observations, observations) / 50
  rows, columns = np.triu_indices(3)
  np.testing.assert_allclose(encoded[..., 10:], products[..., rows, columns], rtol=1e-5, atol=1e-6)


def test_cross_moment_features_widen_the_machines_encoding():
  plain = _machine("weinberg")
  crossed = _machine("weinberg", cross_moment_features=True)
  assert crossed.encoder.size == plain.encoder.size + 1   # d_x = 1: one product, x^2
  _, observations = _problems("weinberg")
  assert np.all(np.isfinite(crossed(observations, seed=_seed(1)).psi.numpy()))


def test_raw_mean_features_append_each_sets_transformed_standardized_raw_mean():
  machine = _machine("poisson", observation_transform="log1p", raw_mean_features=True)
  plain = _machine("poisson", observation_transform="log1p")
  assert machine.encoding_size == plain.encoding_size + 1 == machine.encoder.size + 1
  counts = np.random.default_rng(4).poisson([[[2.0]], [[300.0]]], size=(2, 3, 40)).astype(np.float32)
  encoding, standardized = machine.encode_sets(tf.constant(counts[..., np.newaxis]))
  standardizer = machine.observation_standardizer
  expected = (np.log1p(counts.mean(axis=-1)) - standardizer.mean.numpy()) / standardizer.std.numpy()
  np.testing.assert_allclose(encoding[..., -1], expected, rtol=1e-5, atol=1e-5)
  # Everything before it is the set encoder's, unchanged.
  np.testing.assert_allclose(encoding[..., :-1], machine.encoder(standardized), rtol=1e-6)
  _, observations = _problems("poisson")
  assert np.all(np.isfinite(machine(observations, seed=_seed(1)).psi.numpy()))


def test_the_regression_step_is_the_whole_step_for_linear_summaries():
  """Summaries `s = A theta`: the step from the samples' mean lands on theta*; samples whose
  simulations failed (garbage summaries) are left out."""
  rng = np.random.default_rng(6)
  matrix = rng.normal(size=(3, 3))
  theta = rng.normal(size=(2, 20, 3))
  summaries = np.einsum("ij,bmj->bmi", matrix, theta)
  valid = np.ones((2, 20), bool)
  valid[1, :4] = False
  summaries[1, :4] = 1e3
  target = np.array([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]])
  step = regression_step(*(tf.constant(a, tf.float32) for a in (theta, summaries)),
                         tf.constant(target @ matrix.T, tf.float32), tf.constant(valid),
                         ridge=1e-7).numpy()
  centre = np.stack([theta[0].mean(axis=0), theta[1, 4:].mean(axis=0)])
  np.testing.assert_allclose(step, target - centre, atol=2e-3)


def test_paired_residual_moments_give_a_regression_its_whole_step():
  """At the observed design, a regression's simulated rows differ from the real ones by
  `u (beta_m - beta*)` (+ offset): the residual moments are linear in the parameters (asinh is the
  identity near 0), zero for the real rows, and their regression step lands on beta*."""
  from alfi_tf.model.networks import PairedSetEncoder
  rng = np.random.default_rng(8)
  design = np.concatenate([rng.normal(size=(2, 50, 2)), np.ones((2, 50, 1))], -1)  # [b, N, D=3]
  true = np.array([[0.3, -0.2, 0.1], [0.0, 0.5, -0.4]])
  samples = true[:, np.newaxis] + 0.02 * rng.normal(size=(2, 12, 3))                # [b, M, 3]
  rows = lambda beta: np.concatenate(   # pylint: disable=unnecessary-lambda-assignment
      [np.broadcast_to(design[:, np.newaxis], beta.shape[:2] + design.shape[1:]),
       np.einsum("bnk,bmk->bmn", design, beta)[..., np.newaxis]], -1)
  real = rows(true[:, np.newaxis])[:, 0]                                            # [b, N, 4]
  encoder = PairedSetEncoder(8, 4, observation_dim=4, design_dim=3)
  moments = encoder.residual_moments(encoder.pairs(tf.constant(real, tf.float32),
                                                   tf.constant(rows(samples), tf.float32))).numpy()
  residual = np.arcsinh(rows(samples)[..., 3] - real[:, np.newaxis, :, 3])            # [b, M, N]
  expected = np.concatenate([residual.mean(-1, keepdims=True),
                             np.einsum("bmn,bnk->bmk", residual, design) / 50], -1)
  np.testing.assert_allclose(moments, expected, atol=1e-6)
  own = encoder.residual_moments(encoder.pairs(tf.constant(real, tf.float32),
                                               tf.constant(real[:, np.newaxis], tf.float32)))
  np.testing.assert_allclose(own, 0.0, atol=1e-7)
  step = regression_step(tf.constant(samples, tf.float32), tf.constant(moments),
                         tf.zeros([2, 4]), tf.ones([2, 12], tf.bool), ridge=1e-9).numpy()
  np.testing.assert_allclose(step, true - samples.mean(axis=1), atol=2e-4)


def test_regression_features_at_the_observed_design_run_finite():
  machine = _machine("linear_regression", moment_features=True, regression_features=True,
                     observed_design=True)
  assert machine.simulates_at_observed_design
  _, observations = _problems("linear_regression")
  assert np.all(np.isfinite(machine(observations, seed=_seed(1)).psi.numpy()))


def test_a_step_at_the_observed_design_pairs_its_rows_once(monkeypatch):
  """The paired encoder's features and the regression step's residual moments read one
  computation of the step's residuals."""
  from alfi_tf.model.networks import PairedSetEncoder
  machine = _machine("linear_regression", moment_features=True, regression_features=True,
                     observed_design=True)
  _, observations = _problems("linear_regression")
  state, _ = machine.begin(observations, _seed(1))
  theta = machine.propose(state, _seed(2))
  real_at_design = machine.observations_at_design(observations, _seed(3))
  simulated = machine._simulate(theta, _seed(3), machine.config.num_simulated_obs, real_at_design)
  calls = []
  pairs = PairedSetEncoder.pairs
  monkeypatch.setattr(PairedSetEncoder, "pairs",
                      lambda *args: calls.append(1) or pairs(*args))
  machine.update(state, theta, simulated, real_at_design=real_at_design)
  assert len(calls) == 1


def test_regression_features_widen_the_updaters_input_and_need_moment_features():
  plain = _machine("weinberg", moment_features=True)
  machine = _machine("weinberg", moment_features=True, regression_features=True)
  width = lambda m: m.updater.input_net.kernel.shape[0]   # pylint: disable=unnecessary-lambda-assignment
  assert width(machine) == width(plain) + 2
  _, observations = _problems("weinberg")
  assert np.all(np.isfinite(machine(observations, seed=_seed(1)).psi.numpy()))
  with pytest.raises(ValueError, match="regression_features needs moment_features"):
    MachineConfig(regression_features=True)


@pytest.mark.parametrize("proposal,relative_updates", [
    ("diagonal_gaussian", False), ("gaussian_mixture", True), ("full_covariance_gaussian", True)])
def test_the_regression_shortcut_adds_the_gated_move_inside_the_bound(proposal, relative_updates,
                                                                      monkeypatch):
  machine = _machine("weinberg", moment_features=True, regression_features=True,
                     regression_shortcut=True, proposal=proposal,
                     relative_updates=relative_updates, bound=0.3)
  _, observations = _problems("weinberg")
  # Untrained, the gate is zero like the output layer: psi stays where it starts.
  trajectory = machine(observations, seed=_seed(1), num_steps=3)
  np.testing.assert_array_equal(trajectory.psi.numpy(),
                                np.repeat(trajectory.initial_psi.numpy()[:, None], 3, axis=1))
  machine.updater.gate.bias.assign(np.ones(machine.proposal.psi_size, np.float32))
  moves = []
  shortcut = InferenceMachine._regression_shortcut
  monkeypatch.setattr(InferenceMachine, "_regression_shortcut",
                      lambda *args: moves.append(shortcut(*args)) or moves[-1])
  state, _ = machine.begin(observations, _seed(2))
  state = state._replace(psi=state.psi + 0.2)   # apart from 0: relative units differ from 1
  theta = machine.propose(state, _seed(3))
  simulated = machine._simulate(theta, _seed(4), machine.config.num_simulated_obs, None)
  moved = machine.update(state, theta, simulated).psi.numpy()
  units = (machine.proposal.update_units(state.psi).numpy() if relative_updates else 1.0)
  direction = machine.proposal.translation(moves[0]).numpy() / units
  np.testing.assert_allclose(moved, state.psi.numpy() + units * 0.3 * np.tanh(direction / 0.3),
                             rtol=1e-5, atol=1e-6)
  assert np.abs(moved - state.psi.numpy()).max() > 1e-3


def test_the_regression_shortcut_moves_to_where_the_simulated_parameters_regress():
  """Summaries linear in the parameters each sample was simulated at: the shortcut moves the
  proposal's mean onto the real data's parameters, though half the samples lie beyond the box
  (and simulate at its edge) and the proposal's mean is not the samples'."""
  machine = _machine("weinberg", moment_features=True, regression_features=True,
                     regression_shortcut=True)
  low, high = (machine.parameter_space.forward(tf.constant([bound])).numpy()[0]
               for bound in machine.simulator.parameter_bounds)
  truth = tf.constant([low + 0.9 * (high - low)], tf.float32)                    # [1, d], inside
  psi = machine.proposal.initial_psi(tf.constant([high], tf.float32))           # on the edge
  theta = truth[:, tf.newaxis] + 0.5 * tf.random.stateless_normal([1, 40, 2], _seed(5))
  theta = theta + (high - truth)[:, tf.newaxis]                                  # around the edge
  simulated_at = machine.parameter_space.forward(machine.simulation_parameters(theta))
  assert np.mean(simulated_at.numpy() < theta.numpy() - 1e-3) > 0.3             # clipped
  mixing = tf.constant([[1.0, 0.5, -0.2], [0.3, -1.0, 0.7]])
  summaries = (tf.einsum("bmd,dk->bmk", simulated_at, mixing), tf.matmul(truth, mixing))
  valid = tf.ones([1, 40], tf.bool)
  move = machine._regression_shortcut(psi, simulated_at,
                                      regression_step(simulated_at, *summaries, valid), valid)
  np.testing.assert_allclose(machine.proposal.mean(psi) + move, truth, atol=0.02)


def test_the_regression_shortcut_needs_the_regression_step():
  with pytest.raises(ValueError, match="regression_shortcut needs regression_features"):
    MachineConfig(moment_features=True, regression_shortcut=True)


def test_a_relative_set_encoder_measures_sets_against_the_reference():
  from alfi_tf.model.networks import SetEncoder
  encoder = SetEncoder(8, 4, moment_features=True, observation_dim=2, cross_moment_features=True,
                       relative=True)
  rng = np.random.default_rng(3)
  real = rng.normal([5.0, -1.0], [0.05, 2.0], size=(3, 100, 2)).astype(np.float32)
  simulated = rng.normal([5.1, 0.0], [0.1, 2.0], size=(3, 4, 20, 2)).astype(np.float32)
  real_encoding = encoder(tf.constant(real))
  mean, log_std = encoder.reference(real_encoding)          # the real set's own, absolute moments
  np.testing.assert_allclose(mean, real.mean(axis=1), rtol=1e-5)
  np.testing.assert_allclose(log_std, np.log(real.std(axis=1)), atol=1e-3)
  # Shifting and scaling the real data and every simulated set alike leaves the relative parts.
  reference = (mean[:, tf.newaxis], log_std[:, tf.newaxis])
  encoded = encoder(tf.constant(simulated), reference).numpy()
  moved = encoder(tf.constant(3 * real + 7))
  moved_reference = tuple(r[:, tf.newaxis] for r in encoder.reference(moved))
  moved_encoded = encoder(tf.constant(3 * simulated + 7), moved_reference).numpy()
  np.testing.assert_allclose(moved_encoded, encoded, atol=1e-3)
  np.testing.assert_allclose(moved.numpy()[:, :4], real_encoding.numpy()[:, :4], atol=1e-3)
  # A simulated set's moments are relative: asinh of its mean's offset in reference std, and its
  # log std's excess.
  scale = real.std(axis=1)[:, np.newaxis]
  np.testing.assert_allclose(encoded[..., 4:6], np.arcsinh(
      (simulated.mean(axis=2) - real.mean(axis=1)[:, np.newaxis]) / scale), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(encoded[..., 6:8], np.log(simulated.std(axis=2) / scale), atol=1e-3)
  with pytest.raises(ValueError, match="needs moment_features"):
    SetEncoder(8, 4, observation_dim=2, relative=True)


def test_a_relative_machine_runs_and_its_config_needs_moment_features():
  machine = _machine("weinberg", moment_features=True, relative_encoding=True)
  _, observations = _problems("weinberg")
  assert np.all(np.isfinite(machine(observations, seed=_seed(1)).psi.numpy()))
  with pytest.raises(ValueError, match="relative_encoding needs moment_features"):
    MachineConfig(relative_encoding=True)
