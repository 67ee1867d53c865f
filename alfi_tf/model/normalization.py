"""Standardisation of parameters and observations, with statistics stored in the model.

The statistics come from the meta-training set and are then used everywhere (validation, test,
inference, export), so a trained machine always sees inputs on the scale it was trained on.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from alfi_tf.config import OBSERVATION_TRANSFORMS



def transform_observations(observations: tf.Tensor, kind: str) -> tf.Tensor:
  """Applies an elementwise input transform before standardisation.

  `log1p` suits counts spanning orders of magnitude (Poisson): `mean(log1p(x))` varies smoothly with
  the log-rate over the whole prior range, where raw counts would saturate a tanh encoder.
  `asinh` is the signed analogue.

  Values below `log1p`'s domain never arrive in normal use (observed data are refused by
  `alfi_tf.checks.check_transform_domain`, the meta-training set when the statistics are computed,
  and failed simulated sets are zeroed by the machine first, `machine.usable_sets`); the clamp
  only keeps a stray one from turning into NaN inside the graph.
  """
  if kind == "none":
    return observations
  if kind == "log1p":
    return tf.math.log1p(tf.maximum(observations, 0.0))
  if kind == "asinh":
    return tf.math.asinh(observations)
  raise ValueError(f"observation_transform must be one of {OBSERVATION_TRANSFORMS}, got {kind!r}")


class Moments(NamedTuple):
  """Per-feature count, mean and sum of squared deviations, in float64, mergeable across chunks.

  Merging uses Chan et al.'s pairwise update, so statistics streamed chunk by chunk over a data set
  larger than memory agree with the one-pass statistics of the whole set to float64 rounding.
  """

  count: int
  mean: np.ndarray
  sum_squares: np.ndarray

  @classmethod
  def of(cls, data: np.ndarray, size: int) -> "Moments":
    """Moments of `data [..., size]` over every axis but the last."""
    flat = np.asarray(data, np.float64).reshape(-1, size)
    mean = flat.mean(axis=0) if len(flat) else np.zeros(size)
    # Non-finite data give non-finite moments, which `Standardizer.set_moments` rejects by name.
    with np.errstate(invalid="ignore", over="ignore"):
      return cls(len(flat), mean, ((flat - mean) ** 2).sum(axis=0))

  def merge(self, other: "Moments") -> "Moments":
    count = self.count + other.count
    if count == 0:
      return self
    delta = other.mean - self.mean
    mean = self.mean + delta * (other.count / count)
    sum_squares = (self.sum_squares + other.sum_squares
                   + delta ** 2 * (self.count * other.count / count))
    return Moments(count, mean, sum_squares)


class Standardizer(keras.layers.Layer):
  """`z = (x - mean) / std` per feature, with the statistics as non-trainable weights.

  Being weights, the statistics travel with checkpoints and SavedModel exports.
  """

  def __init__(self, size: int, name: Optional[str] = None):
    super().__init__(name=name)
    self.size = size
    self.mean = self.add_weight(shape=(size,), initializer="zeros", trainable=False, name="mean")
    self.std = self.add_weight(shape=(size,), initializer="ones", trainable=False, name="std")

  def adapt_to(self, data: np.ndarray) -> None:
    """Sets the statistics from `data [..., size]` (constant features get std 1)."""
    self.set_moments(Moments.of(data, self.size))

  def set_moments(self, moments: "Moments") -> None:
    """Sets the statistics from accumulated `Moments` (for data streamed in chunks)."""
    if moments.count == 0:
      raise ValueError(f"{self.name}: cannot compute statistics from no data")
    if not (np.all(np.isfinite(moments.mean)) and np.all(np.isfinite(moments.sum_squares))):
      raise ValueError(f"{self.name}: cannot compute statistics from non-finite data")
    std = np.sqrt(moments.sum_squares / moments.count)
    self.mean.assign(moments.mean.astype(np.float32))
    self.std.assign(np.where(std > 1e-8, std, 1.0).astype(np.float32))

  def forward(self, x: tf.Tensor) -> tf.Tensor:
    """Raw -> standardised."""
    return (x - self.mean) / self.std

  def inverse(self, z: tf.Tensor) -> tf.Tensor:
    """Standardised -> raw."""
    return z * self.std + self.mean

  def forward_log_det_jacobian(self) -> tf.Tensor:
    """`log |dz / dx| = -sum log std`: added to a log-density of `z` it gives one of raw `x`."""
    return -tf.reduce_sum(tf.math.log(self.std))

  def call(self, x: tf.Tensor) -> tf.Tensor:
    return self.forward(x)
