"""The NPE baseline: its densities (closed forms, change of variables), training, resuming and
persistence."""

import dataclasses
import json
import math
import os
import re

import keras
import numpy as np
import pytest
from scipy.integrate import trapezoid
import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf.baselines import npe_training
from alfi_tf.baselines.gaussian_density import ConditionalGaussian
from alfi_tf.baselines.npe import NPEConfig, PosteriorEstimator
from alfi_tf.baselines.spline_flow import ConditionalSplineFlow, coupling_masks
from alfi_tf.config import SEED_RANGE
from alfi_tf.simulators import get_simulator
from alfi_tf.training import data as data_lib
from tests.binary_runs import assert_refused, assert_rejected, run

tfd = tfp.distributions
CONTEXT = 5


def _randomized(layer: keras.layers.Layer, seed: int, scale: float = 0.5) -> keras.layers.Layer:
  """`layer` with every weight redrawn: the zero-initialised output layers make a fresh head an
  identity map, which would hide errors in the change of variables."""
  rng = np.random.default_rng(seed)
  for weight in layer.weights:
    weight.assign(scale * rng.standard_normal(weight.shape).astype(np.float32))
  return layer


def _flow(parameter_dim: int, seed: int = 0) -> ConditionalSplineFlow:
  flow = ConditionalSplineFlow(parameter_dim, num_layers=3, hidden=16, num_bins=6, bound=3.0)
  flow.build((None, CONTEXT))
  return _randomized(flow, seed, scale=0.25)


def _context(batch: int, seed: int = 1) -> tf.Tensor:
  return tf.constant(np.random.default_rng(seed).standard_normal([batch, CONTEXT]), tf.float32)


def test_gaussian_head_log_prob_and_moments_match_the_closed_form():
  head = ConditionalGaussian(3)
  head.build((None, CONTEXT))
  _randomized(head, seed=2, scale=0.3)
  context = _context(4)
  theta = tf.constant(np.random.default_rng(3).standard_normal([4, 3]), tf.float32)
  mean, scale_tril, _ = head.affine(context)
  exact = tfd.MultivariateNormalTriL(mean, scale_tril)
  np.testing.assert_allclose(head.log_prob(theta, context), exact.log_prob(theta), rtol=1e-5,
                             atol=1e-5)
  head_mean, head_std = head.mean_and_std(context)
  np.testing.assert_allclose(head_mean, exact.mean(), rtol=1e-6)
  np.testing.assert_allclose(head_std, exact.stddev(), rtol=1e-5)


def test_coupling_masks_alternate_and_a_single_parameter_is_always_transformed():
  np.testing.assert_array_equal(coupling_masks(3, 2), [[1, 0, 1], [0, 1, 0]])
  np.testing.assert_array_equal(coupling_masks(1, 3), [[0], [0], [0]])


