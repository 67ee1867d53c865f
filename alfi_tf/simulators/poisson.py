"""Poisson counts with a log-rate parameter (spec §4): `theta ~ U(0.2, 7)`, `x ~ Poisson(exp theta)`."""

from __future__ import annotations

import tensorflow as tf
# TF's own test for "being traced for XLA"; TFP's implementation selection relies on it too.
from tensorflow.python.ops import control_flow_util  # pylint: disable=g-direct-tensorflow-import

from alfi_tf.simulators.base import Simulator, box_prior

# Below this rate the sampler inverts the CDF; at and above it, it uses PTRS (valid for rate >= 10).
_INVERSION_MAX_RATE = 10.0
# Bound on the inversion's search: P(X >= 64 | rate < 10) < 1e-26, beyond float64 uniforms' resolution.
_INVERSION_MAX_COUNT = 64


def _compiling_with_xla() -> bool:
  """Whether the current graph is being traced for XLA (e.g. inside `tf.function(jit_compile=True)`)."""
  return (not tf.executing_eagerly()
          and control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def _poisson_by_inversion(rate: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Exact Poisson draws for small float64 `rate` (any shape): the smallest `k` with `F(k) >= u`.

  One uniform per draw; the sequential search takes `k + 1` vectorised iterations, so it is only
  meant for rates below `_INVERSION_MAX_RATE`.
  """
  uniform = tf.random.stateless_uniform(tf.shape(rate), seed=seed, dtype=tf.float64)
  probability = tf.exp(-rate)                                   # P(X = 0)

  def search(count, probability, cdf):
    unfinished = uniform > cdf
    count = count + tf.cast(unfinished, tf.float64)
    probability = probability * rate / tf.maximum(count, 1.0)   # P(X = count) where unfinished
    return count, probability, tf.where(unfinished, cdf + probability, cdf)

  count, _, _ = tf.while_loop(lambda count, probability, cdf: tf.reduce_any(uniform > cdf),
                              search, (tf.zeros_like(rate), probability, probability),
                              maximum_iterations=_INVERSION_MAX_COUNT)
  return count


def _poisson_by_transformed_rejection(rate: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Exact Poisson draws for float64 `rate >= 10` (any shape) by Hörmann's PTRS.

  W. Hörmann, "The transformed rejection method for generating Poisson random variables", Insurance:
  Mathematics and Economics 12 (1993). Every round draws a candidate for every element and keeps the
  first accepted one (acceptance is at least ~75% a round); the loop ends when all are accepted.
  """
  log_rate = tf.math.log(rate)
  b = 0.931 + 2.53 * tf.sqrt(rate)
  a = -0.059 + 0.02483 * b
  log_inverse_alpha = tf.math.log(1.1239 + 1.1328 / (b - 3.4))
  squeeze_bound = 0.9277 - 3.6224 / (b - 2.0)

  def draw(round_index, counts, accepted):
    uniforms = tf.random.stateless_uniform(
        tf.concat([[2], tf.shape(rate)], axis=0),
        seed=tf.random.experimental.stateless_fold_in(seed, round_index), dtype=tf.float64)
    u, v = uniforms[0] - 0.5, uniforms[1]
    distance = 0.5 - tf.abs(u)
    candidate = tf.floor((2.0 * a / distance + b) * u + rate + 0.43)
    in_squeeze = (distance >= 0.07) & (v <= squeeze_bound)
    # float64: at rate ~1000 the log-probabilities are ~7000, where float32 rounding would bias
    # the acceptance test.
    under_density = (
        tf.math.log(v) + log_inverse_alpha - tf.math.log(a / tf.square(distance) + b)
        <= -rate + candidate * log_rate - tf.math.lgamma(candidate + 1.0))
    valid = (candidate >= 0.0) & ((distance >= 0.013) | (v <= distance))
    accept = ~accepted & (in_squeeze | (valid & under_density))
    return round_index + 1, tf.where(accept, candidate, counts), accepted | accept

  _, counts, _ = tf.while_loop(lambda round_index, counts, accepted: ~tf.reduce_all(accepted),
                               draw, (0, tf.zeros_like(rate), tf.zeros(tf.shape(rate), tf.bool)))
  return counts


def sample_poisson(rate: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Exact Poisson draws, one per element of `rate`, written in XLA-compilable TF ops.

  Inversion below rate 10, PTRS above (each draw is exact: no normal approximation); stateless. Unlike
  `tf.random.stateless_poisson` it compiles with XLA, but on CPU outside XLA it is ~4x slower.

  Args:
    rate: positive rates, any shape (float32 or float64).
    seed: int32 `[2]` stateless seed.

  Returns:
    float32 counts, the shape of `rate` (NaN where the rate is not finite).
  """
  rate = tf.cast(tf.stop_gradient(rate), tf.float64)
  # A NaN rate (say from a diverged run) would never be accepted by the rejection loop: it gets a
  # placeholder rate and a NaN count, so the run fails loudly instead of hanging.
  finite = tf.math.is_finite(rate)
  rate = tf.where(finite, rate, tf.ones_like(rate))
  small = rate < _INVERSION_MAX_RATE
  inversion_seed, rejection_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  # Every element runs through both samplers; the placeholder rates (0 and 100) end each loop fast.
  low = _poisson_by_inversion(tf.where(small, rate, tf.zeros_like(rate)), inversion_seed)
  high = _poisson_by_transformed_rejection(
      tf.where(small, tf.fill(tf.shape(rate), tf.constant(100.0, tf.float64)), rate), rejection_seed)
  counts = tf.where(small, low, high)
  return tf.cast(tf.where(finite, counts, tf.constant(float("nan"), tf.float64)), tf.float32)


class PoissonSimulator(Simulator):
  """`x ~ Poisson(exp(log_rate))`, one count per observation.

  The likelihood is tractable: the MLE is `log mean(x)` and the log-likelihood depends on the data only
  through `sum(x)`, which makes the exact grid posterior cheap.

  Draws come from `tf.random.stateless_poisson` (a fast CPU kernel without an XLA lowering), or from
  `sample_poisson` when traced for XLA: both exact, with different (equally distributed) numbers.
  """

  name = "poisson"

  def __init__(self, low: float = 0.2, high: float = 7.0):
    super().__init__(parameter_names=("log_rate",), observation_dim=1,
                     prior=box_prior([low], [high]))

  def simulate(self, theta: tf.Tensor, num_obs: int, seed: tf.Tensor) -> tf.Tensor:
    theta = tf.convert_to_tensor(theta, tf.float32)
    rate = tf.exp(theta[:, 0])                                              # [batch]
    if _compiling_with_xla():
      counts = sample_poisson(tf.broadcast_to(rate[:, tf.newaxis],
                                              tf.stack([tf.shape(rate)[0], num_obs])), seed)
    else:
      counts = tf.transpose(tf.random.stateless_poisson(
          tf.concat([[num_obs], tf.shape(rate)], axis=0), seed, rate, dtype=tf.float32))
    return counts[..., tf.newaxis]

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
