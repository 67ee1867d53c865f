"""A conditional neural spline flow, `q(theta | c)`, built from TFP bijectors: NPE's flexible
density head for skewed, curved and multimodal posteriors (Durkan et al. 2019, "Neural Spline
Flows"; sbi's and BayesFlow's default kind of density).

Generative direction, from base noise `u ~ N(0, I_d)` to parameters:

    u = y_0 -> y_1 -> ... -> y_L = z,    theta = mu(c) + L(c) z,

where each coupling layer `l` keeps the coordinates of a binary mask `m_l` and moves the others
through a monotone rational-quadratic spline (`tfp.bijectors.RationalQuadraticSpline`, identity
outside `[-B, B]`) whose bins and knot slopes a small network computes from `(m_l * y, c)`:

    y_{l+1} = m_l * y_l + (1 - m_l) * spline(y_l; net_l(m_l * y_l, c)).

The masks alternate between the even and the odd coordinates (for `d = 1` nothing is kept: the
spline depends on the context alone). The final affine map is the `ConditionalGaussian` head, so
with identity splines the flow is exactly that Gaussian, and is initialised as one. By the change
of variables,

    log q(theta | c) = log N(u; 0, I) - sum_l log |d y_{l+1} / d y_l| - sum_i log L_ii(c).

Shapes: `theta [batch, d]`, context `[batch, k]`, samples `[batch, S, d]`.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf.baselines.gaussian_density import ConditionalGaussian

tfb = tfp.bijectors

_MIN_BIN, _MIN_SLOPE = 1e-3, 1e-3
#: Softplus shift giving a knot slope of exactly 1 for a zero raw output (an identity spline at the
#: start): `_MIN_SLOPE + softplus(_UNIT_SLOPE) = 1`.
_UNIT_SLOPE = math.log(math.expm1(1.0 - _MIN_SLOPE))


def coupling_masks(parameter_dim: int, num_layers: int) -> np.ndarray:
  """`[num_layers, d]` float masks, 1 where a layer keeps a coordinate: even, odd, even, ..."""
  index = np.arange(parameter_dim)
  if parameter_dim == 1:
    return np.zeros([num_layers, 1], np.float32)
  return np.stack([(index + layer) % 2 == 0 for layer in range(num_layers)]).astype(np.float32)


class SplineCoupling(keras.layers.Layer):
  """One masked coupling layer with a conditional rational-quadratic spline per coordinate."""

  def __init__(self, mask: np.ndarray, hidden: int, num_bins: int, bound: float, name: str):
    super().__init__(name=name)
    self.mask = tf.constant(mask, tf.float32)
    self.num_bins = num_bins
    self.bound = bound
    d = len(mask)
    self.net = keras.Sequential([
        keras.layers.Dense(hidden, activation="relu", name="hidden"),
        keras.layers.Dense(hidden, activation="relu", name="hidden_2"),
        # Zero at the start: uniform bins and unit slopes, an identity map.
        keras.layers.Dense(d * (3 * num_bins - 1), kernel_initializer="zeros", name="spline"),
    ], name="conditioner")

  def build(self, input_shape) -> None:
    self.net.build(input_shape)

  def spline(self, kept: tf.Tensor, context: tf.Tensor) -> tfb.RationalQuadraticSpline:
    """The elementwise spline for the kept coordinates `[batch, d]` and context `[batch, k]`."""
    raw = self.net(tf.concat([kept, context], axis=-1))
    raw = tf.reshape(raw, tf.concat([tf.shape(kept), [3 * self.num_bins - 1]], axis=0))
    widths, heights, slopes = tf.split(
        raw, [self.num_bins, self.num_bins, self.num_bins - 1], axis=-1)

    def bins(logits):
      return (tf.nn.softmax(logits) * (2 * self.bound - self.num_bins * _MIN_BIN) + _MIN_BIN)

    return tfb.RationalQuadraticSpline(
        bin_widths=bins(widths), bin_heights=bins(heights),
        knot_slopes=_MIN_SLOPE + tf.nn.softplus(slopes + _UNIT_SLOPE), range_min=-self.bound)

  def forward(self, y: tf.Tensor, context: tf.Tensor) -> tf.Tensor:
    """Generative direction: `y_l -> y_{l+1}`, `[batch, d]`."""
    kept = self.mask * y
    return kept + (1.0 - self.mask) * self.spline(kept, context).forward(y)

  def inverse(self, y_next: tf.Tensor, context: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Normalising direction: `y_{l+1} -> (y_l, log |d y_l / d y_{l+1}| [batch])`."""
    kept = self.mask * y_next            # the kept coordinates are the same on both sides
    spline = self.spline(kept, context)
    y = kept + (1.0 - self.mask) * spline.inverse(y_next)
    log_det = spline.inverse_log_det_jacobian(y_next, event_ndims=0)
    return y, tf.reduce_sum((1.0 - self.mask) * log_det, axis=-1)


class ConditionalSplineFlow(keras.layers.Layer):
  """`num_layers` spline couplings followed by a conditional full-covariance affine map."""

  def __init__(self, parameter_dim: int, num_layers: int = 4, hidden: int = 64,
               num_bins: int = 8, bound: float = 5.0, name: str = "conditional_spline_flow"):
    super().__init__(name=name)
    self.parameter_dim = parameter_dim
    self.couplings: List[SplineCoupling] = [
        SplineCoupling(mask, hidden, num_bins, bound, name=f"coupling_{i}")
        for i, mask in enumerate(coupling_masks(parameter_dim, num_layers))]
    self.gaussian = ConditionalGaussian(parameter_dim, name="affine")

  def build(self, context_shape) -> None:
    context_size = context_shape[-1]
    for coupling in self.couplings:
      coupling.build((None, self.parameter_dim + context_size))
    self.gaussian.build(context_shape)

  def normalize(self, theta: tf.Tensor, context: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Normalising direction: `theta [batch, d] -> (u [batch, d], log |du / dtheta| [batch])`."""
    mean, scale_tril, log_diagonal = self.gaussian.affine(context)
    u = tf.linalg.triangular_solve(scale_tril, (theta - mean)[..., tf.newaxis], lower=True)[..., 0]
    log_det = -tf.reduce_sum(log_diagonal, axis=-1)
    for coupling in reversed(self.couplings):
      u, layer_log_det = coupling.inverse(u, context)
      log_det += layer_log_det
    return u, log_det

  def generate(self, u: tf.Tensor, context: tf.Tensor) -> tf.Tensor:
    """Generative direction: base noise `u [batch, d]` -> `theta [batch, d]`."""
    for coupling in self.couplings:
      u = coupling.forward(u, context)
    mean, scale_tril, _ = self.gaussian.affine(context)
    return mean + tf.linalg.matvec(scale_tril, u)

  def log_prob(self, theta: tf.Tensor, context: tf.Tensor) -> tf.Tensor:
    """`log q(theta | c)`, `[batch]`, by the change of variables."""
    u, log_det = self.normalize(theta, context)
    return (-0.5 * tf.reduce_sum(tf.square(u), axis=-1) + log_det
            - 0.5 * self.parameter_dim * math.log(2.0 * math.pi))

  def sample(self, context: tf.Tensor, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
    """`[batch, num_samples, d]` draws from `q(theta | c)`."""
    batch = tf.shape(context)[0]
    u = tf.random.stateless_normal(tf.stack([batch * num_samples, self.parameter_dim]), seed=seed)
    theta = self.generate(u, tf.repeat(context, num_samples, axis=0))
    return tf.reshape(theta, tf.stack([batch, num_samples, self.parameter_dim]))
