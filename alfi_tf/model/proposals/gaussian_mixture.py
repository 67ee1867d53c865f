"""A mixture of K diagonal Gaussians, `q(theta | psi) = sum_k pi_k N(mu_k, diag(sigma_k^2))`: for
multimodal posteriors (a sign ambiguity, a periodic parameter) that a single Gaussian can only
cover with one wide bump.

`psi = (logits [K], mu [K, d], log sigma [K, d])` flattened, `P = K (1 + 2d)`, with
`pi = softmax(logits)`. With responsibilities `r_k = pi_k N_k(theta) / q(theta)` and
`z_k = (theta - mu_k) / sigma_k`,

    d log q / d logit_k       = r_k - pi_k,
    d log q / d mu_k          = r_k z_k / sigma_k,
    d log q / d log sigma_k   = r_k (z_k^2 - 1).

The initial proposal spreads the K means over a fixed, deterministic pattern around the start, so
the components begin apart (identical components would receive identical updates); the mixture's
overall marginal spread is `initial_scale`, as for the other families.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import tensorflow as tf

from alfi_tf.model.proposals.base import Proposal, sample_shape

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def component_offsets(num_components: int, parameter_dim: int) -> np.ndarray:
  """`[K, d]` fixed offsets of the initial means: per dimension, mean 0 and mean square 1 over
  the components (all zero for K = 1)."""
  if num_components == 1:
    return np.zeros((1, parameter_dim))
  offsets = np.random.RandomState(0).normal(size=(num_components, parameter_dim))
  offsets -= offsets.mean(axis=0)
  return offsets / np.sqrt(np.mean(offsets ** 2, axis=0))


class GaussianMixture(Proposal):
  """`sum_k pi_k N(mu_k, diag(sigma_k^2))`, `P = K (1 + 2d)`.

  Args:
    parameter_dim: `d`.
    initial_scale: the initial mixture's marginal standard deviation.
    num_components: `K`.
  """

  name = "gaussian_mixture"

  def __init__(self, parameter_dim: int, initial_scale: float = 0.1, num_components: int = 3):
    super().__init__(parameter_dim, initial_scale)
    if num_components < 1:
      raise ValueError(f"num_components must be positive, got {num_components}")
    self.num_components = num_components

  @classmethod
  def create(cls, parameter_dim: int, initial_scale: float,
             mixture_components: int) -> "GaussianMixture":
    return cls(parameter_dim, initial_scale, mixture_components)

  @property
  def psi_size(self) -> int:
    return self.num_components * (1 + 2 * self.parameter_dim)

  def split(self, psi: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`psi [..., P]` -> `(logits [..., K], mu [..., K, d], log sigma [..., K, d])`."""
    k, d = self.num_components, self.parameter_dim
    logits, means, log_scales = tf.split(psi, [k, k * d, k * d], axis=-1)
    shape = tf.concat([tf.shape(psi)[:-1], [k, d]], axis=0)
    return logits, tf.reshape(means, shape), tf.reshape(log_scales, shape)

  def initial_psi(self, mean: tf.Tensor) -> tf.Tensor:
    k, s = self.num_components, self.initial_scale
    # Means spread by s / sqrt(2) and components of std s / sqrt(2): marginal variance s^2.
    spread = s * math.sqrt(0.5) if k > 1 else 0.0
    scale = s * math.sqrt(0.5) if k > 1 else s
    offsets = tf.constant(spread * component_offsets(k, self.parameter_dim), mean.dtype)
    means = mean[:, tf.newaxis] + offsets                                     # [batch, K, d]
    batch = tf.shape(mean)[0]
    return tf.concat([tf.zeros(tf.stack([batch, k]), mean.dtype),
                      tf.reshape(means, tf.stack([batch, -1])),
                      tf.fill(tf.stack([batch, k * self.parameter_dim]),
                              tf.constant(math.log(scale), mean.dtype))], axis=-1)

  def sample(self, psi: tf.Tensor, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
    logits, means, log_scales = self.split(tf.stop_gradient(psi))
    component_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    components = tf.random.stateless_categorical(logits, num_samples, component_seed)  # [b, M]
    chosen = tf.one_hot(components, self.num_components, dtype=psi.dtype)            # [b, M, K]
    noise = tf.random.stateless_normal(sample_shape(psi, num_samples, self.parameter_dim),
                                       seed=noise_seed, dtype=psi.dtype)
    return (tf.einsum("bmk,bkd->bmd", chosen, means)
            + tf.einsum("bmk,bkd->bmd", chosen, tf.exp(log_scales)) * noise)

  def _component_terms(self, theta: tf.Tensor,
                       psi: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(log pi_k + log N_k(theta) [..., K], log pi [..., K], z [..., K, d], sigma [..., K, d])`."""
    logits, means, log_scales = self.split(psi)
    z = (theta[..., tf.newaxis, :] - means) * tf.exp(-log_scales)
    log_weights = tf.nn.log_softmax(logits, axis=-1)
    joint = log_weights + tf.reduce_sum(-0.5 * tf.square(z) - log_scales - _HALF_LOG_TWO_PI,
                                        axis=-1)
    return joint, log_weights, z, tf.exp(log_scales)

  def log_prob(self, theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
    joint, _, _, _ = self._component_terms(theta, psi)
    return tf.reduce_logsumexp(joint, axis=-1)

  def score(self, theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
    joint, log_weights, z, scales = self._component_terms(theta, psi[:, tf.newaxis])
    responsibilities = tf.nn.softmax(joint, axis=-1)                          # [batch, M, K]
    r = responsibilities[..., tf.newaxis]
    batch_and_samples = tf.shape(theta)[:-1]
    flat = tf.concat([batch_and_samples, [-1]], axis=0)
    return tf.concat([responsibilities - tf.exp(log_weights),
                      tf.reshape(r * z / scales, flat),
                      tf.reshape(r * (tf.square(z) - 1.0), flat)], axis=-1)

  def mean(self, psi: tf.Tensor) -> tf.Tensor:
    logits, means, _ = self.split(psi)
    return tf.einsum("...k,...kd->...d", tf.nn.softmax(logits, axis=-1), means)

  def marginal_components(self, psi: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    logits, means, log_scales = self.split(psi)
    return tf.nn.softmax(logits, axis=-1), means, tf.exp(log_scales)

  def translation(self, step: tf.Tensor) -> tf.Tensor:
    """Every component's mean moves by `step`; weights and spreads stay."""
    k = self.num_components
    logits = tf.zeros(tf.concat([tf.shape(step)[:-1], [k]], axis=0), step.dtype)
    means = tf.concat([step] * k, axis=-1)                     # [..., K d], component-major
    return tf.concat([logits, means, tf.zeros_like(means)], axis=-1)

  def update_units(self, psi: tf.Tensor) -> tf.Tensor:
    """Each component's mean moves in units of that component's own spread."""
    logits, _, log_scales = self.split(psi)
    flat_scales = tf.reshape(tf.exp(log_scales), tf.concat([tf.shape(logits)[:-1], [-1]], axis=0))
    return tf.concat([tf.ones_like(logits), flat_scales, tf.ones_like(flat_scales)], axis=-1)

  def stddev(self, psi: tf.Tensor) -> tf.Tensor:
    logits, means, log_scales = self.split(psi)
    weights = tf.nn.softmax(logits, axis=-1)[..., tf.newaxis]
    # Centred (not E[theta^2] - E[theta]^2, which cancels catastrophically in float32 when the
    # components are narrow and far from 0).
    spread = tf.square(means - self.mean(psi)[..., tf.newaxis, :])
    return tf.sqrt(tf.reduce_sum(weights * (tf.exp(2.0 * log_scales) + spread), axis=-2))
