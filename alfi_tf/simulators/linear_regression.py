"""Linear regression with slopes parameterised as angles (spec §4).

`theta = (angle_1..angle_p ~ U(0, pi/2), offset ~ U(-1, 1))`. Each observation draws covariates
`u ~ U(-1, 1)^p` and a response `y = sum_k tan(angle_k) u_k + offset + eps`, `eps ~ N(0, 0.1^2)`, and is
recorded as `x = (u_1..u_p, 1, y)` (`d_x = p + 2`): the constant column makes the design matrix of a
set of observations a plain slice of it. The covariates are the simulator's design (`design_dim = p`,
`simulate_at_design`): the machine can simulate responses at the real data's covariates.

With the noise level known the likelihood is Gaussian in the coefficients `beta = (tan(angles), offset)`,
so least squares gives the MLE, and the exact posterior mean is cheap (`posterior_mean`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf.simulators.base import Simulator, box_prior

NOISE_STD = 0.1
# float32(pi/2) rounds *up*, past the pole, where tan is about -2.3e7: a proposal clipped to the top of
# the prior box would flip the sign of its slope. Angles are capped at the largest float32 below pi/2
# instead, where the slope is about +1.3e7.
_MAX_ANGLE = float(np.nextafter(np.float32(math.pi / 2), np.float32(0.0)))


def _slopes(angles: tf.Tensor) -> tf.Tensor:
  """`tan(angles)`, with angles capped just below pi/2; any shape and float dtype."""
  return tf.tan(tf.minimum(angles, tf.cast(_MAX_ANGLE, angles.dtype)))


class SlopeAngleBijector(tfp.bijectors.Bijector):
  """`alpha = gd(u) = atan(sinh(u))` on the first `p` parameters (the angles), identity on the rest.

  The inverse is `u = asinh(tan(alpha)) = asinh(beta)`: the slope itself while it is small, its
  log while it is large. A slope's posterior std is about the same, `sigma_beta`, wherever it
  lies, so in `u` it is `sigma_beta / sqrt(1 + beta^2)`; in the angle it is
  `sigma_beta / (1 + beta^2)`, narrower by a further `1 + beta^2` (100 at a slope of 10). The
  logit of the prior's box (the default `parameter_bijector`) matches `u` on steep slopes but
  stretches the bottom of the box to `-inf`, where small slopes' posteriors then are skewed.
  `gd` maps onto `(-pi/2, pi/2)`, wider than the prior's `[0, pi/2]`: a proposal may step below
  0, and is clipped into the box for simulation as without a bijector.
  """

  def __init__(self, num_angles: int, name: str = "slope_angles"):
    parameters = dict(locals())
    self._num_angles = num_angles
    super().__init__(forward_min_event_ndims=0, is_constant_jacobian=False, parameters=parameters,
                     name=name)

  def _is_angle(self, x: tf.Tensor) -> tf.Tensor:
    """`[..., d]` bool: which entries are angles (the last axis is the parameter's)."""
    return tf.range(tf.shape(x)[-1]) < self._num_angles

  def _forward(self, u):
    return tf.where(self._is_angle(u), tf.atan(tf.sinh(u)), u)

  def _inverse(self, alpha):
    return tf.where(self._is_angle(alpha), tf.asinh(_slopes(alpha)), alpha)

  def _forward_log_det_jacobian(self, u):
    # d gd / du = 1 / cosh(u); log cosh(u) = |u| + log1p(exp(-2|u|)) - log 2, without overflow.
    log_cosh = tf.abs(u) + tf.math.log1p(tf.exp(-2.0 * tf.abs(u))) - math.log(2.0)
    return tf.where(self._is_angle(u), -log_cosh, tf.zeros_like(u))


class _LeastSquares(NamedTuple):
  """The least-squares fit of `y` on the design `D = (u, 1)` of each problem, in float64."""
  coefficients: tf.Tensor             # [batch, p + 1]: (slopes, offset) minimising ||y - D beta||^2.
  gram: tf.Tensor                     # [batch, p + 1, p + 1]: D^T D.
  gram_cholesky: tf.Tensor            # [batch, p + 1, p + 1]: lower-triangular L, L L^T = D^T D.
  residual_sum_of_squares: tf.Tensor  # [batch]: ||y - D coefficients||^2.
  count: tf.Tensor                    # scalar: n.


def _least_squares(observations: tf.Tensor) -> _LeastSquares:
  """Solves the normal equations of every problem in `observations [batch, n, p + 2]` at once.

  Float64 because responses reach ~1e7 for angles near pi/2, and the likelihood's quadratic form
  `(beta - beta_ls)^T D^T D (beta - beta_ls)` must stay accurate at a posterior width of ~1e-2.
  """
  observations = tf.cast(tf.convert_to_tensor(observations, tf.float32), tf.float64)
  design, response = observations[..., :-1], observations[..., -1]       # [b, n, p+1], [b, n]
  gram = tf.linalg.matmul(design, design, transpose_a=True)
  gram_cholesky = tf.linalg.cholesky(gram)
  moment = tf.linalg.matvec(design, response, transpose_a=True)          # [b, p+1]
  coefficients = tf.linalg.cholesky_solve(gram_cholesky, moment[..., tf.newaxis])[..., 0]
  residuals = response - tf.linalg.matvec(design, coefficients)
  return _LeastSquares(coefficients=coefficients, gram=gram, gram_cholesky=gram_cholesky,
                       residual_sum_of_squares=tf.reduce_sum(tf.square(residuals), axis=-1),
                       count=tf.cast(tf.shape(response)[1], tf.float64))


class LinearRegressionSimulator(Simulator):
  """`y = tan(angles) . u + offset + N(0, 0.1^2)` with `p` covariates per observation."""

  name = "linear_regression"

  def __init__(self, num_covariates: int = 3):
    if num_covariates < 1:
      raise ValueError(f"num_covariates must be at least 1, got {num_covariates}")
    self._num_covariates = num_covariates
    self.design_dim = num_covariates   # the covariates u are set by the experiment
    super().__init__(
        parameter_names=tuple(f"angle_{k}" for k in range(1, num_covariates + 1)) + ("offset",),
        observation_dim=num_covariates + 2,
        prior=box_prior([0.0] * num_covariates + [-1.0], [math.pi / 2] * num_covariates + [1.0]))

  @property
  def num_covariates(self) -> int:
    """`p`, the number of slopes."""
    return self._num_covariates

  @property
  def parameter_bijector(self) -> tfp.bijectors.Bijector:
    """`SlopeAngleBijector`: proposals in `asinh(slope)` and the offset."""
    return SlopeAngleBijector(self._num_covariates)

  def simulate(self, theta: tf.Tensor, num_obs: int, seed: tf.Tensor) -> tf.Tensor:
    theta = tf.convert_to_tensor(theta, tf.float32)
    p = self._num_covariates
    batch = tf.shape(theta)[0]
    covariate_seed, noise_seed = tfp.random.split_seed(seed, n=2)
    covariates = tf.random.stateless_uniform([batch, num_obs, p], seed=covariate_seed,
                                             minval=-1.0, maxval=1.0)
    return self.simulate_at_design(theta, covariates, noise_seed)

  def simulate_at_design(self, theta: tf.Tensor, design: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The responses at the covariates `design [batch, num_obs, p]`: `(u, 1, y)` per row."""
    theta = tf.convert_to_tensor(theta, tf.float32)
    design = tf.convert_to_tensor(design, tf.float32)
    p = self._num_covariates
    noise = NOISE_STD * tf.random.stateless_normal(tf.shape(design)[:2], seed=seed)
    response = (tf.einsum("bnp,bp->bn", design, _slopes(theta[:, :p]))
                + theta[:, p, tf.newaxis] + noise)
    return tf.concat([design, tf.ones_like(design[..., :1]), response[..., tf.newaxis]], axis=-1)

  def log_likelihood(self, theta: tf.Tensor, observations: tf.Tensor) -> tf.Tensor:
    """`sum_i log N(y_i; tan(angles) . u_i + offset, 0.1^2)`; the covariates' density is constant.

    Written as `RSS_ls + (beta - beta_ls)^T D^T D (beta - beta_ls)`, so each of the `k` candidates
    costs `O(p^2)` whatever `n`.
    """
    fit = _least_squares(observations)
    theta = tf.cast(tf.convert_to_tensor(theta, tf.float32), tf.float64)  # [batch, k, p+1]
    p = self._num_covariates
    coefficients = tf.concat([_slopes(theta[..., :p]), theta[..., p:]], axis=-1)
    delta = coefficients - fit.coefficients[:, tf.newaxis, :]
    quadratic = tf.einsum("bki,bij,bkj->bk", delta, fit.gram, delta)
    sum_of_squares = fit.residual_sum_of_squares[:, tf.newaxis] + quadratic
    log_likelihood = (-0.5 * fit.count * math.log(2.0 * math.pi * NOISE_STD**2)
                      - 0.5 * sum_of_squares / NOISE_STD**2)
    return tf.cast(log_likelihood, tf.float32)

  def maximum_likelihood(self, observations: tf.Tensor) -> tf.Tensor:
    """Least squares, slopes mapped to angles with `atan`.

    This is the unconstrained MLE: a negative fitted slope gives an angle below 0, outside the prior.
    """
    coefficients = _least_squares(observations).coefficients
    p = self._num_covariates
    return tf.cast(tf.concat([tf.atan(coefficients[:, :p]), coefficients[:, p:]], axis=-1),
                   tf.float32)

  def summary_statistics(self, observations: tf.Tensor) -> tf.Tensor:
    """The least-squares fit as angles and offset (the MLE), `[batch, p + 1]`.

    The likelihood depends on the data through `beta_ls` and the design's Gram matrix `D^T D / n`
    only (`log_likelihood`), so these, with `D^T D / n`, are sufficient; all are functions of the
    set's pooled second moments. `D^T D / n` and the residual sum of squares (the noise level is
    known) are ancillary: their distribution does not involve `theta`, so as ABC distances they
    would only add noise, and they are left out. Slopes are mapped to angles because `tan` sends
    the top of the prior to slopes of ~1e7, which no scale fits. Needs `n >= p + 1` observations.
    """
    return self.maximum_likelihood(observations)

  def posterior_mean(self, observations: tf.Tensor, seed: tf.Tensor,
                     num_samples: int = 4096) -> tf.Tensor:
    """The Bayes posterior mean of `theta` under the uniform prior, by importance sampling.

    Derivation. Write `beta = (tan(angle_1..angle_p), offset)` and `D = (u, 1)` for the `[n, p+1]`
    design. The covariates' density does not involve `theta`, and
    `||y - D beta||^2 = RSS_ls + (beta - beta_ls)^T D^T D (beta - beta_ls)`, so as a function of `beta`
    the likelihood is proportional to the normal density `N(beta; beta_ls, 0.1^2 (D^T D)^-1)`.
    The prior is uniform in `(angles, offset)`; changing variables with `d angle / d beta = 1/(1+beta^2)`
    gives `p(beta) ∝ 1{beta_1..p > 0} 1{|offset| <= 1} prod_k 1 / (1 + beta_k^2)`.
    Drawing `beta_j` from that normal as the proposal, it cancels against the likelihood, and the
    self-normalised weights are just `w_j ∝ p(beta_j)`. Then
    `E[theta | X] ≈ sum_j w_j (atan(beta_j slopes), beta_j offset) / sum_j w_j`, exact up to Monte-Carlo
    error of about (posterior std) / sqrt(effective sample size).

    Args:
      observations: `[batch, n, p + 2]`, with `n >= p + 1` so that `D^T D` is invertible.
      seed: int32 `[2]` stateless seed for the proposal draws.
      num_samples: proposal draws per problem.

    Returns:
      `[batch, p + 1]` float32 posterior means (angles, offset). NaN for a problem whose likelihood puts
      no draw inside the prior's support, which data simulated from the prior practically never do.
    """
    fit = _least_squares(observations)
    p = self._num_covariates
    batch = tf.shape(fit.coefficients)[0]
    standard = tf.random.stateless_normal([batch, p + 1, num_samples], seed=seed, dtype=tf.float64)
    # Covariance 0.1^2 (L L^T)^-1 = 0.1^2 L^-T L^-1, so beta_ls + 0.1 L^-T z has it.
    draws = fit.coefficients[..., tf.newaxis] + NOISE_STD * tf.linalg.triangular_solve(
        fit.gram_cholesky, standard, lower=True, adjoint=True)              # [batch, p+1, samples]
    slopes, offsets = draws[:, :p, :], draws[:, p, :]
    inside = tf.logical_and(tf.reduce_all(slopes > 0.0, axis=1), tf.abs(offsets) <= 1.0)
    weights = tf.where(inside, tf.reduce_prod(1.0 / (1.0 + tf.square(slopes)), axis=1),
                       tf.zeros_like(offsets))                              # [batch, samples]
    estimates = tf.concat([tf.atan(slopes), offsets[:, tf.newaxis, :]], axis=1)
    posterior_mean = (tf.reduce_sum(weights[:, tf.newaxis, :] * estimates, axis=-1)
                      / tf.reduce_sum(weights, axis=-1, keepdims=True))
    return tf.cast(posterior_mean, tf.float32)
