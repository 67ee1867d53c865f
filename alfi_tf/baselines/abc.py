"""Rejection ABC on summary statistics, at ALFI's per-data-set simulation budget.

For each observed set `X_obs` of `n` observations, with summaries `s(X)` (`[s]`, averages over a set):

1. draw `theta_j ~ p(theta)`, `j = 1..J`, `J = simulations_per_dataset // simulated_obs_per_draw`;
2. simulate a set `X_j ~ p(x | theta_j)^N` of `N = simulated_obs_per_draw` observations for each;
3. scale each summary dimension by the median absolute deviation of the simulated summaries,
   `MAD_i = median_j |s_i(X_j) - median_j s_i(X_j)|`, and measure
   `rho_j = || (s(X_j) - s(X_obs)) / MAD ||_2` (infinite for a set with NaN/inf);
4. keep the `k = max(2, round(accepted_fraction J))` draws with the smallest `rho_j`.

The kept draws sample `p(theta | rho(X, X_obs) <= eps)`, `eps` the k-th smallest distance. As
`J -> inf` and `k / J -> 0` this tends to `p(theta | s(X_N) = s(X_obs))`: the exact posterior when `s`
is sufficient and `N = n`. With `N < n` it is the posterior of a set of only `N` observations with
the observed summaries, so wider than the exact one. The estimate is the mean and std of the kept
draws; its Monte-Carlo error is about `std / sqrt(k)`, and the tolerance `eps` biases it and widens
it (by `O(eps^2)` for a smooth model).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import numpy as np
import tensorflow as tf
from absl import logging
import tensorflow_probability as tfp

from alfi_tf.checks import check_observations, require_memory
from alfi_tf.config import require_positive, require_well_formed
from alfi_tf.model.arguments import check_seed
from alfi_tf.simulators.base import Simulator

#: Maps observation sets `[batch, n, d_x]` to summaries `[batch, s]`.
SummaryFn = Callable[[tf.Tensor], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class ABCConfig:
  """The per-data-set budget and the acceptance rule of rejection ABC.

  Attributes:
    simulations_per_dataset: budget in simulated *observations* per data set (ALFI's `T M N`).
    simulated_obs_per_draw: `N`, observations simulated for each candidate `theta`.
    accepted_fraction: fraction of the candidates kept (at least 2 are).
    batch_size: data sets handled per `tf.function` call.
  """

  simulations_per_dataset: int
  simulated_obs_per_draw: int
  accepted_fraction: float = 0.05
  batch_size: int = 64

  def __post_init__(self):
    require_well_formed(self)
    require_positive(self, "simulations_per_dataset", "simulated_obs_per_draw", "batch_size",
                     "accepted_fraction")
    if self.accepted_fraction > 1:
      raise ValueError(f"accepted_fraction must be at most 1, got {self.accepted_fraction}")
    if self.draws < 2:
      raise ValueError(
          f"simulations_per_dataset // simulated_obs_per_draw must be at least 2 candidate draws, "
          f"got {self.simulations_per_dataset} // {self.simulated_obs_per_draw} = {self.draws}")

  @property
  def draws(self) -> int:
    """`J`, the candidate parameter draws per data set."""
    return self.simulations_per_dataset // self.simulated_obs_per_draw

  @property
  def accepted(self) -> int:
    """`k`, the draws kept per data set."""
    return max(2, round(self.accepted_fraction * self.draws))


class ABCResult(NamedTuple):
  """Rejection ABC's answer for `K` data sets.

  Attributes:
    mean, std: `[K, d]` mean and (ddof=1) std of the accepted draws; NaN for a data set with fewer
      than `accepted` simulated sets free of NaN/inf.
    samples: `[K, accepted, d]` the accepted draws, closest first.
    simulated_observations: observations simulated over all `K` data sets.
  """

  mean: np.ndarray
  std: np.ndarray
  samples: np.ndarray
  simulated_observations: int


def _mad(summaries: tf.Tensor) -> tf.Tensor:
  """The median absolute deviation `[s]` of each column of `summaries [J, s]` (`J >= 1`), never 0."""
  median = tfp.stats.percentile(summaries, 50.0, axis=0, interpolation="midpoint")
  deviations = tf.abs(summaries - median)
  scale = tfp.stats.percentile(deviations, 50.0, axis=0, interpolation="midpoint")
  # A statistic tied on over half the draws (a discrete one) has MAD 0: its mean absolute deviation
  # scales it instead, and a constant one gets 1 (it then shifts every distance alike).
  scale = tf.where(scale > 0.0, scale, tf.reduce_mean(deviations, axis=0))
  return tf.where(scale > 0.0, scale, 1.0)


def _scaled_distances(summaries: tf.Tensor, observed: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
  """Distances `[J]` of `summaries [J, s]` to `observed [s]`, in units of each dimension's MAD over
  the `valid [J]` simulations; infinite where not valid."""
  kept = tf.boolean_mask(summaries, valid)
  # Without a single valid simulation every distance is infinite whatever the scale.
  scale = tf.cond(tf.shape(kept)[0] > 0, lambda: _mad(kept), lambda: tf.ones_like(observed))
  distances = tf.norm((summaries - observed) / scale, axis=-1)
  return tf.where(valid, distances, float("inf"))


def _require_memory(simulator: Simulator, config: ABCConfig) -> None:
  """Refuses a budget whose draws for one data set (`J` parameters, `J` sets of `N` observations)
  cannot fit in memory: they would fail inside the graph, with TensorFlow's allocation error."""
  require_memory(
      4 * config.draws * (config.simulated_obs_per_draw * simulator.observation_dim
                          + simulator.parameter_dim),
      f"simulations_per_dataset={config.simulations_per_dataset} ({config.draws} draws of "
      f"simulated_obs_per_draw={config.simulated_obs_per_draw} observations per data set)",
      "use a smaller simulations_per_dataset")


class RejectionABC:
  """Rejection ABC for a simulator, on its `summary_statistics` or on a given `summary_fn`.

  Args:
    simulator: the simulator and its prior.
    config: budget and acceptance rule.
    summary_fn: maps observations `[batch, n, d_x]` to summaries `[batch, s]` (for example a trained
      NPE summary network); default `simulator.summary_statistics`.

  Raises:
    ValueError: no `summary_fn` for a simulator without summary statistics, or one data set's
      candidate draws and their simulated sets cannot fit in memory.
  """

  def __init__(self, simulator: Simulator, config: ABCConfig,
               summary_fn: Optional[SummaryFn] = None):
    if summary_fn is None:
      if not simulator.has_summary_statistics:
        raise ValueError(f"simulator {simulator.name!r} has no summary_statistics: RejectionABC "
                         f"needs a summary_fn (e.g. a trained NPE summary network)")
      summary_fn = simulator.summary_statistics
    _require_memory(simulator, config)
    self.simulator, self.config, self.summary_fn = simulator, config, summary_fn
    self._accept_batch = tf.function(self._accept_all, reduce_retracing=True)

  def _accept_one(self, observed: tf.Tensor, index: tf.Tensor, base_seed: tf.Tensor) -> tf.Tensor:
    """The accepted draws `[accepted, d]` for data set `index`, whose summaries are `observed [s]`."""
    config = self.config
    # Seeded by the data set's index alone, so that results do not depend on the batching.
    prior_seed, simulation_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(base_seed, index), 2))
    theta = tf.cast(self.simulator.prior.sample(config.draws, seed=prior_seed), tf.float32)
    simulated = self.simulator.simulate(theta, config.simulated_obs_per_draw, simulation_seed)
    summaries = tf.cast(self.summary_fn(simulated), tf.float32)              # [J, s]
    valid = tf.logical_and(tf.reduce_all(tf.math.is_finite(simulated), axis=[1, 2]),
                           tf.reduce_all(tf.math.is_finite(summaries), axis=1))
    closest = tf.math.top_k(-_scaled_distances(summaries, observed, valid), k=config.accepted)
    complete = tf.math.is_finite(closest.values[-1])
    return tf.where(complete, tf.gather(theta, closest.indices), float("nan"))

  def _accept_all(self, observed: tf.Tensor, indices: tf.Tensor, base_seed: tf.Tensor) -> tf.Tensor:
    """`[batch, accepted, d]` for the data sets `indices [batch]` with summaries `observed`."""
    # One `simulate` call per data set (J draws at once): a single call for the whole batch would
    # have to share one seed, tying each data set's simulations to its neighbours in the batch.
    return tf.map_fn(lambda args: self._accept_one(args[0], args[1], base_seed),
                     (observed, indices), fn_output_signature=tf.TensorSpec(
                         [self.config.accepted, self.simulator.parameter_dim], tf.float32))

  def _observed_summaries(self, observations: np.ndarray, start: int) -> tf.Tensor:
    """`summary_fn` of `observations [batch, n, d_x]` (data sets `start...`), checked."""
    summaries = tf.cast(self.summary_fn(tf.constant(observations)), tf.float32)
    if summaries.shape.rank != 2 or summaries.shape[0] != observations.shape[0]:
      raise ValueError(f"summary_fn must map [batch, n, d_x] to [batch, s], got {summaries.shape} "
                       f"for observations of shape {observations.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(summaries.numpy()), axis=1))
    if bad.size:
      raise ValueError(f"the summaries of observed data set(s) {(bad + start).tolist()} are not "
                       f"finite (e.g. the log-std of a set of one observation)")
    return summaries

  def __call__(self, observations: np.ndarray, seed: int) -> ABCResult:
    """Runs rejection ABC on each of `observations [K, n, d_x]`.

    Data set `k` draws from the stateless seed `fold_in([seed, 0], k)`, whatever the batch size.

    Raises:
      ValueError: malformed or non-finite observations, non-finite observed summaries, or a seed
        outside int32.
    """
    observations = check_observations(observations, self.simulator.observation_dim)
    base_seed, size = tf.constant([check_seed(seed), 0], tf.int32), self.config.batch_size
    samples = np.concatenate([
        self._accept_batch(self._observed_summaries(observations[start:start + size], start),
                           tf.range(start, min(start + size, len(observations))), base_seed).numpy()
        for start in range(0, len(observations), size)])
    starved = np.flatnonzero(np.isnan(samples).any(axis=(1, 2)))
    if starved.size:
      logging.warning("rejection ABC answers NaN for %d of %d data set(s) (%s): fewer than %d of "
                      "their %d simulated sets were free of NaN/inf", starved.size,
                      len(observations), starved[:10].tolist(), self.config.accepted,
                      self.config.draws)
    return ABCResult(mean=samples.mean(axis=1), std=samples.std(axis=1, ddof=1), samples=samples,
                     simulated_observations=(len(observations) * self.config.draws
                                             * self.config.simulated_obs_per_draw))
