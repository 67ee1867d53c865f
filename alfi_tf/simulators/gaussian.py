"""A Gaussian with unknown mean and log-scale (spec §4).

`theta = (mean ~ U[-10, 10], log_scale ~ U[-2, 1.5])`, `x ~ N(mean, exp(log_scale))`.
"""

from __future__ import annotations

import math
from typing import Tuple

import tensorflow as tf

from alfi_tf.simulators.base import Simulator, box_prior

_LOG_TWO_PI = math.log(2.0 * math.pi)


def _sufficient_statistics(observations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """`(count, mean, sum of squared deviations from the mean)` of `[batch, n, 1]`, each `[batch]`.

  Deviations from the sample mean rather than raw second moments: `sum x^2 - n mean^2` loses all its
  digits in float32 when `|mean| >> std` (mean up to 10, std down to e^-2).
  """
  x = tf.convert_to_tensor(observations, tf.float32)[..., 0]              # [batch, n]
  mean = tf.reduce_mean(x, axis=1)
  squared_deviations = tf.reduce_sum(tf.square(x - mean[:, tf.newaxis]), axis=1)
  return tf.cast(tf.shape(x)[1], tf.float32), mean, squared_deviations


class GaussianSimulator(Simulator):
  """`x ~ N(mean, exp(log_scale))`; the likelihood and the MLE are closed-form."""

  name = "gaussian"

  def __init__(self):
    super().__init__(parameter_names=("mean", "log_scale"), observation_dim=1,
                     prior=box_prior([-10.0, -2.0], [10.0, 1.5]))

  def simulate(self, theta: tf.Tensor, num_obs: int, seed: tf.Tensor) -> tf.Tensor:
    theta = tf.convert_to_tensor(theta, tf.float32)
    noise = tf.random.stateless_normal([tf.shape(theta)[0], num_obs, 1], seed=seed)
    mean = theta[:, tf.newaxis, 0:1]                                        # [batch, 1, 1]
    scale = tf.exp(theta[:, tf.newaxis, 1:2])
    return mean + scale * noise

  def log_likelihood(self, theta: tf.Tensor, observations: tf.Tensor) -> tf.Tensor:
    # sum_i (x_i - m)^2 = S + n (xbar - m)^2: the cost is independent of n for each of the k candidates.
    count, sample_mean, squared_deviations = _sufficient_statistics(observations)
    theta = tf.convert_to_tensor(theta, tf.float32)
    mean, log_scale = theta[..., 0], theta[..., 1]                          # [batch, k]
    sum_of_squares = (squared_deviations[:, tf.newaxis]
                      + count * tf.square(sample_mean[:, tf.newaxis] - mean))
    return (-0.5 * count * _LOG_TWO_PI - count * log_scale
            - 0.5 * sum_of_squares * tf.exp(-2.0 * log_scale))

  def maximum_likelihood(self, observations: tf.Tensor) -> tf.Tensor:
    count, sample_mean, squared_deviations = _sufficient_statistics(observations)
    # log of the ML (ddof=0) standard deviation, sqrt(S / n); -inf for a single observation (n = 1).
    log_scale = 0.5 * tf.math.log(squared_deviations / count)
    return tf.stack([sample_mean, log_scale], axis=-1)

  def summary_statistics(self, observations: tf.Tensor) -> tf.Tensor:
    """`(sample mean, log sample std)`, `[batch, 2]`: sufficient, and the same as the MLE.

    The std is the ML (ddof=0) one, a function of averages; its log is -inf for a single observation.
    """
    return self.maximum_likelihood(observations)