def test_an_untrained_flow_is_exactly_its_gaussian_head():
  flow = ConditionalSplineFlow(2, num_layers=2, hidden=8)
  flow.build((None, CONTEXT))
  _randomized(flow.gaussian, seed=4, scale=0.3)
  context = _context(6)
  theta = tf.constant(np.random.default_rng(5).standard_normal([6, 2]), tf.float32)
  np.testing.assert_allclose(flow.log_prob(theta, context),
                             flow.gaussian.log_prob(theta, context), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("parameter_dim", [1, 2, 3])
def test_flow_log_det_is_the_log_determinant_of_the_normalizing_map(parameter_dim):
  """Change of variables: the flow's log-determinant against autodiff's full Jacobian."""
  flow = _flow(parameter_dim)
  context = _context(8)
  theta = tf.constant(1.5 * np.random.default_rng(6).standard_normal([8, parameter_dim]),
                      tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(theta)
    u, log_det = flow.normalize(theta, context)
  jacobian = tape.batch_jacobian(u, theta)
  _, autodiff_log_det = tf.linalg.slogdet(tf.cast(jacobian, tf.float64))
  np.testing.assert_allclose(log_det, autodiff_log_det, rtol=1e-4, atol=1e-4)
  base = tfd.MultivariateNormalDiag(tf.zeros(parameter_dim), tf.ones(parameter_dim))
  np.testing.assert_allclose(flow.log_prob(theta, context), base.log_prob(u) + log_det,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("parameter_dim", [1, 2])
def test_flow_generate_inverts_normalize(parameter_dim):
  flow = _flow(parameter_dim, seed=7)
  context = _context(16, seed=8)
  u = tf.random.stateless_normal([16, parameter_dim], seed=[1, 2])
  theta = flow.generate(u, context)
  recovered, _ = flow.normalize(theta, context)
  np.testing.assert_allclose(recovered, u, atol=2e-4)


def test_one_dimensional_flow_density_integrates_to_one_and_matches_its_samples():
  flow = _flow(1, seed=9)
  context = _context(2, seed=10)
  grid = np.linspace(-40.0, 40.0, 40001, dtype=np.float32)
  for row in range(2):
    repeated = tf.repeat(context[row:row + 1], len(grid), axis=0)
    density = np.exp(flow.log_prob(grid[:, None], repeated).numpy())
    mass = trapezoid(density, grid)
    assert abs(mass - 1.0) < 1e-3, mass
    # The sampler draws from the same density: its mean within 4 standard errors of the grid's.
    samples = flow.sample(context[row:row + 1], 20000, seed=tf.constant([3, row])).numpy().ravel()
    grid_mean = trapezoid(density * grid, grid)
    assert abs(samples.mean() - grid_mean) < 4 * samples.std() / math.sqrt(len(samples))


def _small_config(**overrides) -> NPEConfig:
  settings = dict(simulator="poisson", density="flow", num_problems=300, num_obs=50,
                  observation_transform="log1p", encoder_hidden=16, encoder_out=8,
                  context_hidden=16, flow_layers=2, flow_hidden=16, epochs=3, patience=3,
                  batch_size=64, seed=0)
  settings.update(overrides)
  return NPEConfig(**settings)


@pytest.mark.parametrize("density", ["gaussian", "flow"])
def test_a_few_training_steps_reduce_the_loss(density):
  config = _small_config(density=density)
  simulator = get_simulator("poisson")
  problems = data_lib.generate_problems(simulator, 256, 50, seed=1, stream=data_lib.TRAIN_STREAM)
  keras.utils.set_random_seed(0)
  estimator = PosteriorEstimator(simulator, config)
  estimator.adapt(problems.theta, problems.observations)
  estimator.compile(keras.optimizers.Adam(3e-3))
  inputs = {"theta": problems.theta, "observations": problems.observations}
  before = float(estimator.evaluate(inputs, batch_size=256, verbose=0))
  estimator.fit(inputs, batch_size=64, epochs=8, verbose=0, shuffle=False)
  after = float(estimator.evaluate(inputs, batch_size=256, verbose=0))
  assert after < before - 0.5, (before, after)


def test_train_npe_saves_a_loadable_estimator_and_counts_its_budget(tmp_path):
  config = _small_config(epochs=1, num_problems=96)
  workdir = str(tmp_path / "npe")
  run = npe_training.train_npe(config, workdir)
  assert run.summary["training_simulations"] == 96 * 50 == config.training_simulations
  assert run.summary["epochs_run"] == 2   # the Gaussian stage, then the whole flow
  with open(os.path.join(workdir, npe_training.CONFIG_FILE)) as stream:
    assert NPEConfig(**json.load(stream)) == config
  loaded = npe_training.load_npe(workdir)
  test = data_lib.generate_problems(get_simulator("poisson"), 5, 50, 0, data_lib.TEST_STREAM)
  np.testing.assert_allclose(loaded.log_prob(test.theta, test.observations),
                             run.estimator.log_prob(test.theta, test.observations), rtol=1e-6)
  posterior = loaded.posterior(test.observations, num_samples=64, seed=3, batch_size=2)
  assert posterior.samples.shape == (5, 64, 1)
  np.testing.assert_allclose(posterior.mean, posterior.samples.mean(axis=1), rtol=1e-5)
  again = loaded.posterior(test.observations, num_samples=64, seed=3, batch_size=2)
  np.testing.assert_array_equal(posterior.samples, again.samples)
  with pytest.raises(FileExistsError, match="already holds"):
    npe_training.train_npe(config, workdir)


class _Killed(Exception):
  """Stands for a process killed between two epochs."""


class _KillAfter(keras.callbacks.Callback):
  """Ends the training after its `epochs`-th epoch overall, once that epoch's state is saved."""

  def __init__(self, epochs: int):
    super().__init__()
    self._left = epochs

  def on_epoch_end(self, epoch, logs=None):
    self._left -= 1
    if self._left == 0:
      raise _Killed()


@pytest.mark.parametrize("density, overrides, kill_after", [
    # A flow trains in two stages (2 epochs each): killed inside the second.
    ("flow", dict(epochs=2, flow_layers=1), (3,)),
    # Early stopping ends the run at epoch 3 (the loss rose at epoch 3, patience 1); killed right
    # after it stopped, and one epoch before, with the learning rate already halved.
    ("gaussian", dict(epochs=8, patience=1, learning_rate=0.05), (2, 3)),
])
def test_an_interrupted_npe_training_resumes_exactly(tmp_path, density, overrides, kill_after):
  config = _small_config(density=density, num_problems=100, num_obs=20, **overrides)
  uninterrupted = npe_training.train_npe(config, str(tmp_path / "uninterrupted"))
  for epochs in kill_after:
    workdir = str(tmp_path / f"killed_after_{epochs}")
    with pytest.raises(_Killed):
      npe_training.train_npe(config, workdir, callbacks=[_KillAfter(epochs)])
    state_dir = os.path.join(workdir, npe_training.STATE_DIR)
    with open(os.path.join(state_dir, npe_training.STATE_FILE)) as stream:
      assert sum(map(len, json.load(stream)["losses"])) == epochs
    with pytest.raises(ValueError, match="another configuration.*differs in seed"):
      npe_training.train_npe(dataclasses.replace(config, seed=1), workdir)
    resumed = npe_training.train_npe(config, workdir)
    for name in ("epochs_run", "best_validation_loss"):
      assert resumed.summary[name] == uninterrupted.summary[name], name
    for resumed_weights, weights in zip(resumed.estimator.get_weights(),
                                        uninterrupted.estimator.get_weights()):
      np.testing.assert_array_equal(resumed_weights, weights)
    assert not os.path.exists(state_dir)
  if density == "gaussian":
    assert uninterrupted.summary["epochs_run"] == 3 < config.epochs


def test_train_npe_writes_nothing_into_a_directory_that_is_not_an_npe_run(tmp_path):
  results = tmp_path / "my_results"
  results.mkdir()
  (results / "metrics.json").write_text('{"mine": 1}')
  with pytest.raises(FileExistsError, match="holds no NPE run"):
    npe_training.train_npe(_small_config(), str(results))
  assert os.listdir(results) == ["metrics.json"]
  assert (results / "metrics.json").read_text() == '{"mine": 1}'
  (tmp_path / "a_file").write_text("data")
  with pytest.raises(NotADirectoryError, match="is a file"):
    npe_training.train_npe(_small_config(), str(tmp_path / "a_file"))


def test_load_npe_without_a_trained_estimator_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="no trained NPE"):
    npe_training.load_npe(str(tmp_path))
  # A damaged archive used to be reported by Keras as "File not found".
  (tmp_path / npe_training.MODEL_FILE).write_text("garbage")
  with pytest.raises(ValueError, match="npe.keras is damaged and cannot be loaded"):
    npe_training.load_npe(str(tmp_path))


def test_gaussian_head_posterior_moments_are_exact():
  config = _small_config(density="gaussian")
  estimator = PosteriorEstimator(get_simulator("poisson"), config)
  _randomized(estimator.density, seed=11, scale=0.2)
  test = data_lib.generate_problems(get_simulator("poisson"), 3, 50, 0, data_lib.TEST_STREAM)
  posterior = estimator.posterior(test.observations, num_samples=4000, seed=0)
  # Exact moments; the samples agree within 5 standard errors.
  standard_error = posterior.std / math.sqrt(4000)
  assert np.all(np.abs(posterior.samples.mean(axis=1) - posterior.mean) < 5 * standard_error)


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", float("nan"), "learning_rate must be a finite number"),
    ("density", "maf", "density must be one of"),
    ("num_problems", 1, "num_problems must be at least 2"),
    ("epochs", 0, "epochs must be positive"),
    ("spline_bins", 1, "spline_bins must be at least 2"),
    ("observation_transform", "log", "observation_transform must be one of"),
])
def test_npe_config_rejects_bad_values_by_name(field, value, message):
  with pytest.raises(ValueError, match=message):
    _small_config(**{field: value})


