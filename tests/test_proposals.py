"""Tests of the proposal families: the interface contract for every family, then the diagonal
Gaussian's closed forms (log-density, score, sampling).

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

from alfi_tf.config import PROPOSALS
from alfi_tf.model.machine import standardize_over_samples
from alfi_tf.model.proposals import FAMILIES, get_proposal
from alfi_tf.model.proposals.diagonal_gaussian import DiagonalGaussian, join_psi, split_psi

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


def _our_log_prob(theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
  return DiagonalGaussian(theta.shape[-1]).log_prob(theta, psi)


def _tfp_log_prob(theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
  mean, log_scale = split_psi(psi)
  return tfd.MultivariateNormalDiag(loc=mean, scale_diag=tf.exp(log_scale)).log_prob(theta)


# --- log q(theta | psi) and its score. ---

def test_split_and_join_psi_round_trip():
  psi = tf.reshape(tf.range(12, dtype=tf.float32), [2, 6])
  mean, log_scale = split_psi(psi)
  np.testing.assert_array_equal(mean.numpy(), [[0, 1, 2], [6, 7, 8]])
  np.testing.assert_array_equal(log_scale.numpy(), [[3, 4, 5], [9, 10, 11]])
  np.testing.assert_array_equal(join_psi(mean, log_scale).numpy(), psi.numpy())


def test_log_prob_by_hand():
  # theta = mu + 2 sigma in one dimension, sigma = e^0.5: log q = -0.5 * 4 - 0.5 - log sqrt(2 pi).
  psi = tf.constant([[1.0, 0.5]])
  theta = tf.constant([[1.0 + 2.0 * math.exp(0.5)]])
  np.testing.assert_allclose(DiagonalGaussian(theta.shape[-1]).log_prob(theta, psi).numpy(), [-2.5 - HALF_LOG_TWO_PI],
                             rtol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("d", [1, 3])
def test_log_prob_matches_tfp(d, dtype):
  theta, psi = _random_theta_psi(d, dtype=dtype)
  rtol, atol = TOLERANCES[dtype]
  expected = _tfp_log_prob(theta, psi[:, tf.newaxis])
  actual = DiagonalGaussian(theta.shape[-1]).log_prob(theta, psi[:, tf.newaxis])
  assert actual.shape == (3, 4)
  np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("log_density", [_our_log_prob, _tfp_log_prob], ids=["ours", "tfp"])
def test_score_is_the_gradient_of_the_log_density(log_density, d, dtype):
  theta, psi = _random_theta_psi(d, dtype=dtype, seed=d)
  rtol, atol = TOLERANCES[dtype]
  # One copy of psi per sample: the gradient of the sum w.r.t. a copy is that sample's score.
  tiled = tf.tile(psi[:, tf.newaxis], [1, theta.shape[1], 1])
  with tf.GradientTape() as tape:
    tape.watch(tiled)
    total = tf.reduce_sum(log_density(theta, tiled))
  expected = tape.gradient(total, tiled)
  score = DiagonalGaussian(d).score(theta, psi)
  assert score.shape == (3, 4, 2 * d)
  np.testing.assert_allclose(score.numpy(), expected.numpy(), rtol=rtol, atol=atol)


def test_score_by_hand():
  # theta = mu + 2 sigma, sigma = e^0.5: d/dmu = 2 / sigma, d/dlog sigma = 2^2 - 1.
  psi = tf.constant([[1.0, 0.5]])
  theta = tf.constant([[[1.0 + 2.0 * math.exp(0.5)]]])
  np.testing.assert_allclose(DiagonalGaussian(1).score(theta, psi).numpy(), [[[2.0 / math.exp(0.5), 3.0]]],
                             rtol=1e-6)


# --- Sampling. ---

def test_sample_shape_and_moments():
  psi = tf.constant([[0.0, -1.0, 0.0, 0.5], [3.0, 2.0, -2.0, 1.0]])
  num_samples = 20000
  samples = DiagonalGaussian(2).sample(psi, num_samples, _seed(1)).numpy().astype(np.float64)
  assert samples.shape == (2, num_samples, 2)
  mean, scale = psi.numpy()[:, :2], np.exp(psi.numpy()[:, 2:])
  # SE of the sample mean: sigma / sqrt(M); of the sample std of a Gaussian: sigma / sqrt(2M).
  deviation = (samples.mean(axis=1) - mean) / (scale / math.sqrt(num_samples))
  assert np.all(np.abs(deviation) < TOLERANCE_SE), deviation
  deviation = (samples.std(axis=1) - scale) / (scale / math.sqrt(2 * num_samples))
  assert np.all(np.abs(deviation) < TOLERANCE_SE), deviation


def test_sample_is_a_function_of_the_seed():
  _, psi = _random_theta_psi(2, dtype=tf.float32)
  first = DiagonalGaussian(2).sample(psi, 5, _seed(3)).numpy()
  np.testing.assert_array_equal(first, DiagonalGaussian(2).sample(psi, 5, _seed(3)).numpy())
  assert not np.array_equal(first, DiagonalGaussian(2).sample(psi, 5, _seed(4)).numpy())


def test_sample_passes_no_gradient_to_psi():
  _, psi = _random_theta_psi(2, dtype=tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(psi)
    total = tf.reduce_sum(DiagonalGaussian(2).sample(psi, 5, _seed(3)))
  gradient = tape.gradient(total, psi)
  assert gradient is None or not np.any(gradient.numpy())


def test_standardize_over_samples():
  rng = np.random.default_rng(5)
  features = tf.constant(rng.normal(3.0, [0.5, 2.0, 10.0], size=(4, 16, 3)), tf.float32)
  standardized = standardize_over_samples(features).numpy()
  assert standardized.shape == (4, 16, 3)
  np.testing.assert_allclose(standardized.mean(axis=1), 0.0, atol=1e-5)
  # The epsilon shrinks the std by ~epsilon / (2 variance) <= 2e-5 here.
  np.testing.assert_allclose(standardized.std(axis=1), 1.0, rtol=1e-4)
  # An affine map of each problem's features within the problem: order is preserved.
  np.testing.assert_array_equal(np.argsort(standardized, axis=1),
                                np.argsort(features.numpy(), axis=1))


def test_standardize_over_samples_of_a_constant_feature_is_zero():
  features = tf.fill([2, 5, 1], 7.0)
  np.testing.assert_array_equal(standardize_over_samples(features).numpy(), 0.0)


# --- The interface, for every family. ---

FAMILY_NAMES = sorted(FAMILIES)


def test_config_lists_every_family():
  assert sorted(PROPOSALS) == FAMILY_NAMES


def test_unknown_family_is_named():
  with pytest.raises(ValueError, match="unknown proposal 'banana'; valid names are: diagonal_gaussian"):
    get_proposal("banana", 2)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_initial_psi_is_centred_with_the_initial_scale(name):
  family = get_proposal(name, 3)
  mean = tf.constant([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
  psi = family.initial_psi(mean, 0.25)
  assert psi.shape == (2, family.psi_size)
  np.testing.assert_allclose(family.mean(psi).numpy(), mean.numpy(), rtol=1e-6)
  np.testing.assert_allclose(family.stddev(psi).numpy(), 0.25, rtol=1e-6)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_raw_moments_undo_the_standardisation(name):
  family = get_proposal(name, 2)
  psi = family.initial_psi(tf.constant([[1.0, -2.0]]), 0.5)
  mean, std = family.raw_moments(psi, tf.constant([10.0, 0.0]), tf.constant([2.0, 3.0]))
  np.testing.assert_allclose(mean.numpy(), [[12.0, -6.0]], rtol=1e-6)
  np.testing.assert_allclose(std.numpy(), [[1.0, 1.5]], rtol=1e-6)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_score_is_the_autodiff_gradient_for_every_family(name):
  family = get_proposal(name, 2)
  rng = np.random.default_rng(7)
  psi = family.initial_psi(tf.constant(rng.normal(size=(3, 2)), tf.float64), 0.7)
  psi = psi + tf.constant(0.1 * rng.normal(size=psi.shape), tf.float64)
  theta = tf.constant(rng.normal(size=(3, 4, 2)), tf.float64)
  tiled = tf.tile(psi[:, tf.newaxis], [1, 4, 1])
  with tf.GradientTape() as tape:
    tape.watch(tiled)
    total = tf.reduce_sum(family.log_prob(theta, tiled))
  np.testing.assert_allclose(family.score(theta, psi).numpy(), tape.gradient(total, tiled).numpy(),
                             rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_samples_have_the_family_mean_and_stddev(name):
  family = get_proposal(name, 2)
  psi = family.initial_psi(tf.constant([[1.0, -3.0]]), 0.5)
  num_samples = 20000
  samples = family.sample(psi, num_samples, _seed(9)).numpy().astype(np.float64)
  assert samples.shape == (1, num_samples, 2)
  mean, std = family.mean(psi).numpy(), family.stddev(psi).numpy()
  deviation = (samples.mean(axis=1) - mean) / (std / math.sqrt(num_samples))
  assert np.all(np.abs(deviation) < TOLERANCE_SE), deviation
