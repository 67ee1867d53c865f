"""The Weinberg toy model of e+e- -> mu+mu- near the Z pole (spec §4).

`theta = (beam_energy ~ U[40, 50] GeV, fermi_constant ~ U[0.5, 1.5])`; each observation is the cosine
`x` of the muon's angle, on `[-1, 1]`, with density proportional to `max(0, 1 + x^2 + A x)` and the
forward-backward asymmetry `A = 2 tanh(10 (2 E_beam - M_Z) / M_Z) * G_F`, `M_Z = 90`.

The data depend on `theta` only through `A`, so the two parameters are not separately identifiable; the
evaluation reports errors in `A` too (`derived_parameters`).
"""

from __future__ import annotations

from typing import Dict, Tuple

import tensorflow as tf

from alfi_tf.simulators.base import Simulator, box_prior

Z_MASS = 90.0


def _antiderivative(x: tf.Tensor, asymmetry: tf.Tensor) -> tf.Tensor:
  """`P(x) = x + x^3/3 + A x^2/2`, the antiderivative of `1 + x^2 + A x`."""
  return x + x * x * x / 3.0 + 0.5 * asymmetry * x * x


def _negative_interval(asymmetry: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """`[a, b]`: where `1 + x^2 + A x < 0` inside `[-1, 1]` (empty, `a == b`, when `|A| <= 2`)."""
  discriminant = tf.maximum(asymmetry * asymmetry - 4.0, 0.0)
  root = tf.sqrt(discriminant)
  low = tf.clip_by_value(0.5 * (-asymmetry - root), -1.0, 1.0)
  high = tf.clip_by_value(0.5 * (-asymmetry + root), -1.0, 1.0)
  truncated = discriminant > 0.0
  return tf.where(truncated, low, 0.0), tf.where(truncated, high, 0.0)


def _unnormalised_cdf(x: tf.Tensor, asymmetry: tf.Tensor, low: tf.Tensor,
                      high: tf.Tensor) -> tf.Tensor:
  """`int_{-1}^{x} max(0, 1 + t^2 + A t) dt`: the plain integral minus the negative part."""
  negative_part = (_antiderivative(tf.clip_by_value(x, low, high), asymmetry)
                   - _antiderivative(low, asymmetry))
  return _antiderivative(x, asymmetry) - _antiderivative(-1.0, asymmetry) - negative_part


def normaliser(asymmetry: tf.Tensor) -> tf.Tensor:
  """`Z(A) = int_{-1}^{1} max(0, 1 + x^2 + A x) dx` (8/3 when `|A| <= 2`)."""
  low, high = _negative_interval(asymmetry)
  return _unnormalised_cdf(tf.ones_like(asymmetry), asymmetry, low, high)


def _cube_root(x: tf.Tensor) -> tf.Tensor:
  """The real cube root of float64 `x`.

  A float32 `pow` (float64's is ~20% of the sampler's time on CPU) refined by one Newton step, which
  squares its ~1e-7 relative error down to float64 precision.
  """
  magnitude = tf.abs(x)
  root = tf.cast(tf.pow(tf.cast(magnitude, tf.float32), 1.0 / 3.0), tf.float64)
  root -= tf.math.divide_no_nan(root * root * root - magnitude, 3.0 * root * root)
  return tf.sign(x) * root


def inverse_cdf(uniform: tf.Tensor, asymmetry: tf.Tensor) -> tf.Tensor:
  """`F_A^{-1}(u)` in closed form: the root of the cubic CDF, solved in float64 by Cardano's formula.

  For `A >= 0` the density vanishes at most on `[-1, s]`, `s` the larger root of `1 + x^2 + A x`
  (the smaller one is `1 / s <= -1`); above `s` the CDF is `(P(x) - P(s)) / Z` with `P` the
  antiderivative, increasing there, so `x` is the largest real root of `P(x) = P(s) + u Z`. `A < 0`
  mirrors it: `F_A^{-1}(u) = -F_{-A}^{-1}(1 - u)`. Near a double root (a zero of the density) the
  inverse is ill-conditioned, but float64 keeps its error (~sqrt(1e-16)) below float32 resolution.

  Args:
    uniform: `[...]` values in `[0, 1]`.
    asymmetry: `A`, broadcastable to `uniform`.

  Returns:
    float32 `x` in `[-1, 1]`, the shape of `uniform`.
  """
  asymmetry = tf.cast(asymmetry, tf.float64)
  mirrored = asymmetry < 0.0
  uniform = tf.cast(uniform, tf.float64)
  uniform = tf.where(mirrored, 1.0 - uniform, uniform)
  a = tf.abs(asymmetry)
  start = tf.where(a > 2.0, 0.5 * (tf.sqrt(tf.maximum(a * a - 4.0, 0.0)) - a), -1.0)
  level = _antiderivative(start, a) + uniform * (_antiderivative(1.0, a) - _antiderivative(start, a))
  # x^3 + 1.5 a x^2 + 3 x - 3 level = 0 with x = y - a / 2 is y^3 + p y + q = 0.
  third_p = 1.0 - 0.25 * a * a
  half_q = 0.125 * a * a * a - 0.75 * a - 1.5 * level
  discriminant = half_q * half_q + third_p * third_p * third_p
  # One real root: Cardano, with the sign choice that avoids cancellation.
  sqrt_discriminant = tf.sqrt(tf.maximum(discriminant, 0.0))
  cardano = _cube_root(-half_q - tf.where(half_q >= 0.0, sqrt_discriminant, -sqrt_discriminant))
  single = cardano - tf.math.divide_no_nan(third_p, cardano)
  # Three real roots (p < 0): the largest, trigonometrically.
  radius = tf.sqrt(tf.maximum(-third_p, 0.0))
  angle = tf.acos(tf.clip_by_value(tf.math.divide_no_nan(-half_q, radius * radius * radius),
                                   -1.0, 1.0))
  largest = 2.0 * radius * tf.cos(angle / 3.0)
  x = tf.clip_by_value(tf.where(discriminant > 0.0, single, largest) - 0.5 * a, -1.0, 1.0)
  return tf.cast(tf.where(mirrored, -x, x), tf.float32)


class WeinbergSimulator(Simulator):
  """Angular distribution of muons in e+e- -> mu+mu-; sampled exactly by inverting its CDF."""

  name = "weinberg"

  def __init__(self):
    super().__init__(parameter_names=("beam_energy", "fermi_constant"), observation_dim=1,
                     prior=box_prior([40.0, 0.5], [50.0, 1.5]))

  @staticmethod
  def asymmetry(theta: tf.Tensor) -> tf.Tensor:
    """`A(theta)` for `theta [..., 2]`, shape `[...]`."""
    theta = tf.convert_to_tensor(theta, tf.float32)
    beam_energy, fermi_constant = theta[..., 0], theta[..., 1]
    return 2.0 * tf.tanh(10.0 * (2.0 * beam_energy - Z_MASS) / Z_MASS) * fermi_constant

  def derived_parameters(self, theta: tf.Tensor) -> Dict[str, tf.Tensor]:
    return {"asymmetry": self.asymmetry(theta)}

  def simulate(self, theta: tf.Tensor, num_obs: int, seed: tf.Tensor) -> tf.Tensor:
    # Gradients do not flow through the simulator (spec §2); the closed form would otherwise carry one.
    asymmetry = tf.stop_gradient(self.asymmetry(theta))[:, tf.newaxis]     # [batch, 1]
    uniform = tf.random.stateless_uniform(tf.stack([tf.shape(asymmetry)[0], num_obs]), seed=seed)
    return inverse_cdf(uniform, asymmetry)[..., tf.newaxis]

  def summary_statistics(self, observations: tf.Tensor) -> tf.Tensor:
    """The odd sample moments, means of `x` and `x^3`, `[batch, 2]`.

    Not sufficient: the log-likelihood `sum_i log max(0, 1 + x_i^2 + A x_i)` does not factor
    through finitely many statistics. Where `|A| <= 2` the density is `3/8 (1 + x^2 + A x)`, so the
    odd moments carry the information (`E x = A / 4`, `E x^3 = 3 A / 20`); the even ones are
    constant (`2/5`, `9/35`) there and, measured as ABC summaries, only added noise (error in `A`
    0.25 with the first four moments against 0.21 with the odd ones, n = 100).
    """
    x = tf.convert_to_tensor(observations, tf.float32)[..., 0]             # [batch, n]
    return tf.stack([tf.reduce_mean(x, axis=1), tf.reduce_mean(x ** 3, axis=1)], axis=-1)

  def log_likelihood(self, theta: tf.Tensor, observations: tf.Tensor) -> tf.Tensor:
    asymmetry = self.asymmetry(theta)[..., tf.newaxis]                      # [batch, k, 1]
    x = tf.convert_to_tensor(observations, tf.float32)[:, tf.newaxis, :, 0]  # [batch, 1, n]
    density = tf.maximum(1.0 + x * x + asymmetry * x, 1e-30)
    count = tf.cast(tf.shape(x)[-1], tf.float32)
    return (tf.reduce_sum(tf.math.log(density), axis=-1)
            - count * tf.math.log(normaliser(asymmetry[..., 0])))
