"""Running a (trained) machine on observed data, in raw parameter units, and the result type that
in-library inference and the deployed machine share."""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import numpy as np
import tensorflow as tf

from alfi_tf.checks import check_observations, check_transform_domain
from alfi_tf.model.machine import InferenceMachine


class InferenceResult(NamedTuple):
  """The machine's answer for `B` observation sets, in raw parameter units.

  Attributes:
    mean, std: `[B, d]`, the final proposal's mean and marginal standard deviations: the estimate
      and its uncertainty.
    trajectory_mean, trajectory_std: `[B, T, d]`, the same after each step 1..T.
    initial_mean: `[B, d]`, the start `mu_0`.
  """

  mean: np.ndarray
  std: np.ndarray
  trajectory_mean: np.ndarray
  trajectory_std: np.ndarray
  initial_mean: np.ndarray

  @classmethod
  def from_outputs(cls, outputs: Dict[str, tf.Tensor]) -> "InferenceResult":
    """Picks the result out of `InferenceMachine.infer`'s (or an export signature's) outputs."""
    return cls(*(np.asarray(outputs[key]) for key in cls._fields))

  @classmethod
  def concatenate(cls, results) -> "InferenceResult":
    """One result from the results of consecutive batches of observation sets."""
    return cls(*(np.concatenate(parts) for parts in zip(*results)))


class Inferrer:
  """Runs `machine` over many problems in batches with one compiled graph per input shape.

  Args:
    machine: the (trained) machine.
    num_steps: horizon `T`; may exceed the training horizon.
    batch_size: problems per call.
    jit_compile: compile the unrolled loop with XLA (TF-native simulators only).
  """

  def __init__(self, machine: InferenceMachine, num_steps: Optional[int] = None,
               batch_size: int = 256, jit_compile: bool = False):
    self.machine = machine
    self.num_steps = num_steps or machine.config.num_steps
    self.batch_size = batch_size
    self._run = tf.function(self._run_batch, jit_compile=jit_compile, reduce_retracing=True)

  def _run_batch(self, observations: tf.Tensor, seed: tf.Tensor,
                 initial_mean: tf.Tensor) -> Dict[str, tf.Tensor]:
    return self.machine.infer(observations, seed, self.num_steps, initial_mean)

  def __call__(self, observations: np.ndarray, seed: int,
               initial_mean: Optional[np.ndarray] = None) -> InferenceResult:
    """Infers parameters for `observations [B, n, d_x]` (raw).

    Args:
      observations: `B` observation sets of `n` observations each.
      seed: integer seed; batch `i` splits `fold_in([seed, 0], i)` into the seed of its prior-drawn
        starts and the seed of the machine's run.
      initial_mean: optional `[B, d]` raw starts; default draws from the prior.
    """
    simulator = self.machine.simulator
    observations = check_transform_domain(
        check_observations(observations, simulator.observation_dim),
        self.machine.config.observation_transform)
    if initial_mean is not None:
      initial_mean = np.asarray(initial_mean, np.float32)
      if initial_mean.shape != (observations.shape[0], simulator.parameter_dim):
        raise ValueError(f"initial_mean must have shape "
                         f"{(observations.shape[0], simulator.parameter_dim)}, got {initial_mean.shape}")
    results = []
    base_seed = tf.constant([seed, 0], tf.int32)
    for index, start in enumerate(range(0, observations.shape[0], self.batch_size)):
      chunk = slice(start, start + self.batch_size)
      start_seed, run_seed = tf.unstack(tf.random.experimental.stateless_split(
          tf.random.experimental.stateless_fold_in(base_seed, index), 2))
      # Starts are always passed explicitly, so one graph serves both prior draws and user starts.
      start_mean = (initial_mean[chunk] if initial_mean is not None else
                    self._prior_draw(observations[chunk].shape[0], start_seed))
      results.append(InferenceResult.from_outputs(self._run(
          tf.constant(observations[chunk]), run_seed, tf.constant(start_mean))))
    return InferenceResult.concatenate(results)

  def _prior_draw(self, count: int, seed: tf.Tensor) -> np.ndarray:
    return self.machine.simulator.prior.sample(count, seed=seed).numpy().astype(np.float32)
