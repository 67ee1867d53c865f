"""A Gaussian of fixed spread, `q(theta | psi) = N(mu, sigma_0^2 I)` (the authors' fixed-variance
proposal): the machine moves only the mean.

`psi = mu`, `[..., d]`; `sigma_0` is the machine's `initial_scale` for the whole run. The score is

    d log q / d mu = (theta - mu) / sigma_0^2.

With the spread fixed, the reported `std` is `sigma_0`, whatever the data say: use this family for
point estimates (or as an ablation), not for uncertainty.
"""

from __future__ import annotations

import math

import tensorflow as tf

from alfi_tf.model.proposals.base import LocationProposal, sample_shape

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


class FixedVarianceGaussian(LocationProposal):
  """`N(mu, sigma_0^2 I)` with `psi = mu`, `P = d`."""

  name = "fixed_variance_gaussian"

  def sample(self, psi: tf.Tensor, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
    noise = tf.random.stateless_normal(sample_shape(psi, num_samples, self.parameter_dim),
                                       seed=seed, dtype=psi.dtype)
    return tf.stop_gradient(psi)[:, tf.newaxis] + self.initial_scale * noise

  def log_prob(self, theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
    z = (theta - psi) / self.initial_scale
    return tf.reduce_sum(-0.5 * tf.square(z) - math.log(self.initial_scale) - _HALF_LOG_TWO_PI,
                         axis=-1)

  def score(self, theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
    return (theta - psi[:, tf.newaxis]) / self.initial_scale ** 2

  def stddev(self, psi: tf.Tensor) -> tf.Tensor:
    return tf.fill(tf.shape(psi), tf.constant(self.initial_scale, psi.dtype))

  def update_units(self, psi: tf.Tensor) -> tf.Tensor:
    return self.stddev(psi)
