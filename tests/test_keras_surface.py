"""The Keras surface as a Keras user meets it: `compile` / `fit` on the data a user has (numpy,
float64), one clear error naming the argument for bad input, and a machine (or NPE estimator) that
still trains after a `fit` that failed.

Sizes are tiny (a few units per layer, M=4, N=5, T=3) so every test runs in about a second.
"""

from __future__ import annotations

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from alfi_tf.baselines.npe import NPEConfig, PosteriorEstimator
from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.model.inference import Inferrer
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.simulators import get_simulator
from alfi_tf.training.trainer import Trainer

TINY = dict(num_steps=3, num_samples=4, num_simulated_obs=5, encoder_hidden=8, encoder_out=6,
            aggregator_hidden=8, aggregator_out=6, updater_hidden=8, lstm_units=5)
SEED = tf.constant([1, 2], tf.int32)


def _problems(num_problems: int = 16, num_obs: int = 10):
  theta, observations = get_simulator("poisson").sample_problems(num_problems, num_obs, SEED)
  return theta.numpy(), observations.numpy()


def _machine(**compile_settings) -> InferenceMachine:
  """A tiny compiled Poisson machine with deterministic weights."""
  keras.utils.set_random_seed(0)
  machine = InferenceMachine(get_simulator("poisson"), MachineConfig(simulator="poisson", **TINY))
  machine.adapt(*_problems())
  machine.compile(keras.optimizers.Adam(1e-3), **compile_settings)
  return machine


def _dataset(theta: np.ndarray, observations: np.ndarray) -> tf.data.Dataset:
  seeds = tf.random.experimental.stateless_split(tf.constant([3, 4]), len(theta))
  return tf.data.Dataset.from_tensor_slices((theta, observations, seeds)).batch(8)


# --- compile / fit. ---

@pytest.mark.parametrize("settings, message", [
    (dict(loss="bce"), r"loss must be one of \('nll', 'mse', 'l1'\).*got 'bce'"),
    (dict(loss=keras.losses.MeanSquaredError()), "loss must be one of .*Keras loss objects"),
    (dict(time_weights="linear"), "time_weights must be one of .*got 'linear'"),
    (dict(beta=float("nan")), "beta must be a finite number, got nan"),
])
def test_compile_refuses_meta_loss_settings_it_cannot_use(settings, message):
  """Refused by `compile`, not inside the first traced train step (or, for beta NaN, as a NaN
  loss)."""
  with pytest.raises(ValueError, match=message):
    _machine(**settings)


def test_fit_takes_float64_numpy_data_like_float32():
  """numpy's default float64 trains exactly as float32 (it failed with a dtype clash in the
  proposal's log-density)."""
  theta, observations = _problems()
  losses = []
  for dtype in (np.float32, np.float64):
    machine = _machine()
    history = machine.fit(_dataset(theta.astype(dtype), observations.astype(dtype)), epochs=1,
                          verbose=0)
    losses.append(history.history["loss"])
  assert losses[0] == losses[1] and np.isfinite(losses[0]).all()


def test_fit_takes_a_tuple_of_arrays_as_x():
  theta, observations = _problems()
  seeds = tf.random.experimental.stateless_split(tf.constant([3, 4]), len(theta)).numpy()
  history = _machine().fit((theta, observations, seeds), batch_size=8, epochs=1, verbose=0)
  assert np.isfinite(history.history["loss"]).all()


def test_fit_refuses_theta_of_the_wrong_width():
  """theta `[B, 2]` for a 1-parameter simulator used to broadcast silently into a finite loss."""
  _, observations = _problems()
  with pytest.raises(ValueError, match=r"theta .* must have shape \[batch, 1\], got shape "
                                       r"\(None, 2\)"):
    _machine().fit(_dataset(np.ones((16, 2), np.float32), observations), epochs=1, verbose=0)