def test_posterior_names_bad_observations():
  estimator = PosteriorEstimator(get_simulator("poisson"), _small_config())
  with pytest.raises(ValueError, match=r"observations contains 1 NaN/inf value\(s\), the first at "
                                       r"\[0, 1, 0\]"):
    estimator.posterior(np.array([[[1.0], [np.nan]]]))
  with pytest.raises(ValueError, match=r"observations must have shape \[num_problems, num_obs, 1\]"):
    estimator.posterior(np.ones([3, 4]))




@pytest.mark.parametrize("theta, observations, message", [
    (np.ones([2, 2]), np.ones([2, 3, 1]), r"theta must have shape \[batch, 1\], got shape \(2, "),
    (np.ones([2, 1]), np.ones([3, 3, 1]),
     r"observations must have shape \[2 \(theta's batch\), num_obs, 1\], got shape \(3, 3, 1\)"),
    (np.ones([2, 1]), np.ones([2, 3]), r"observations must have shape .* got shape \(2, 3\)"),
    (np.full([2, 1], np.nan), np.ones([2, 3, 1]), "theta contains NaN/inf values"),
    (np.ones([2, 1]), -np.ones([2, 3, 1]), "observations must be >= 0 for this machine"),
])
def test_log_prob_names_a_bad_argument(theta, observations, message):
  """A wrong shape failed inside the density's ops (`In[0] mismatch In[1] shape: 1 vs. 0
  [Op:MatrixTriangularSolve]`); negative counts were clamped to 0 by log1p."""
  estimator = PosteriorEstimator(get_simulator("poisson"), _small_config(density="gaussian"))
  with pytest.raises(ValueError, match=message):
    estimator.log_prob(theta, observations)

