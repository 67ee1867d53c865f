"""Poisson counts with a log-rate parameter (spec §4): `theta ~ U(0.2, 7)`, `x ~ Poisson(exp theta)`.

Which sampler runs where: `tf.random.stateless_poisson` (a fast CPU kernel) everywhere except when
traced for XLA (inside `tf.function(jit_compile=True)`), which cannot compile that op; there, TFP's
Poisson sampler, whose XLA implementation is made of compilable ops (Knuth's method below rate 10,
transformed rejection above): exact too, with other (equally distributed) numbers.

TFP's sampler alone would not do: it picks `stateless_poisson` on CPU through Grappler's
implementation selector, which does not run on `tf.data` functions, so the meta-datasets (simulated
in `tf.data`) would get its rejection draws: other numbers from the same seeds.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp
# TF's own test for "being traced for XLA" (there is no public one); TFP's selection uses it too.
from tensorflow.python.ops import control_flow_util  # pylint: disable=g-direct-tensorflow-import

from alfi_tf.simulators.base import Simulator, box_prior


def _compiling_with_xla() -> bool:
  """Whether the current graph is being traced for XLA (e.g. inside `tf.function(jit_compile=True)`)."""
  return (not tf.executing_eagerly()
          and control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


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
    rate = tf.exp(theta[:, 0])                                              # [batch]
    # A NaN rate (say from a diverged run) would never end `stateless_poisson` nor a rejection loop:
    # it gets a placeholder rate and NaN counts, so the run fails loudly instead of hanging.
    finite = tf.math.is_finite(rate)
    rate = tf.where(finite, rate, 1.0)
    if _compiling_with_xla():
      counts = tfp.distributions.Poisson(rate=rate).sample(num_obs, seed=seed)
    else:
      counts = tf.random.stateless_poisson(tf.concat([[num_obs], tf.shape(rate)], axis=0), seed,
                                           rate, dtype=tf.float32)         # [num_obs, batch]
    counts = tf.where(finite, counts, float("nan"))
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

  def summary_statistics(self, observations: tf.Tensor) -> tf.Tensor:
    """The sample mean of the counts, `[batch, 1]`: sufficient, as the likelihood depends on the data
    only through `sum(x)` (the parameter is the log-rate, but the statistic is the plain mean)."""
    return tf.reduce_mean(tf.convert_to_tensor(observations, tf.float32), axis=1)