def test_fit_refuses_seeds_beyond_int32():
  """int64 seeds beyond int32 wrapped around in the cast: [2**32 + 3, 4] trained as [3, 4]."""
  theta, observations = _problems()
  seeds = np.tile(np.array([[2 ** 32 + 3, 4]], np.int64), (len(theta), 1))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"the seeds of a batch \(its third element\) must lie in the int32 "
                           r"range"):
    _machine().fit((theta, observations, seeds), batch_size=8, epochs=1, verbose=0)
  history = _machine().fit((theta, observations, seeds % 2 ** 32), batch_size=8, epochs=1,
                           verbose=0)
  assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize("element, message", [
    ("theta", r"theta \(the batch's first element\) holds NaN/inf values"),
    ("observations", r"observations \(the batch's second element\) hold NaN/inf values"),
])
def test_fit_refuses_non_finite_data_before_it_reaches_the_weights(element, message):
  """One NaN observation turned every weight into NaN while fit reported a normal loss."""
  theta, observations = _problems()
  (theta if element == "theta" else observations)[3, 0] = np.nan
  machine = _machine()
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    machine.fit(_dataset(theta, observations), epochs=1, verbose=0)
  assert all(np.all(np.isfinite(weight.numpy())) for weight in machine.trainable_weights)


def test_fit_refuses_theta_and_observations_of_different_batch_sizes():
  """A theta batch of one broadcast against every data set into a finite loss."""
  theta, observations = _problems()
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="theta and observations of a batch must hold the same number"):
    _machine().batch_loss((theta[:1], observations[:8], SEED))


def test_predict_and_a_non_machine_inferrer_point_to_what_answers():
  with pytest.raises(TypeError, match=r"predict is not supported .* machine\.infer\(observations, "
                                      r"seed\)"):
    _machine().predict(_problems()[1])
  with pytest.raises(TypeError, match=r"machine must be an InferenceMachine, got str .*"
                                      r"load_machine"):
    Inferrer("runs/poisson")


def test_fit_names_what_a_batch_must_hold():
  theta, observations = _problems()
  with pytest.raises(ValueError, match=r"each batch for fit / evaluate must be a tuple \(theta "
                                       r"\[B, d\], observations \[B, n, d_x\], seed .*got "
                                       r"\('float32\[None, 1\]', 'float32\[None, 10, 1\]'\)"):
    _machine().fit(tf.data.Dataset.from_tensor_slices((theta, observations)).batch(8), verbose=0)


@pytest.mark.parametrize("seed_shape", [(3,), (4,)])
def test_fit_names_seeds_that_are_not_pairs(seed_shape):
  theta, observations = _problems()
  seeds = np.zeros((len(theta),) + seed_shape, np.int32)     # per problem: [B, 3] / [B, 4]
  dataset = tf.data.Dataset.from_tensor_slices((theta, observations, seeds)).batch(8)
  with pytest.raises(ValueError, match=r"the batch's seeds \(third element\) must have shape "
                                       r"\[2\] or \[B, 2\], got int32\[None, [34]\]"):
    _machine().fit(dataset, verbose=0)


def test_a_failed_fit_leaves_the_machine_trainable():
  """A first `fit` that fails on a malformed batch used to leave every later `fit` failing
  ("Creating variables on a non-first call"): the optimizer's slots are now built by `compile`."""
  theta, observations = _problems()
  machine, reference = _machine(), _machine()
  with pytest.raises(ValueError):
    machine.fit(tf.data.Dataset.from_tensor_slices((theta, observations)).batch(8), verbose=0)
  history = machine.fit(_dataset(theta, observations), epochs=1, verbose=0)
  assert history.history == reference.fit(_dataset(theta, observations), epochs=1,
                                          verbose=0).history


# --- Direct calls of the machine. ---

@pytest.mark.parametrize("kwargs, message", [
    (dict(num_steps=0), "num_steps must be a positive integer, got 0"),
    (dict(num_steps=2.0), "num_steps must be a positive integer, got 2.0"),
    (dict(seed=5), r"seed must be an int32 tensor of shape \[2\] .*tf.constant\(\[5, 0\]\)"),
    (dict(seed=tf.constant([1, 2, 3])), r"seed must be an int32 tensor of shape \[2\].*\(3,\)"),
    (dict(seed=tf.constant([1.0, 2.0])), r"seed must be an int32 tensor .* got float32"),
    (dict(seed=np.array([2 ** 32 + 1, 0])), r"seed must be an int32 tensor .*got \[4294967297, "
                                            r"0\], outside int32's range"),
    (dict(observations=np.ones((10, 1))), r"observations must have shape \[batch, num_obs, 1\], "
                                          r"got shape \(10, 1\)"),
    (dict(observations=np.ones((2, 10, 3))), r"observations must have shape .*\(2, 10, 3\)"),
    (dict(observations=np.full((2, 10, 1), np.nan)), "observations contains NaN/inf"),
    (dict(initial_mean=np.ones((2, 3))), r"initial_mean must have shape \[batch, 1\] .*\(2, 3\)"),
    (dict(initial_mean=np.full((2, 1), np.inf)), "initial_mean contains NaN/inf"),
])
def test_infer_names_the_bad_argument(kwargs, message):
  """num_steps=0 used to run the training horizon silently, NaN observations or starts gave NaN
  answers, and the rest failed deep inside TensorFlow."""
  machine = _machine()
  with pytest.raises(ValueError, match=message):
    machine.infer(**{"observations": _problems(2)[1], "seed": SEED, **kwargs})


