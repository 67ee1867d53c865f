"""Tests of the meta-training losses: per-step losses, their weights over time, the meta-loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from alfi_tf.model import losses
from alfi_tf.model.proposals.diagonal_gaussian import DiagonalGaussian

HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)
GAUSSIAN_1D, GAUSSIAN_2D = DiagonalGaussian(1), DiagonalGaussian(2)


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
  actual = losses.step_losses(tf.constant(THETA, tf.float32), tf.constant(PSI, tf.float32), kind,
                              GAUSSIAN_2D)
  assert actual.shape == (2, 2)
  np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_step_nll_literal_value():
  # theta* = 0, mu = 1, sigma = 1 in one dimension: 0.5 + log sqrt(2 pi).
  actual = losses.step_losses(tf.constant([[0.0]]), tf.constant([[[1.0, 0.0]]]), "nll",
                              GAUSSIAN_1D)
  np.testing.assert_allclose(actual.numpy(), [[1.4189385]], rtol=1e-6)


def test_step_losses_unknown_kind_raises():
  with pytest.raises(ValueError, match="unknown loss 'huber'"):
    losses.step_losses(tf.constant(THETA, tf.float32), tf.constant(PSI, tf.float32), "huber",
                       GAUSSIAN_2D)


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


@pytest.mark.parametrize("beta, expected", [
    (0.0, [0.0, 1 / 6, 2 / 6, 3 / 6]),     # the linear limit; 0 / 0 gave NaN weights
    (1e-9, [0.0, 1 / 6, 2 / 6, 3 / 6]),
    (710.0, [0.0, 0.0, 0.0, 1.0]),        # inf / inf gave NaN from here on
    (1e6, [0.0, 0.0, 0.0, 1.0]),
    (-1e6, [0.0, 1 / 3, 1 / 3, 1 / 3]),
])
def test_exp_time_weights_are_their_limits_where_the_ramp_degenerates(beta, expected):
  np.testing.assert_allclose(losses.time_weights("exp", 4, beta), expected, atol=1e-6)


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
