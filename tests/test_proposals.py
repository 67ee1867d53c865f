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
from alfi_tf.model.proposals import FAMILIES, Proposal, get_proposal
from alfi_tf.model.proposals.diagonal_gaussian import DiagonalGaussian, join_psi, split_psi
from alfi_tf.model.proposals import (FixedVarianceGaussian, FullCovarianceGaussian,
                                     GaussianMixture, Point)

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
DENSITIES = [name for name in FAMILY_NAMES if FAMILIES[name].has_density]


def _perturbed_psi(family: Proposal, batch: int, seed: int, dtype=tf.float64) -> tf.Tensor:
  """An initial `psi` moved by noise in every coordinate (correlations, unequal weights...)."""
  rng = np.random.default_rng(seed)
  psi = family.initial_psi(tf.constant(rng.normal(size=(batch, family.parameter_dim)), dtype))
  return psi + tf.constant(0.3 * rng.normal(size=psi.shape), dtype)


def test_config_lists_every_family():
  assert sorted(PROPOSALS) == FAMILY_NAMES


def test_unknown_family_is_named():
  with pytest.raises(ValueError, match="unknown proposal 'banana'; valid names are: diagonal_gaussian"):
    get_proposal("banana", 2)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_initial_psi_is_centred_with_the_initial_scale(name):
  family = get_proposal(name, 3, initial_scale=0.25)
  mean = tf.constant([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
  psi = family.initial_psi(mean)
  assert psi.shape == (2, family.psi_size)
  np.testing.assert_allclose(family.mean(psi).numpy(), mean.numpy(), rtol=1e-6, atol=1e-6)
  expected_std = 0.25 if family.has_density else 0.0
  np.testing.assert_allclose(family.stddev(psi).numpy(), expected_std, rtol=1e-5)


@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("name", DENSITIES)
def test_closed_form_score_is_the_autodiff_gradient(name, d):
  family = get_proposal(name, d, initial_scale=0.7)
  psi = _perturbed_psi(family, 3, seed=d)
  theta = tf.constant(np.random.default_rng(7).normal(size=(3, 4, d)), tf.float64)
  closed_form = family.score(theta, psi)
  assert closed_form.shape == (3, 4, family.psi_size)
  # `Proposal.score` is the interface's autodiff default, which the families override.
  np.testing.assert_allclose(closed_form.numpy(), Proposal.score(family, theta, psi).numpy(),
                             rtol=1e-9, atol=1e-11)


def _tfp_distribution(family: Proposal, psi: tf.Tensor) -> tfd.Distribution:
  """The same distribution built from TFP's own parts."""
  if isinstance(family, FullCovarianceGaussian):
    mean, scale_tril, _ = family.split(psi)
    return tfd.MultivariateNormalTriL(mean, scale_tril)
  if isinstance(family, GaussianMixture):
    logits, means, log_scales = family.split(psi)
    return tfd.MixtureSameFamily(tfd.Categorical(logits=logits),
                                 tfd.MultivariateNormalDiag(means, tf.exp(log_scales)))
  return tfd.MultivariateNormalDiag(family.mean(psi), family.stddev(psi))


@pytest.mark.parametrize("name", DENSITIES)
def test_log_prob_matches_tfp(name):
  family = get_proposal(name, 3, initial_scale=0.4)
  psi = _perturbed_psi(family, 5, seed=11)
  theta = tf.constant(np.random.default_rng(3).normal(size=(5, 3)), tf.float64)
  np.testing.assert_allclose(family.log_prob(theta, psi).numpy(),
                             _tfp_distribution(family, psi).log_prob(theta).numpy(), rtol=1e-10)


@pytest.mark.parametrize("name", DENSITIES)
def test_density_integrates_to_one(name):
  family = get_proposal(name, 2, initial_scale=0.5)
  psi = _perturbed_psi(family, 1, seed=5)
  grid = np.linspace(-8.0, 8.0, 401)
  theta = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
  density = np.exp(family.log_prob(tf.constant(theta), psi).numpy())
  assert abs(density.sum() * (grid[1] - grid[0]) ** 2 - 1.0) < 1e-4


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_samples_have_the_family_mean_and_stddev(name):
  family = get_proposal(name, 2, initial_scale=0.5)
  psi = tf.cast(_perturbed_psi(family, 2, seed=13), tf.float32)
  num_samples = 40000
  samples = family.sample(psi, num_samples, _seed(9)).numpy().astype(np.float64)
  assert samples.shape == (2, num_samples, 2)
  mean, std = family.mean(psi).numpy(), family.stddev(psi).numpy()
  if not family.has_density:   # a point mass: every sample is the mean
    np.testing.assert_array_equal(samples, np.broadcast_to(mean[:, np.newaxis], samples.shape))
    return
  deviation = (samples.mean(axis=1) - mean) / (std / math.sqrt(num_samples))
  assert np.all(np.abs(deviation) < TOLERANCE_SE), deviation
  # SE of the sample variance, from the sample's fourth central moment (mixtures are not Gaussian).
  centred = samples - samples.mean(axis=1, keepdims=True)
  variance_se = np.sqrt((np.mean(centred ** 4, axis=1) - np.var(samples, axis=1) ** 2) / num_samples)
  deviation = (np.var(samples, axis=1) - std ** 2) / variance_se
  assert np.all(np.abs(deviation) < TOLERANCE_SE), deviation


def test_full_covariance_samples_have_its_correlation():
  family = FullCovarianceGaussian(2)
  # L = [[1, 0], [.8, .5]], its diagonal in log space, packed as tfp.math.fill_triangular reads it.
  packed = tfp.math.fill_triangular_inverse(tf.constant([[[0.0, 0.0], [0.8, math.log(0.5)]]]))
  psi = tf.concat([tf.zeros([1, 2]), packed], axis=-1)
  covariance = family.covariance(psi).numpy()[0]
  np.testing.assert_allclose(covariance, [[1.0, 0.8], [0.8, 0.89]], rtol=1e-6)
  samples = family.sample(psi, 40000, _seed(2)).numpy()[0].astype(np.float64)
  correlation = np.corrcoef(samples.T)[0, 1]
  expected = 0.8 / math.sqrt(0.89)
  # SE of a sample correlation: (1 - rho^2) / sqrt(M).
  assert abs(correlation - expected) < TOLERANCE_SE * (1 - expected ** 2) / math.sqrt(40000)


def test_mixture_components_start_apart_with_equal_weights():
  family = GaussianMixture(2, initial_scale=0.4, num_components=4)
  logits, means, log_scales = family.split(family.initial_psi(tf.constant([[1.0, 2.0]])))
  np.testing.assert_array_equal(logits.numpy(), 0.0)
  assert len({tuple(row) for row in means.numpy()[0].round(6)}) == 4
  np.testing.assert_allclose(np.exp(log_scales.numpy()), 0.4 * math.sqrt(0.5), rtol=1e-6)


def test_fixed_variance_keeps_its_spread():
  family = FixedVarianceGaussian(2, initial_scale=0.3)
  psi = tf.constant([[1.0, 2.0]])
  np.testing.assert_allclose(family.stddev(psi + 5.0).numpy(), 0.3, rtol=1e-6)
  assert family.psi_size == 2


def test_point_has_no_density_and_zero_scores():
  family = Point(2)
  psi = tf.constant([[1.0, 2.0]])
  theta = family.sample(psi, 3, _seed(1))
  np.testing.assert_array_equal(family.score(theta, psi).numpy(), 0.0)
  with pytest.raises(ValueError, match="has no density"):
    family.log_prob(theta, psi)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_sample_is_a_function_of_the_seed_for_every_family(name):
  family = get_proposal(name, 2, initial_scale=0.5)
  psi = tf.cast(_perturbed_psi(family, 2, seed=1), tf.float32)
  first = family.sample(psi, 6, _seed(3)).numpy()
  np.testing.assert_array_equal(first, family.sample(psi, 6, _seed(3)).numpy())
  if family.has_density:
    assert not np.array_equal(first, family.sample(psi, 6, _seed(4)).numpy())


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_update_units_are_positive_and_shaped_like_psi(name):
  family = get_proposal(name, 3, initial_scale=0.5)
  psi = tf.reshape(_perturbed_psi(family, 6, seed=2), [2, 3, family.psi_size])   # with a time axis
  units = family.update_units(psi).numpy()
  assert units.shape == psi.shape
  assert np.all(np.isfinite(units)) and np.all(units > 0)


@pytest.mark.parametrize("name", ["diagonal_gaussian", "full_covariance_gaussian",
                                  "fixed_variance_gaussian"])
def test_one_unit_moves_a_gaussians_mean_by_its_standard_deviation(name):
  family = get_proposal(name, 3, initial_scale=0.5)
  psi = _perturbed_psi(family, 4, seed=3)
  location = tf.constant([1.0] * 3 + [0.0] * (family.psi_size - 3), psi.dtype)
  moved = psi + family.update_units(psi) * location
  np.testing.assert_allclose((family.mean(moved) - family.mean(psi)).numpy(),
                             family.stddev(psi).numpy(), rtol=1e-6)
  np.testing.assert_allclose(family.stddev(moved).numpy(), family.stddev(psi).numpy(), rtol=1e-6)


def test_one_unit_moves_each_mixture_component_by_its_own_spread():
  family = GaussianMixture(2, initial_scale=0.5, num_components=3)
  psi = _perturbed_psi(family, 4, seed=4)
  location = tf.constant([0.0] * 3 + [1.0] * 6 + [0.0] * 6, psi.dtype)
  logits, means, log_scales = family.split(psi)
  moved_logits, moved_means, moved_log_scales = family.split(
      psi + family.update_units(psi) * location)
  np.testing.assert_allclose((moved_means - means).numpy(), np.exp(log_scales.numpy()), rtol=1e-6)
  np.testing.assert_array_equal(moved_logits.numpy(), logits.numpy())
  np.testing.assert_array_equal(moved_log_scales.numpy(), log_scales.numpy())


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_translation_shifts_the_distribution(name):
  """`q(theta + s | psi + translation(s)) = q(theta | psi)`: the mean moves by `s`, nothing
  else changes (`regression_shortcut` moves proposals through it)."""
  family = get_proposal(name, 3, initial_scale=0.5)
  psi = tf.reshape(_perturbed_psi(family, 6, seed=5), [2, 3, family.psi_size])   # with a time axis
  step = tf.constant(np.random.default_rng(6).normal(size=(2, 3, 3)), psi.dtype)
  moved = psi + family.translation(step)
  assert moved.shape == psi.shape
  np.testing.assert_allclose((family.mean(moved) - family.mean(psi)).numpy(), step.numpy(),
                             rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(family.stddev(moved).numpy(), family.stddev(psi).numpy(), rtol=1e-10)
  if family.has_density:
    theta = tf.constant(np.random.default_rng(7).normal(size=(2, 3, 3)), psi.dtype)
    np.testing.assert_allclose(family.log_prob(theta + step, moved).numpy(),
                               family.log_prob(theta, psi).numpy(), rtol=1e-10)