def test_infer_refuses_observations_outside_the_transforms_domain():
  """A log1p machine clamped negative observations to 0 and answered as if they were."""
  simulator = get_simulator("poisson")
  machine = InferenceMachine(simulator, MachineConfig(simulator="poisson",
                                                      observation_transform="log1p", **TINY))
  observations = _problems(2)[1]
  machine.adapt(*_problems())
  observations[1, 3, 0] = -2.0
  with pytest.raises(ValueError, match=r"observations must be >= 0 for this machine \(it reads "
                                       r"them through log1p\); 1 value\(s\) are not, the first "
                                       r"at \[1, 3, 0\] = -2"):
    machine.infer(observations, SEED)


def test_a_numpy_integer_horizon_is_a_horizon():
  """Keras hands numpy scalars to `call` as tensors: num_steps=np.int64(2) was refused as "got
  <tf.Tensor ...>"."""
  machine = _machine()
  observations = _problems(2)[1]
  expected = machine.infer(observations, SEED, num_steps=2)
  for num_steps in (np.int64(2), tf.constant(2)):
    actual = machine.infer(observations, SEED, num_steps=num_steps)
    assert actual["trajectory_mean"].shape == (2, 2, 1)
    np.testing.assert_array_equal(actual["trajectory_mean"], expected["trajectory_mean"])


def _answer_arguments(machine: InferenceMachine) -> dict:
  outputs = machine.infer(_problems(2)[1], SEED)
  return dict(psi=outputs["answer_psi"].numpy(), theta=outputs["mean"].numpy(), step=3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(psi=None), r"psi is None: runs pooled over several starts \(num_starts > 1\)"),
    (dict(psi=np.zeros(2)), r"psi must have shape \[batch, 2\] \(the answer's parameters.*"
                            r"got shape \(2,\)"),
    (dict(psi=np.zeros((2, 3))), r"psi must have shape \[batch, 2\].*got shape \(2, 3\)"),
    (dict(psi=np.full((2, 2), np.nan)), "psi contains NaN/inf"),
    (dict(theta=np.zeros((2, 2))), r"theta must have shape \[batch, 1\].*got shape \(2, 2\)"),
    (dict(theta=np.zeros((3, 1))), r"theta must have shape \[batch, 1\].*got shape \(3, 1\)"),
    (dict(step=-1), "step must be a non-negative integer .*got -1"),
    (dict(step=2.5), "step must be a non-negative integer .*got 2.5"),
    (dict(num_samples=0), "num_samples must be a positive integer, got 0"),
    (dict(seed=5), r"seed must be an int32 tensor of shape \[2\]"),
    (dict(seed=np.array([2 ** 40, 0])), "outside int32's range"),
])
def test_the_answers_draws_and_density_name_the_bad_argument(kwargs, message):
  """`sample_final_proposal` and `answer_log_prob` failed deep inside TensorFlow (a step of -1, a
  seed that is an int, psi of the wrong width), or answered wrongly without a word: a psi of one
  data set without its batch axis gave draws for two, a theta of the wrong width broadcast into a
  density, a seed beyond int32 wrapped around and NaN gave NaN draws."""
  machine = _machine()
  arguments = {**_answer_arguments(machine), "num_samples": 5, "seed": SEED, **kwargs}
  sample_arguments = {key: arguments[key] for key in ("psi", "num_samples", "seed", "step")}
  density_arguments = {key: arguments[key] for key in ("theta", "psi", "step")}
  calls = [] if "theta" in kwargs else [(machine.sample_final_proposal, sample_arguments)]
  if not {"num_samples", "seed"} & set(kwargs):
    calls.append((machine.answer_log_prob, density_arguments))
  for method, method_arguments in calls:
    with pytest.raises(ValueError, match=message):
      method(**method_arguments)


