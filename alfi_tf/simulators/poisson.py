"""Poisson counts with a log-rate parameter (spec §4): `theta ~ U(0.2, 7)`, `x ~ Poisson(exp theta)`."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf.simulators.base import Simulator, box_prior

tfd = tfp.distributions


class PoissonSimulator(Simulator):
  """`x ~ Poisson(exp(log_rate))`, one count per observation.

  The likelihood is tractable: the MLE is `log mean(x)` and the log-likelihood depends on the data only
  through `sum(x)`, which makes the exact grid posterior cheap.
  """

  name = "poisson"

  def __init__(self, low: float = 0.2, high: float = 7.0):
    super().__init__(parameter_names=("log_rate",), observation_dim=1,
                     prior=box_prior([low], [high]))

  def simulate(self, theta: tf.Tensor, num_obs: int, seed: tf.Tensor) -> tf.Tensor:
    theta = tf.convert_to_tensor(theta, tf.float32)
    counts = tfd.Poisson(log_rate=theta[:, 0]).sample(num_obs, seed=seed)  # [num_obs, batch]
    return tf.transpose(counts)[..., tf.newaxis]

  def log_likelihood(self, theta: tf.Tensor, observations: tf.Tensor) -> tf.Tensor:
    # float64: at high rates the terms reach ~1e6, where float32 rounding (~0.1) would flatten the
    # top of the likelihood that the grid posterior resolves.
    observations = tf.cast(observations, tf.float64)
    log_rate = tf.cast(theta, tf.float64)[..., 0]                           # [batch, k]
    total = tf.reduce_sum(observations[..., 0], axis=1, keepdims=True)      # [batch, 1]
    count = tf.cast(tf.shape(observations)[1], tf.float64)
    log_factorials = tf.reduce_sum(tf.math.lgamma(observations[..., 0] + 1.0), axis=1, keepdims=True)
    return total * log_rate - count * tf.exp(log_rate) - log_factorials

  def maximum_likelihood(self, observations: tf.Tensor) -> tf.Tensor:
    mean = tf.reduce_mean(tf.convert_to_tensor(observations, tf.float32)[..., 0], axis=1)
    # An all-zero set has no finite MLE; half a count is the usual continuity correction.
    n = tf.cast(tf.shape(observations)[1], tf.float32)
    return tf.math.log(tf.maximum(mean, 0.5 / n))[:, tf.newaxis]
