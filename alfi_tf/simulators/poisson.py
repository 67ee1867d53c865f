"""Poisson counts with a log-rate parameter (spec §4): `theta ~ U(0.2, 7)`, `x ~ Poisson(exp theta)`.

Which sampler runs where:

* `simulate` (the machine's loop, evaluation, exports) draws with TFP's Poisson sampler. Eagerly
  and in `tf.function` on CPU, TFP selects `tf.random.stateless_poisson` (Grappler's implementation
  selector), so the draws are exactly that kernel's. Under XLA (`jit_compile=True`), which cannot
  compile that kernel, TFP selects its own sampler made of compilable ops: exact too, with other,
  equally distributed numbers.
* Meta-datasets (`sample_problems`, simulated inside `tf.data`, where Grappler's selector does not
  run) call `tf.random.stateless_poisson` directly. TFP's fallback there would be its XLA sampler,
  which gives other numbers from the same seeds.

Either way a NaN or infinite rate gives NaN counts instead of a sampler that never returns.
"""

from __future__ import annotations

import concurrent.futures
from typing import Optional

import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf.simulators.base import Simulator, box_prior


def _guarded_rates(theta: tf.Tensor):
  """`(rate [batch], finite [batch])`: `exp(theta)` with non-finite rates replaced by 1.

  A NaN rate (say from a diverged run) would never end a rejection loop: it gets a placeholder and
  the caller puts NaN counts where `finite` is false, so the run fails loudly instead of hanging.
  """
  rate = tf.exp(tf.convert_to_tensor(theta, tf.float32)[:, 0])
  finite = tf.math.is_finite(rate)
  return tf.where(finite, rate, 1.0), finite


def _as_observations(counts: tf.Tensor, finite: tf.Tensor) -> tf.Tensor:
  """`[num_obs, batch]` counts -> `[batch, num_obs, 1]`, NaN where the rate was not finite."""
  return tf.transpose(tf.where(finite, counts, float("nan")))[..., tf.newaxis]


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
    rate, finite = _guarded_rates(theta)
    return _as_observations(tfp.distributions.Poisson(rate=rate).sample(num_obs, seed=seed),
                            finite)

  def _simulate_problems(self, theta: tf.Tensor, num_obs: int, seed: tf.Tensor,
                         executor: Optional[concurrent.futures.Executor]) -> tf.Tensor:
    del executor   # TF-native
    rate, finite = _guarded_rates(theta)
    counts = tf.random.stateless_poisson(tf.concat([[num_obs], tf.shape(rate)], axis=0), seed,
                                         rate, dtype=tf.float32)               # [num_obs, batch]
    return _as_observations(counts, finite)

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