def test_the_answers_draws_and_density_take_numpy_float64_and_lists():
  """float64 psi failed with a float32/float64 clash, a list of lists with an AttributeError."""
  machine = _machine()
  arguments = _answer_arguments(machine)
  psi, theta = arguments["psi"], arguments["theta"]
  expected_draws = machine.sample_final_proposal(psi, 5, SEED, step=3).numpy()
  expected_density = machine.answer_log_prob(theta, psi, step=3).numpy()
  for value in (psi.astype(np.float64), psi.tolist()):
    np.testing.assert_array_equal(machine.sample_final_proposal(value, 5, SEED, step=3),
                                  expected_draws)
    np.testing.assert_array_equal(machine.answer_log_prob(theta.astype(np.float64), value, step=3),
                                  expected_density)


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5)])
def test_averaging_names_iterates_of_the_wrong_shape(shape):
  with pytest.raises(ValueError, match=rf"psi must have shape \[batch, steps, 2\] .*got shape "
                                       rf"{re.escape(str(shape))}"):
    _machine().average_iterates(np.zeros(shape, np.float32))


def test_xla_with_a_numpy_simulator_is_refused_up_front(tmp_path):
  """Inferrer(jit_compile=True) and compile(jit_compile=True) accepted a numpy simulator and
  failed at the first call, deep inside XLA (PyFuncStateless has no XLA kernel)."""
  config = MachineConfig(simulator="lotka_volterra", **TINY)
  machine = InferenceMachine(get_simulator("lotka_volterra"), config)
  message = "jit_compile needs a TF-native simulator; 'lotka_volterra' runs numpy code"
  with pytest.raises(ValueError, match=message):
    Inferrer(machine, jit_compile=True)
  with pytest.raises(ValueError, match=message):
    machine.compile(keras.optimizers.Adam(1e-3), jit_compile=True)
  with pytest.raises(ValueError, match=message):
    Trainer(config, TrainConfig(), str(tmp_path / "run"), jit_compile=True)
  assert not list(tmp_path.iterdir())


def test_inferrer_refuses_a_non_finite_start_by_name():
  """A NaN start used to be reported as a simulator returning NaN in every simulated set."""
  with pytest.raises(ValueError, match="initial_mean contains NaN/inf"):
    Inferrer(_machine())(_problems(2)[1], seed=0, initial_mean=np.array([[np.nan], [1.0]]))


def test_infer_takes_numpy_float64_and_tensors_alike():
  machine = _machine()
  _, observations = _problems(2)
  expected = machine.infer(observations, SEED, initial_mean=np.ones((2, 1), np.float32))
  for value in (observations.astype(np.float64), tf.constant(observations, tf.float64)):
    actual = machine.infer(value, SEED.numpy(), initial_mean=np.ones((2, 1)))
    np.testing.assert_array_equal(actual["mean"], expected["mean"])


# --- The NPE baseline. ---

