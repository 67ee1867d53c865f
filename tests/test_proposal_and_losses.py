"""Tests of the Gaussian proposal (log-density, score, sampling) and of the meta-training losses.

Closed forms are checked against automatic differentiation, TFP and numbers worked out by hand;
sampling checks compare sample moments with the truth in units of their standard error, with fixed
seeds, so they are deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf import losses, proposal

tfd = tfp.distributions

HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)
# Deviations beyond this many standard errors fail a statistical check.
TOLERANCE_SE = 5.0
# (rtol, atol) for comparing closed forms with autodiff / TFP in each precision.
TOLERANCES = {tf.float32: (1e-5, 1e-5), tf.float64: (1e-10, 1e-12)}


def _seed(a: int, b: int = 0) -> tf.Tensor:
  return tf.constant([a, b], tf.int32)


def _random_theta_psi(d: int, batch: int = 3, num_samples: int = 4, dtype=tf.float64, seed: int = 0):
  """`theta [batch, M, d]` around `psi [batch, 2d]`, with log-scales spread over (-1, 1)."""
  rng = np.random.default_rng(seed)
  mean = rng.normal(size=(batch, d))
  log_scale = rng.uniform(-1.0, 1.0, size=(batch, d))
  theta = mean[:, np.newaxis] + 2.0 * np.exp(log_scale)[:, np.newaxis] * rng.normal(
      size=(batch, num_samples, d))
  return (tf.constant(theta, dtype), tf.constant(np.concatenate([mean, log_scale], -1), dtype))


def _tfp_log_prob(theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
  mean, log_scale = proposal.split_psi(psi)
  return tfd.MultivariateNormalDiag(loc=mean, scale_diag=tf.exp(log_scale)).log_prob(theta)


# --- log q(theta | psi) and its score. ---

def test_split_and_join_psi_round_trip():
  psi = tf.reshape(tf.range(12, dtype=tf.float32), [2, 6])
  mean, log_scale = proposal.split_psi(psi)
  np.testing.assert_array_equal(mean.numpy(), [[0, 1, 2], [6, 7, 8]])
  np.testing.assert_array_equal(log_scale.numpy(), [[3, 4, 5], [9, 10, 11]])
  np.testing.assert_array_equal(proposal.join_psi(mean, log_scale).numpy(), psi.numpy())


def test_log_prob_by_hand():
  # theta = mu + 2 sigma in one dimension, sigma = e^0.5: log q = -0.5 * 4 - 0.5 - log sqrt(2 pi).
  psi = tf.constant([[1.0, 0.5]])
  theta = tf.constant([[1.0 + 2.0 * math.exp(0.5)]])
  np.testing.assert_allclose(proposal.log_prob(theta, psi).numpy(), [-2.5 - HALF_LOG_TWO_PI],
                             rtol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("d", [1, 3])
def test_log_prob_matches_tfp(d, dtype):
  theta, psi = _random_theta_psi(d, dtype=dtype)
  rtol, atol = TOLERANCES[dtype]
  expected = _tfp_log_prob(theta, psi[:, tf.newaxis])
  actual = proposal.log_prob(theta, psi[:, tf.newaxis])
  assert actual.shape == (3, 4)
  np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("log_density", [proposal.log_prob, _tfp_log_prob], ids=["ours", "tfp"])
def test_score_is_the_gradient_of_the_log_density(log_density, d, dtype):
  theta, psi = _random_theta_psi(d, dtype=dtype, seed=d)
  rtol, atol = TOLERANCES[dtype]
  # One copy of psi per sample: the gradient of the sum w.r.t. a copy is that sample's score.
  tiled = tf.tile(psi[:, tf.newaxis], [1, theta.shape[1], 1])
  with tf.GradientTape() as tape:
    tape.watch(tiled)
    total = tf.reduce_sum(log_density(theta, tiled))
  expected = tape.gradient(total, tiled)
  score = proposal.score(theta, psi)
  assert score.shape == (3, 4, 2 * d)
  np.testing.assert_allclose(score.numpy(), expected.numpy(), rtol=rtol, atol=atol)


def test_score_by_hand():
  # theta = mu + 2 sigma, sigma = e^0.5: d/dmu = 2 / sigma, d/dlog sigma = 2^2 - 1.
  psi = tf.constant([[1.0, 0.5]])
  theta = tf.constant([[[1.0 + 2.0 * math.exp(0.5)]]])
  np.testing.assert_allclose(proposal.score(theta, psi).numpy(), [[[2.0 / math.exp(0.5), 3.0]]],
                             rtol=1e-6)


# --- Sampling. ---

def test_sample_shape_and_moments():
  psi = tf.constant([[0.0, -1.0, 0.0, 0.5], [3.0, 2.0, -2.0, 1.0]])
  num_samples = 20000
  samples = proposal.sample(psi, num_samples, _seed(1)).numpy().astype(np.float64)
  assert samples.shape == (2, num_samples, 2)
  mean, scale = psi.numpy()[:, :2], np.exp(psi.numpy()[:, 2:])
  # SE of the sample mean: sigma / sqrt(M); of the sample std of a Gaussian: sigma / sqrt(2M).
  deviation = (samples.mean(axis=1) - mean) / (scale / math.sqrt(num_samples))
  assert np.all(np.abs(deviation) < TOLERANCE_SE), deviation
  deviation = (samples.std(axis=1) - scale) / (scale / math.sqrt(2 * num_samples))
  assert np.all(np.abs(deviation) < TOLERANCE_SE), deviation


def test_sample_is_a_function_of_the_seed():
  _, psi = _random_theta_psi(2, dtype=tf.float32)
  first = proposal.sample(psi, 5, _seed(3)).numpy()
  np.testing.assert_array_equal(first, proposal.sample(psi, 5, _seed(3)).numpy())
  assert not np.array_equal(first, proposal.sample(psi, 5, _seed(4)).numpy())


def test_sample_passes_no_gradient_to_psi():
  _, psi = _random_theta_psi(2, dtype=tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(psi)
    total = tf.reduce_sum(proposal.sample(psi, 5, _seed(3)))
  gradient = tape.gradient(total, psi)
  assert gradient is None or not np.any(gradient.numpy())


def test_standardize_over_samples():
  rng = np.random.default_rng(5)
  features = tf.constant(rng.normal(3.0, [0.5, 2.0, 10.0], size=(4, 16, 3)), tf.float32)
  standardized = proposal.standardize_over_samples(features).numpy()
  assert standardized.shape == (4, 16, 3)
  np.testing.assert_allclose(standardized.mean(axis=1), 0.0, atol=1e-5)
  # The epsilon shrinks the std by ~epsilon / (2 variance) <= 2e-5 here.
  np.testing.assert_allclose(standardized.std(axis=1), 1.0, rtol=1e-4)
  # An affine map of each problem's features within the problem: order is preserved.
  np.testing.assert_array_equal(np.argsort(standardized, axis=1),
                                np.argsort(features.numpy(), axis=1))


def test_standardize_over_samples_of_a_constant_feature_is_zero():
  features = tf.fill([2, 5, 1], 7.0)
  np.testing.assert_array_equal(proposal.standardize_over_samples(features).numpy(), 0.0)


# --- Per-step losses. ---

# Two problems, d = 2, T = 2; psi = (mu_1, mu_2, log sigma_1, log sigma_2).
THETA = np.array([[0.0, 1.0], [2.0, -1.0]])
PSI = np.array([[[1.0, 1.0, 0.0, 0.0], [0.5, -1.0, math.log(2.0), 0.0]],
                [[2.0, -1.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]])


def _hand_nll() -> np.ndarray:
  """`-log q(theta | psi_t)` written out term by term."""
  out = np.zeros((2, 2))
  for b in range(2):
    for t in range(2):
      for k in range(2):
        mu, sigma = PSI[b, t, k], math.exp(PSI[b, t, 2 + k])
        out[b, t] += 0.5 * ((THETA[b, k] - mu) / sigma) ** 2 + math.log(sigma) + HALF_LOG_TWO_PI
  return out


@pytest.mark.parametrize("kind, expected", [
    # Squared / absolute errors of the means, summed over d: by hand.
    ("mse", [[1.0 + 0.0, 0.25 + 4.0], [0.0 + 0.0, 4.0 + 1.0]]),
    ("l1", [[1.0 + 0.0, 0.5 + 2.0], [0.0 + 0.0, 2.0 + 1.0]]),
    ("nll", _hand_nll()),
])
def test_step_losses(kind, expected):
  actual = losses.step_losses(tf.constant(THETA, tf.float32), tf.constant(PSI, tf.float32), kind)
  assert actual.shape == (2, 2)
  np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_step_nll_literal_value():
  # theta* = 0, mu = 1, sigma = 1 in one dimension: 0.5 + log sqrt(2 pi).
  actual = losses.step_losses(tf.constant([[0.0]]), tf.constant([[[1.0, 0.0]]]), "nll")
  np.testing.assert_allclose(actual.numpy(), [[1.4189385]], rtol=1e-6)


def test_step_losses_unknown_kind_raises():
  with pytest.raises(ValueError, match="unknown loss 'huber'"):
    losses.step_losses(tf.constant(THETA, tf.float32), tf.constant(PSI, tf.float32), "huber")


# --- Weights over time. ---

def test_exp_time_weights_by_hand():
  s = [0.0, 0.25, 0.5, 0.75, 1.0]
  ramp = [(math.exp(3.0 * x) - 1.0) / (math.exp(3.0) - 1.0) for x in s]
  expected = [r / sum(ramp) for r in ramp]
  weights = losses.time_weights("exp", 5, beta=3.0)
  assert weights.dtype == np.float32 and weights.shape == (5,)
  np.testing.assert_allclose(weights, expected, rtol=1e-6, atol=1e-7)
  # The same numbers written out (computed once, independently of either formula above).
  np.testing.assert_allclose(weights, [0.0, 0.0347197, 0.1082212, 0.2638240, 0.5932351], atol=1e-6)


@pytest.mark.parametrize("beta", [0.5, 3.0, 10.0])
@pytest.mark.parametrize("num_steps", [2, 5, 15])
def test_exp_time_weights_sum_to_one_and_increase(num_steps, beta):
  weights = losses.time_weights("exp", num_steps, beta)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
  assert weights[0] == 0.0 and np.all(np.diff(weights) > 0)


@pytest.mark.parametrize("kind, expected", [
    ("constant", [0.25, 0.25, 0.25, 0.25]),
    ("observed_improvement", [0.25, 0.25, 0.25, 0.25]),
    ("last", [0.0, 0.0, 0.0, 1.0]),
])
def test_fixed_time_weights(kind, expected):
  np.testing.assert_array_equal(losses.time_weights(kind, 4), np.float32(expected))


@pytest.mark.parametrize("kind", ["exp", "constant", "last"])
def test_time_weights_single_step(kind):
  np.testing.assert_array_equal(losses.time_weights(kind, 1), [1.0])


def test_time_weights_unknown_kind_raises():
  with pytest.raises(ValueError, match="unknown time weights 'linear'"):
    losses.time_weights("linear", 3)


# --- Combining the steps. ---

STEP_LOSSES = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 0.0, 4.0, 1.0, 3.0]])
EXP_WEIGHTS_5 = np.array([0.0, 0.0347197, 0.1082212, 0.2638240, 0.5932351])


@pytest.mark.parametrize("kind, expected", [
    ("constant", (3.0 + 2.0) / 2),
    ("last", (5.0 + 3.0) / 2),
    ("exp", float(np.mean(STEP_LOSSES @ EXP_WEIGHTS_5))),
])
def test_weighted_loss_fixed_weights(kind, expected):
  actual = losses.weighted_loss(tf.constant(STEP_LOSSES, tf.float32), kind)
  assert actual.shape == ()
  np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("initial, step_losses, expected", [
    # Running minimum (3), (3, 2), (3, 2, 4): (2-3) + (4-2) + (1-2) = 0.
    ([3.0], [[2.0, 4.0, 1.0]], 0.0),
    # The start is the best so far throughout: (2-1) + (0.5-1) + (3-0.5) = 3.
    ([1.0], [[2.0, 0.5, 3.0]], 3.0),
    # Mean over the batch of the two rows above.
    ([3.0, 1.0], [[2.0, 4.0, 1.0], [2.0, 0.5, 3.0]], 1.5),
    # A single step: only the start is compared with.
    ([5.0], [[2.0]], -3.0),
])
def test_weighted_loss_observed_improvement(initial, step_losses, expected):
  actual = losses.weighted_loss(tf.constant(step_losses), "observed_improvement",
                                initial_losses=tf.constant(initial))
  np.testing.assert_allclose(actual.numpy(), expected, atol=1e-6)


def test_observed_improvement_needs_initial_losses():
  with pytest.raises(ValueError, match="psi_0"):
    losses.weighted_loss(tf.constant(STEP_LOSSES), "observed_improvement")


def test_weighted_loss_unknown_kind_raises():
  with pytest.raises(ValueError, match="unknown time weights"):
    losses.weighted_loss(tf.constant(STEP_LOSSES), "linear")