def test_observations_below_the_transform_domain_are_refused_not_clamped():
  """Negative observations under log1p used to be clamped to 0, silently: a Gaussian simulator's
  training pairs trained an estimator of nonsense, and negative data got an answer."""
  simulator = get_simulator("gaussian")
  estimator = PosteriorEstimator(simulator, _small_config(simulator="gaussian"))
  theta = simulator.prior.sample(8, seed=tf.constant([0, 1])).numpy()
  observations = simulator.simulate(theta, 10, tf.constant([2, 3])).numpy()
  with pytest.raises(ValueError, match=r"the training observations of simulator 'gaussian' must "
                                       r"be >= 0 for this machine \(it reads them through log1p\)"):
    estimator.adapt(theta, observations)
  poisson = PosteriorEstimator(get_simulator("poisson"), _small_config())
  with pytest.raises(ValueError, match=r"observations must be >= 0 .* first at \[0, 1, 0\] = -1"):
    poisson.posterior(np.array([[[1.0], [-1.0]]]))

def test_a_diverged_training_saves_nothing_as_trained_and_a_rerun_takes_new_settings(tmp_path):
  """Used to save an estimator of NaN weights as trained, with `"best_validation_loss": NaN` in
  its summary, and to score it; its workdir then refused any other learning rate."""
  workdir = str(tmp_path / "npe")
  diverging = _small_config(density="gaussian", num_problems=100, num_obs=20, epochs=2,
                            learning_rate=1e30)
  with pytest.raises(FloatingPointError, match="diverged.*learning_rate=1e\\+30.*smaller"):
    npe_training.train_npe(diverging, workdir)
  assert not npe_training.is_trained(workdir)
  assert not os.path.exists(os.path.join(workdir, npe_training.STATE_DIR))
  # A batch beyond the training pairs is all of them (it used to overflow inside Keras).
  fixed = dataclasses.replace(diverging, learning_rate=1e-3, batch_size=10 ** 20)
  run = npe_training.train_npe(fixed, workdir)
  assert math.isfinite(run.summary["best_validation_loss"])
  with open(os.path.join(workdir, npe_training.CONFIG_FILE)) as stream:
    assert NPEConfig(**json.load(stream)) == fixed


