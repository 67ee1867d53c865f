"""A Gaussian with a full covariance, `q(theta | psi) = N(mu, L L^T)`: follows correlated
posteriors (a ridge such as Weinberg's, a regression's slopes and offset) that a diagonal Gaussian
can only cover with its marginals.

`psi = (mu, v)`, `[..., d + d(d+1)/2]`: the mean, then the Cholesky factor `L` packed by
`tfp.math.fill_triangular` with its diagonal in log space (`L_ii = exp(v_ii)`, so `L` is a valid
factor for every `v`; the same layout as `tfp.bijectors.FillScaleTriL(diag_bijector=Exp())`).
With `z = L^{-1} (theta - mu)` and `u = L^{-T} z = Sigma^{-1} (theta - mu)`,

    log q = -|z|^2 / 2 - sum_i log L_ii - d/2 log(2 pi),
    d log q / d mu       = u,
    d log q / d L_ij     = u_i z_j               (i > j),
    d log q / d log L_ii = u_i z_i L_ii - 1,

so the score costs two triangular solves per sample.
"""

from __future__ import annotations

import math
from typing import Tuple

import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf.model.proposals.base import Proposal, sample_shape

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


class FullCovarianceGaussian(Proposal):
  """`N(mu, L L^T)` with `psi = (mu, packed log-diagonal Cholesky factor)`, `P = d + d(d+1)/2`."""

  name = "full_covariance_gaussian"

  @property
  def psi_size(self) -> int:
    d = self.parameter_dim
    return d + d * (d + 1) // 2

  def split(self, psi: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`psi [..., P]` -> `(mu [..., d], L [..., d, d], log diag(L) [..., d])`."""
    mean, packed = psi[..., :self.parameter_dim], psi[..., self.parameter_dim:]
    raw = tfp.math.fill_triangular(packed)
    log_diagonal = tf.linalg.diag_part(raw)
    return mean, tf.linalg.set_diag(raw, tf.exp(log_diagonal)), log_diagonal

  def covariance(self, psi: tf.Tensor) -> tf.Tensor:
    """`Sigma = L L^T`, `[..., P] -> [..., d, d]`."""
    _, scale_tril, _ = self.split(psi)
    return tf.matmul(scale_tril, scale_tril, transpose_b=True)

  def initial_psi(self, mean: tf.Tensor) -> tf.Tensor:
    log_scale = tf.fill(tf.shape(mean), tf.constant(math.log(self.initial_scale), mean.dtype))
    return tf.concat([mean, tfp.math.fill_triangular_inverse(tf.linalg.diag(log_scale))], axis=-1)

  def sample(self, psi: tf.Tensor, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
    mean, scale_tril, _ = self.split(tf.stop_gradient(psi))
    noise = tf.random.stateless_normal(sample_shape(psi, num_samples, self.parameter_dim),
                                       seed=seed, dtype=psi.dtype)
    return mean[:, tf.newaxis] + tf.linalg.matvec(scale_tril[:, tf.newaxis], noise)

  def _whiten(self, theta: tf.Tensor, psi: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(z, L, log diag(L))` with `z = L^{-1} (theta - mu)`, broadcast over the leading axes."""
    mean, scale_tril, log_diagonal = self.split(psi)
    difference = theta - mean
    scale_tril = tf.broadcast_to(scale_tril, tf.concat([tf.shape(difference),
                                                        [self.parameter_dim]], axis=0))
    z = tf.linalg.triangular_solve(scale_tril, difference[..., tf.newaxis], lower=True)[..., 0]
    return z, scale_tril, log_diagonal

  def log_prob(self, theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
    z, _, log_diagonal = self._whiten(theta, psi)
    return (-0.5 * tf.reduce_sum(tf.square(z), axis=-1) - tf.reduce_sum(log_diagonal, axis=-1)
            - self.parameter_dim * _HALF_LOG_TWO_PI)

  def score(self, theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
    z, scale_tril, _ = self._whiten(theta, psi[:, tf.newaxis])                # [batch, M, d]
    u = tf.linalg.triangular_solve(scale_tril, z[..., tf.newaxis], lower=True,
                                   adjoint=True)[..., 0]                      # Sigma^-1 (theta-mu)
    outer = tf.linalg.band_part(u[..., :, tf.newaxis] * z[..., tf.newaxis, :], -1, 0)
    log_diagonal_score = tf.linalg.diag_part(outer) * tf.linalg.diag_part(scale_tril) - 1.0
    packed = tfp.math.fill_triangular_inverse(tf.linalg.set_diag(outer, log_diagonal_score))
    return tf.concat([u, packed], axis=-1)

  def mean(self, psi: tf.Tensor) -> tf.Tensor:
    return psi[..., :self.parameter_dim]

  def stddev(self, psi: tf.Tensor) -> tf.Tensor:
    _, scale_tril, _ = self.split(psi)
    return tf.norm(scale_tril, axis=-1)

  def update_units(self, psi: tf.Tensor) -> tf.Tensor:
    packed = psi[..., self.parameter_dim:]
    return tf.concat([self.stddev(psi), tf.ones_like(packed)], axis=-1)
