"""A conditional full-covariance Gaussian, `q(theta | c) = N(mu(c), L(c) L(c)^T)`: NPE's simplest
density head (sbi's and BayesFlow's "Gaussian" posterior).

A dense layer maps the context `c [batch, k]` to `psi(c)`, the parameters of ALFI's own
`FullCovarianceGaussian` proposal (mean, then the Cholesky factor packed by
`tfp.math.fill_triangular` with a log diagonal), so the two methods share one sampler and one
log-density:

    log q(theta | c) = -|z|^2 / 2 - sum_i log L_ii(c) - d/2 log(2 pi),   z = L(c)^{-1} (theta - mu(c)).

Shapes: `theta [batch, d]`, context `[batch, k]`, samples `[batch, S, d]`.
"""

from __future__ import annotations

from typing import Tuple

import keras
import tensorflow as tf

from alfi_tf.model.proposals import FullCovarianceGaussian


class ConditionalGaussian(keras.layers.Layer):
  """`N(mu(c), L(c) L(c)^T)` over `d` parameters; `psi(c)` is a linear map of the context.

  The map starts at zero: an untrained head is a standard normal (the prior's scale, since NPE
  works on standardised parameters).
  """

  def __init__(self, parameter_dim: int, name: str = "conditional_gaussian"):
    super().__init__(name=name)
    self.parameter_dim = parameter_dim
    self.family = FullCovarianceGaussian(parameter_dim, initial_scale=1.0)
    self.to_psi = keras.layers.Dense(self.family.psi_size, kernel_initializer="zeros",
                                     name="psi")

  def build(self, context_shape) -> None:
    self.to_psi.build(context_shape)

  def call(self, context: tf.Tensor) -> tf.Tensor:
    """`psi [batch, d + d(d+1)/2]` of the context `[batch, k]`."""
    return self.to_psi(context)

  def affine(self, context: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(mu [batch, d], L [batch, d, d], log diag(L) [batch, d])`."""
    return self.family.split(self(context))

  def log_prob(self, theta: tf.Tensor, context: tf.Tensor) -> tf.Tensor:
    """`log q(theta | c)`, `[batch]`."""
    return self.family.log_prob(theta, self(context))

  def sample(self, context: tf.Tensor, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
    """`[batch, num_samples, d]` draws from `q(theta | c)`."""
    return self.family.sample(self(context), num_samples, seed)

  def mean_and_std(self, context: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """The exact mean and marginal standard deviations, `[batch, d]` each."""
    psi = self(context)
    return psi[:, :self.parameter_dim], tf.sqrt(tf.linalg.diag_part(self.family.covariance(psi)))
