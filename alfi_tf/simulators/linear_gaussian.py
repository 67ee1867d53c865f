"""Linear-Gaussian models of any dimension, with an exact and correlated posterior: the scaling
benchmark (`linear_gaussian_2`, `_5`, `_10`, `_20`).

`theta ~ N(0, I_d)`; each observation is `x = A theta + eps`, `eps ~ N(0, s^2 I_d)`, with the
lower-bidiagonal mixing matrix `A = I + c S` (`S` ones on the first subdiagonal, `c = coupling`),
so neighbouring parameters are confounded and the posterior is correlated. With `n` observations,
the posterior is Gaussian, with

    precision  P = I + n A^T A / s^2,      mean = P^{-1} A^T (sum_i x_i) / s^2,

and the MLE is `A^{-1} x_bar`. Shapes: `theta [batch, d]`, observations `[batch, n, d]`.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf.simulators.base import Simulator

tfd = tfp.distributions

#: The dimensions registered by name (`linear_gaussian_<d>`).
SCALING_DIMENSIONS = (2, 5, 10, 20)


class LinearGaussianSimulator(Simulator):
  """`x = A theta + eps` in `d` dimensions; the likelihood, MLE and posterior are closed-form.

  Args:
    dim: `d` (parameters and observation dimensions).
    coupling: `c`, the weight of each parameter in its neighbour's observation.
    noise_std: `s`.
  """

  name = "linear_gaussian"

  def __init__(self, dim: int = 2, coupling: float = 0.8, noise_std: float = 1.0):
    if dim < 1:
      raise ValueError(f"dim must be positive, got {dim}")
    super().__init__(parameter_names=[f"theta_{i}" for i in range(dim)], observation_dim=dim,
                     prior=tfd.MultivariateNormalDiag(tf.zeros(dim), tf.ones(dim)))
    self.name = f"linear_gaussian_{dim}"
    self.noise_std = noise_std
    self.mixing = np.eye(dim) + coupling * np.eye(dim, k=-1)              # A, float64

  def simulate(self, theta: tf.Tensor, num_obs: int, seed: tf.Tensor) -> tf.Tensor:
    theta = tf.convert_to_tensor(theta, tf.float32)
    noise = tf.random.stateless_normal([tf.shape(theta)[0], num_obs, self.observation_dim],
                                       seed=seed)
    signal = tf.linalg.matvec(tf.constant(self.mixing, tf.float32), theta)  # [batch, d]
    return signal[:, tf.newaxis] + self.noise_std * noise

  def log_likelihood(self, theta: tf.Tensor, observations: tf.Tensor) -> tf.Tensor:
    x = tf.cast(tf.convert_to_tensor(observations, tf.float32), tf.float64)  # [batch, n, d]
    signal = tf.linalg.matvec(tf.constant(self.mixing), tf.cast(theta, tf.float64))
    residuals = x[:, tf.newaxis] - signal[:, :, tf.newaxis]                  # [batch, k, n, d]
    count = tf.cast(tf.size(x[0]), tf.float64)
    return (-0.5 * tf.reduce_sum(tf.square(residuals), axis=[2, 3]) / self.noise_std ** 2
            - count * (math.log(self.noise_std) + 0.5 * math.log(2.0 * math.pi)))

  def maximum_likelihood(self, observations: tf.Tensor) -> tf.Tensor:
    mean = tf.reduce_mean(tf.cast(tf.convert_to_tensor(observations, tf.float32), tf.float64),
                          axis=1)
    estimate = tf.linalg.triangular_solve(tf.constant(self.mixing)[tf.newaxis],
                                          mean[..., tf.newaxis], lower=True)[..., 0]
    return tf.cast(estimate, tf.float32)

  def summary_statistics(self, observations: tf.Tensor) -> tf.Tensor:
    """The sample mean of each dimension, `[batch, d]`: sufficient, as the posterior depends on the
    data only through `sum_i x_i` (and `n`)."""
    return tf.reduce_mean(tf.convert_to_tensor(observations, tf.float32), axis=1)

  def _posterior(self, observations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """`(mean [batch, d], covariance [d, d])` of the exact posterior, float64."""
    x = tf.cast(tf.convert_to_tensor(observations, tf.float32), tf.float64)
    count = tf.cast(tf.shape(x)[1], tf.float64)
    mixing = tf.constant(self.mixing)
    precision = (tf.eye(self.parameter_dim, dtype=tf.float64)
                 + count * tf.matmul(mixing, mixing, transpose_a=True) / self.noise_std ** 2)
    covariance = tf.linalg.inv(precision)
    projected = tf.linalg.matvec(mixing, tf.reduce_sum(x, axis=1), transpose_a=True)
    return tf.linalg.matvec(covariance, projected) / self.noise_std ** 2, covariance

  def posterior_mean(self, observations: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    del seed   # closed form
    return tf.cast(self._posterior(observations)[0], tf.float32)

  def posterior_std(self, observations: tf.Tensor) -> tf.Tensor:
    mean, covariance = self._posterior(observations)
    return tf.cast(tf.broadcast_to(tf.sqrt(tf.linalg.diag_part(covariance)), tf.shape(mean)),
                   tf.float32)
