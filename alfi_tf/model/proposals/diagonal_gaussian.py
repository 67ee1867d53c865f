"""The diagonal Gaussian proposal of the paper, `q(theta | psi) = N(mu, diag(sigma^2))`.

`psi = (mu, log sigma)`, `[..., 2d]`: the first half is the mean, the second the log standard
deviation. The score has a closed form,

    d log q / d mu       = (theta - mu) / sigma^2,
    d log q / d log sigma = ((theta - mu) / sigma)^2 - 1,

so the machine's score features cost one elementwise pass.
"""

from __future__ import annotations

import math
from typing import Tuple

import tensorflow as tf

from alfi_tf.model.proposals.base import Proposal, sample_shape

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def split_psi(psi: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Splits `psi [..., 2d]` into `(mean [..., d], log_scale [..., d])`."""
  mean, log_scale = tf.split(psi, 2, axis=-1)
  return mean, log_scale


def join_psi(mean: tf.Tensor, log_scale: tf.Tensor) -> tf.Tensor:
  """Inverse of `split_psi`."""
  return tf.concat([mean, log_scale], axis=-1)


class DiagonalGaussian(Proposal):
  """`N(mu, diag(sigma^2))` with `psi = (mu, log sigma)`, `P = 2d`."""

  name = "diagonal_gaussian"

  @property
  def psi_size(self) -> int:
    return 2 * self.parameter_dim

  def initial_psi(self, mean: tf.Tensor) -> tf.Tensor:
    log_scale = tf.constant(math.log(self.initial_scale), mean.dtype)
    return join_psi(mean, tf.fill(tf.shape(mean), log_scale))

  def sample(self, psi: tf.Tensor, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
    mean, log_scale = split_psi(tf.stop_gradient(psi))
    noise = tf.random.stateless_normal(sample_shape(psi, num_samples, self.parameter_dim),
                                       seed=seed, dtype=psi.dtype)
    return mean[:, tf.newaxis] + tf.exp(log_scale)[:, tf.newaxis] * noise

  def log_prob(self, theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
    mean, log_scale = split_psi(psi)
    z = (theta - mean) * tf.exp(-log_scale)
    return tf.reduce_sum(-0.5 * tf.square(z) - log_scale - _HALF_LOG_TWO_PI, axis=-1)

  def score(self, theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
    mean, log_scale = split_psi(psi[:, tf.newaxis])
    inverse_scale = tf.exp(-log_scale)
    z = (theta - mean) * inverse_scale
    return tf.concat([z * inverse_scale, tf.square(z) - 1.0], axis=-1)

  def mean(self, psi: tf.Tensor) -> tf.Tensor:
    return split_psi(psi)[0]

  def stddev(self, psi: tf.Tensor) -> tf.Tensor:
    return tf.exp(split_psi(psi)[1])

  def update_units(self, psi: tf.Tensor) -> tf.Tensor:
    _, log_scale = split_psi(psi)
    return join_psi(tf.exp(log_scale), tf.ones_like(log_scale))
