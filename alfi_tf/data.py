"""Seeded meta-datasets of synthetic problems `(theta*, X ~ p(x | theta*)^n)`."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from alfi_tf.simulators import Simulator

# Seed streams of one run: the same run seed gives independent training, validation and test sets.
TRAIN_STREAM, VALIDATION_STREAM, TEST_STREAM = 0, 1, 2


class Problems(NamedTuple):
  """A set of inference problems.

  Attributes:
    theta: `[K, d]` float32 true parameters.
    observations: `[K, n, d_x]` float32 observations.
  """

  theta: np.ndarray
  observations: np.ndarray


def stream_seed(seed: int, stream: int) -> tf.Tensor:
  """The stateless seed of one stream (train / validation / test) of a run."""
  return tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int32), stream)


def generate_problems(simulator: Simulator, num_problems: int, num_obs: int, seed: int,
                      stream: int, chunk_size: int = 1024) -> Problems:
  """Draws `num_problems` problems, `chunk_size` at a time to bound memory.

  Each chunk has its own seed, so the chunk size is part of the recipe: changing it changes the draws.

  Args:
    simulator: the simulator.
    num_problems: `K`.
    num_obs: `n`, observations per problem.
    seed: the run's seed.
    stream: which stream of that seed (`TRAIN_STREAM`, `VALIDATION_STREAM`, `TEST_STREAM`).
    chunk_size: problems simulated per call.
  """
  if num_problems <= 0 or num_obs <= 0:
    raise ValueError(f"num_problems and num_obs must be positive, got {num_problems}, {num_obs}")
  base = stream_seed(seed, stream)
  thetas, observations = [], []
  for index, start in enumerate(range(0, num_problems, chunk_size)):
    count = min(chunk_size, num_problems - start)
    theta, obs = simulator.sample_problems(
        count, num_obs, tf.random.experimental.stateless_fold_in(base, index))
    thetas.append(theta.numpy())
    observations.append(obs.numpy())
  return Problems(np.concatenate(thetas), np.concatenate(observations))
