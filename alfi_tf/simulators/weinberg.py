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
# Bisection halves [-1, 1] this many times: 2^-30 is far below float32 resolution near 1.
_BISECTION_STEPS = 30


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
    asymmetry = self.asymmetry(theta)[:, tf.newaxis]                       # [batch, 1]
    batch = tf.shape(asymmetry)[0]
    uniform = tf.random.stateless_uniform([batch, num_obs], seed=seed)
    low, high = _negative_interval(asymmetry)
    target = uniform * _unnormalised_cdf(tf.ones_like(asymmetry), asymmetry, low, high)
    # The CDF is monotone on [-1, 1]: bisection is exact to float precision and fully vectorised.
    left = -tf.ones_like(uniform)
    right = tf.ones_like(uniform)
    for _ in range(_BISECTION_STEPS):
      middle = 0.5 * (left + right)
      below = _unnormalised_cdf(middle, asymmetry, low, high) < target
      left = tf.where(below, middle, left)
      right = tf.where(below, right, middle)
    return (0.5 * (left + right))[..., tf.newaxis]

  def log_likelihood(self, theta: tf.Tensor, observations: tf.Tensor) -> tf.Tensor:
    asymmetry = self.asymmetry(theta)[..., tf.newaxis]                      # [batch, k, 1]
    x = tf.convert_to_tensor(observations, tf.float32)[:, tf.newaxis, :, 0]  # [batch, 1, n]
    density = tf.maximum(1.0 + x * x + asymmetry * x, 1e-30)
    count = tf.cast(tf.shape(x)[-1], tf.float32)
    return (tf.reduce_sum(tf.math.log(density), axis=-1)
            - count * tf.math.log(normaliser(asymmetry[..., 0])))