def _estimator() -> PosteriorEstimator:
  keras.utils.set_random_seed(0)
  config = NPEConfig(simulator="poisson", density="gaussian", num_problems=16, num_obs=10,
                     encoder_hidden=8, encoder_out=6, context_hidden=8)
  estimator = PosteriorEstimator(get_simulator("poisson"), config)
  estimator.adapt(*_problems())
  estimator.compile(keras.optimizers.Adam(1e-2))
  return estimator


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_samples=5.0), "num_samples must be a positive integer, got 5.0"),
    (dict(num_samples=1), "num_samples must be at least 2, got 1"),
    (dict(seed=1.5), r"seed must be an integer in .* got 1.5"),
    (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
])
def test_npe_posterior_names_the_bad_argument(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _estimator().posterior(_problems(2)[1], **kwargs)


def test_npe_fit_names_what_a_batch_must_hold_and_still_trains_after():
  theta, observations = _problems()
  estimator, reference = _estimator(), _estimator()
  with pytest.raises(ValueError, match=r"must be a dict \{'theta': \[B, d\], 'observations'"):
    estimator.fit((theta, observations), batch_size=8, verbose=0)
  with pytest.raises(ValueError, match=r"theta must have shape \[batch, 1\]"):
    estimator.fit({"theta": np.ones((16, 2)), "observations": observations}, batch_size=8,
                  verbose=0)
  data = {"theta": theta, "observations": observations}
  assert (estimator.fit(data, batch_size=8, verbose=0, shuffle=False).history
          == reference.fit(data, batch_size=8, verbose=0, shuffle=False).history)


def test_npe_keras_file_round_trip_restores_the_answer_and_the_optimizer(tmp_path):
  estimator = _estimator()
  theta, observations = _problems()
  estimator.fit({"theta": theta, "observations": observations}, batch_size=8, verbose=0)
  path = os.path.join(tmp_path, "npe.keras")
  estimator.save(path)
  loaded = keras.saving.load_model(path)
  for ours, theirs in zip(estimator.posterior(observations[:3], num_samples=20, seed=1),
                          loaded.posterior(observations[:3], num_samples=20, seed=1)):
    np.testing.assert_array_equal(ours, theirs)
  assert int(loaded.optimizer.iterations) == int(estimator.optimizer.iterations) == 2


# --- A global Keras dtype policy other than float32. ---

@pytest.fixture(params=["float64", "mixed_float16"])
def global_policy(request):
  """A user's `keras.config.set_floatx("float64")` / mixed precision, undone after the test."""
  floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
  keras.config.set_floatx("float64" if request.param == "float64" else floatx)
  keras.config.set_dtype_policy(request.param)
  yield request.param
  keras.config.set_floatx(floatx)
  keras.config.set_dtype_policy(policy)


def test_the_machine_computes_in_float32_under_any_global_policy(global_policy):
  """Its layers used to pick up the global policy and clash with the float32 simulations deep
  inside the first call; the user's policy is left as it was."""
  theta, observations = _problems()
  machine = _machine()
  assert keras.config.dtype_policy().name == global_policy
  assert {weight.dtype for weight in machine.weights} == {"float32"}
  result = Inferrer(machine)(observations[:2], seed=0)
  assert result.mean.dtype == np.float32 and np.isfinite(result.mean).all()
  assert np.isfinite(machine.fit(_dataset(theta, observations), verbose=0).history["loss"]).all()


def test_the_npe_flow_computes_in_float32_under_any_global_policy(global_policy):
  del global_policy
  keras.utils.set_random_seed(0)
  theta, observations = _problems()
  config = NPEConfig(simulator="poisson", density="flow", num_problems=16, num_obs=10,
                     encoder_hidden=8, encoder_out=6, context_hidden=8, flow_layers=2,
                     flow_hidden=8, spline_bins=4)
  estimator = PosteriorEstimator(get_simulator("poisson"), config)
  estimator.adapt(theta, observations)
  assert {weight.dtype for weight in estimator.weights} == {"float32"}
  posterior = estimator.posterior(observations[:2], num_samples=8)
  assert posterior.mean.dtype == np.float32 and np.isfinite(posterior.mean).all()


# --- Construction and adapt. ---

@pytest.mark.parametrize("arguments, error, message", [
    (("poisson", MachineConfig(simulator="poisson")), TypeError,
     r"simulator must be a Simulator \(e.g. alfi_tf.get_simulator\('poisson'\)"),
    ((get_simulator("poisson"), {"simulator": "poisson"}), TypeError,
     "config must be a MachineConfig, got dict"),
])
def test_the_machine_names_a_wrong_constructor_argument(arguments, error, message):
  with pytest.raises(error, match=message):
    InferenceMachine(*arguments)


@pytest.mark.parametrize("theta_shape, observations_shape, message", [
    ((16, 2), (16, 10, 1), r"theta must have shape \(16, 1\) .* got shape \(16, 2\)"),
    ((8, 1), (16, 10, 1), r"theta must have shape \(16, 1\) .* got shape \(8, 1\)"),
    ((16, 1), (16, 10, 3), r"observations must have 1 values per observation"),
    ((16, 1), (16, 10), r"observations must have shape \[num_problems, num_obs, 1\]"),
])
def test_adapt_refuses_problems_of_the_wrong_shape(theta_shape, observations_shape, message):
  """They used to be flattened into statistics of the wrong values without complaint."""
  machine, estimator = _machine(), _estimator()
  for model in (machine, estimator):
    with pytest.raises(ValueError, match=message):
      model.adapt(np.ones(theta_shape), np.ones(observations_shape))
