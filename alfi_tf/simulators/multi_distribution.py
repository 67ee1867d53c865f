"""Five latents from different families, mixed by a fixed matrix (spec §4).

`theta ~ U[-3, 3]^3`; latents `z0 ~ N(theta0, 1)`, `z1 ~ N(3, exp(theta1 / 3))`,
`z2 ~ 0.5 N(-2, 1) + 0.5 N(2, 0.5^2)`, `z3 ~ U(-5, theta2)`, `z4 ~ Exponential(rate 0.5)`; each
observation is `x = R z` with the fixed symmetric 5x5 matrix `R` (`MIXING_MATRIX`). Only `z0`, `z1` and
`z3` depend on `theta`; `z2` and `z4` are nuisance noise that `R` spreads over every coordinate of `x`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf.simulators.base import Simulator, box_prior

tfd = tfp.distributions

# Copied digit for digit from the spec; symmetric.
MIXING_MATRIX = np.array([
    [1.31229955, 0.10499961, 0.48310515, -0.3249938, -0.26387927],
    [0.10499961, 1.15833058, -0.55865473, 0.25275522, -0.39790775],
    [0.48310515, -0.55865473, 2.25874579, -0.52087938, -0.39271231],
    [-0.3249938, 0.25275522, -0.52087938, 1.4034925, -0.63521059],
    [-0.26387927, -0.39790775, -0.39271231, -0.63521059, 1.],
], np.float64)

_Z3_LOW = -5.0


def _mix(matrix: np.ndarray, vectors: tf.Tensor) -> tf.Tensor:
  """`matrix @ v` for every `v` in `vectors [batch, n, 5]`, returning `[batch, n, 5]`."""
  return tf.einsum("ij,bnj->bni", tf.constant(matrix, tf.float32), vectors)


class MultiDistributionSimulator(Simulator):
  """`x = R z` with independent latents from five families; the reference estimator inverts `R`."""

  name = "multi_distribution"

  def __init__(self):
    super().__init__(parameter_names=("z0_mean", "z1_log_scale_x3", "z3_upper_bound"),
                     observation_dim=5, prior=box_prior([-3.0] * 3, [3.0] * 3))
    # Inverted once in float64, so the estimator's unmixing is as exact as float32 data allow.
    self._unmixing_matrix = np.linalg.inv(MIXING_MATRIX)
    self._bimodal = tfd.MixtureSameFamily(
        mixture_distribution=tfd.Categorical(probs=[0.5, 0.5]),
        components_distribution=tfd.Normal(loc=[-2.0, 2.0], scale=[1.0, 0.5]))

  def simulate(self, theta: tf.Tensor, num_obs: int, seed: tf.Tensor) -> tf.Tensor:
    theta = tf.convert_to_tensor(theta, tf.float32)
    shape = [tf.shape(theta)[0], num_obs]
    seeds = tfp.random.split_seed(seed, n=5)
    column = lambda i: theta[:, i, tf.newaxis]                              # [batch, 1]
    z0 = column(0) + tf.random.stateless_normal(shape, seed=seeds[0])
    z1 = 3.0 + tf.exp(column(1) / 3.0) * tf.random.stateless_normal(shape, seed=seeds[1])
    z2 = self._bimodal.sample(shape, seed=seeds[2])
    z3 = _Z3_LOW + (column(2) - _Z3_LOW) * tf.random.stateless_uniform(shape, seed=seeds[3])
    z4 = tfd.Exponential(rate=0.5).sample(shape, seed=seeds[4])
    latents = tf.stack([z0, z1, z2, z3, z4], axis=-1)                       # [batch, n, 5]
    return _mix(MIXING_MATRIX, latents)

  def maximum_likelihood(self, observations: tf.Tensor) -> tf.Tensor:
    """The spec's reference estimator: `z = R^-1 x`, then `(mean z0, 3 log std z1, max z3)`."""
    latents = _mix(self._unmixing_matrix, tf.convert_to_tensor(observations, tf.float32))
    return tf.stack([
        tf.reduce_mean(latents[..., 0], axis=1),
        3.0 * tf.math.log(tf.math.reduce_std(latents[..., 1], axis=1)),
        tf.reduce_max(latents[..., 3], axis=1),
    ], axis=-1)

  def summary_statistics(self, observations: tf.Tensor) -> tf.Tensor:
    """`(mean z0, log std z1, mean z3, log std z3)` of the unmixed latents `z = R^-1 x`, `[batch, 4]`.

    Averages where the reference estimator takes `max z3`, whose distribution depends on `n`. The
    latents' other moments are left out: `z2`, `z4`, the mean of `z1` and the std of `z0` do not
    depend on `theta`, and as ABC distances would only add noise. Not sufficient: that would take
    `max z3` and `sum (z1 - 3)^2`.
    """
    latents = _mix(self._unmixing_matrix, tf.convert_to_tensor(observations, tf.float32))
    log_std = lambda i: tf.math.log(tf.math.reduce_std(latents[..., i], axis=1))
    return tf.stack([tf.reduce_mean(latents[..., 0], axis=1), log_std(1),
                     tf.reduce_mean(latents[..., 3], axis=1), log_std(3)], axis=-1)
