"""The Gaussian proposal `q(theta | psi)`, `psi = (mu, log sigma)`, and its score.

`psi` always lives in *standardised* parameter space (see `normalization.py`); it is a `[..., 2d]`
tensor whose first half is the mean and second half the log standard deviation.
"""

from __future__ import annotations

import math
from typing import Tuple

import tensorflow as tf

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def split_psi(psi: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Splits `psi [..., 2d]` into `(mean [..., d], log_scale [..., d])`."""
  mean, log_scale = tf.split(psi, 2, axis=-1)
  return mean, log_scale


def join_psi(mean: tf.Tensor, log_scale: tf.Tensor) -> tf.Tensor:
  """Inverse of `split_psi`."""
  return tf.concat([mean, log_scale], axis=-1)


def sample(psi: tf.Tensor, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
  """Draws `theta_j ~ q(theta | psi)`.

  The samples are *not* reparameterised: gradients do not flow through them (spec §2.1), because the
  simulator they feed is not differentiable anyway; the machine learns from the score features instead.

  Args:
    psi: `[batch, 2d]`.
    num_samples: `M`.
    seed: int32 `[2]` stateless seed.

  Returns:
    `[batch, M, d]` samples.
  """
  mean, log_scale = split_psi(tf.stop_gradient(psi))
  noise = tf.random.stateless_normal(
      tf.concat([tf.shape(mean)[:1], [num_samples], tf.shape(mean)[1:]], axis=0), seed=seed)
  return mean[:, tf.newaxis] + tf.exp(log_scale)[:, tf.newaxis] * noise


def log_prob(theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
  """`log q(theta | psi)` summed over the `d` dimensions; `theta [..., d]`, `psi [..., 2d]` broadcast."""
  mean, log_scale = split_psi(psi)
  z = (theta - mean) * tf.exp(-log_scale)
  return tf.reduce_sum(-0.5 * tf.square(z) - log_scale - _HALF_LOG_TWO_PI, axis=-1)


def score(theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
  """`grad_psi log q(theta | psi)` in closed form.

  `d/dmu = (theta - mu) / sigma^2` and `d/dlog sigma = ((theta - mu) / sigma)^2 - 1`.

  Args:
    theta: `[batch, M, d]`.
    psi: `[batch, 2d]`.

  Returns:
    `[batch, M, 2d]`.
  """
  mean, log_scale = split_psi(psi[:, tf.newaxis])
  inverse_scale = tf.exp(-log_scale)
  z = (theta - mean) * inverse_scale
  return tf.concat([z * inverse_scale, tf.square(z) - 1.0], axis=-1)


def standardize_over_samples(features: tf.Tensor, epsilon: float = 1e-5) -> tf.Tensor:
  """Zero mean, unit std across the `M` samples of each problem: `[batch, M, k] -> [batch, M, k]`."""
  mean, variance = tf.nn.moments(features, axes=[1], keepdims=True)
  return (features - mean) * tf.math.rsqrt(variance + epsilon)