def test_training_pairs_beyond_memory_are_refused_before_anything_is_written(tmp_path):
  """The refusal used to come after `npe_config.json` was written, and the rerun with a
  fixable num_problems was then refused as another configuration."""
  workdir = tmp_path / "npe"
  with pytest.raises(ValueError, match=r"num_problems=100000000000 training pairs of "
                                       r"num_obs=50 observations needs about .* GiB"):
    npe_training.train_npe(_small_config(num_problems=10 ** 11), str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize("content, message", [
    ("[1,", "is damaged: not valid JSON"),
    ('{"training_simulations": 5}',
     "is damaged: expected a number in 'training_seconds', got None"),
])
def test_a_damaged_training_summary_is_named(tmp_path, content, message):
  """Used to fail with a bare JSON error, or a KeyError traceback from alfi-npe."""
  (tmp_path / npe_training.SUMMARY_FILE).write_text(content)
  with pytest.raises(ValueError, match=f"training_summary.json {message}"):
    npe_training.read_summary(str(tmp_path))


def test_posterior_takes_the_seed_alfi_npe_derives_from_the_top_test_seed():
  """alfi-npe scores with `--test_seed + 1`: a --test_seed at the top of its range used to train
  the estimator and then fail with a seed the user never gave."""
  estimator = PosteriorEstimator(get_simulator("poisson"), _small_config(density="gaussian"))
  observations = np.ones([1, 4, 1], np.float32)
  assert estimator.posterior(observations, 2, seed=SEED_RANGE[1] + 1).samples.shape == (1, 2, 1)


def test_npe_binary_refuses_test_problems_beyond_memory_before_training(tmp_path):
  """Used to train the estimator first, and be refused when drawing the held-out problems."""
  assert_rejected("experiments.npe", [
      (["--test_problems=100000000000"], "--test_problems=100000000000 held-out problems of 20 "
                                         "observations needs about"),
  ], ["--simulator=poisson", "--num_obs=20", "--num_problems=32", "--epochs=1"], tmp_path)



def test_npe_binary_refuses_a_bad_verbose_and_a_directory_at_its_metrics_before_training(
    tmp_path):
  """--verbose=7 used to be handed to Keras, which took it; a directory at metrics.json failed
  only after training, as `[Errno 21] Is a directory: '.../.tmp-...' -> '.../metrics.json'`."""
  tiny = ["--simulator=poisson", "--num_obs=20", "--num_problems=32", "--epochs=1"]
  workdir = tmp_path / "npe"
  (workdir / "metrics.json").mkdir(parents=True)
  assert_refused("experiments.npe", [
      ([*tiny, "--verbose=7", f"--workdir={tmp_path / 'loud'}"],
       "--verbose must be one of (0, 1, 2)"),
      ([*tiny, f"--workdir={workdir}"],
       f"error: {workdir / 'metrics.json'} is a directory, where the estimator's scores would "
       "be written as a file")])
  assert os.listdir(workdir) == ["metrics.json"] and not (tmp_path / "loud").exists()


@pytest.mark.parametrize("verbose", [3, -1, "2", True])
def test_train_npe_refuses_a_verbosity_keras_does_not_know(tmp_path, verbose):
  with pytest.raises(ValueError, match=re.escape("verbose must be one of (0, 1, 2)")):
    npe_training.train_npe(NPEConfig(num_problems=2, num_obs=2), str(tmp_path / "npe"),
                           verbose=verbose)
  assert not (tmp_path / "npe").exists()

def test_npe_binary_warns_that_a_trained_workdir_is_scored_with_its_own_settings(tmp_path):
  """Flags asking for another estimator than the trained one were silently ignored."""
  tiny = ["--simulator=poisson", "--num_obs=20", "--num_problems=32", "--epochs=1",
          "--density=gaussian", "--encoder_hidden=8", "--encoder_out=4", "--context_hidden=8",
          "--test_problems=8", "--verbose=0", f"--workdir={tmp_path / 'npe'}"]
  assert run("experiments.npe", *tiny).returncode == 0
  again = run("experiments.npe", *tiny, "--num_problems=64")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "trained with other settings, scored as it is: --num_problems=32 (not 64)" in again.stderr
  assert "NPE (gaussian, 640 training simulations)" in again.stdout


@pytest.mark.parametrize("state, message", [
    ({"stage": 0, "epoch": 1, "losses": [[1.0]]}, "'finished' is None"),
    ({"stage": 0, "epoch": 1, "finished": False, "losses": [[1.0]], "seconds": 1.0,
      "weights": "stage0-epoch1.weights.h5", "best_weights": None, "rules": {}},
     "its weights file stage0-epoch1.weights.h5 is missing"),
    ({"stage": 0, "epoch": 1, "finished": False, "losses": [[1.0]], "seconds": 1.0,
      "weights": npe_training.STATE_FILE, "best_weights": None, "rules": {}},
     "the rules' state lacks ReduceLROnPlateau's"),
])
def test_a_damaged_training_state_is_named(tmp_path, state, message):
  """Used to fail with a KeyError traceback, or Keras' error for a missing file, on resuming."""
  config = _small_config(density="gaussian")
  (tmp_path / npe_training.CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config)))
  (tmp_path / npe_training.STATE_DIR).mkdir()
  (tmp_path / npe_training.STATE_DIR / npe_training.STATE_FILE).write_text(json.dumps(state))
  with pytest.raises(ValueError, match=f"state.json is damaged: {re.escape(message)}"):
    npe_training.train_npe(config, str(tmp_path))
