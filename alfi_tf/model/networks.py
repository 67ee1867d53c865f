"""The three learned parts of the machine: set encoder `f`, sample aggregator `g` and the updater."""

from __future__ import annotations

from typing import List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf


def _mlp(hidden: int, out: int, output_activation: Optional[str], name: str) -> keras.Sequential:
  return keras.Sequential([
      keras.layers.Dense(hidden, activation="relu", name="hidden"),
      keras.layers.Dense(out, activation=output_activation, name="out"),
  ], name=name)


class SetEncoder(keras.layers.Layer):
  """`f`: a per-observation MLP followed by mean pooling over the set.

  Maps `[..., n, d_x]` to `[..., size]`. The per-observation MLP runs on a flattened `[-1, d_x]`
  matrix so that every set in the (possibly large) batch goes through one matmul per layer.

  With `moment_features`, the set's own mean and log standard deviation per observation dimension are
  appended (`+ 2 d_x`). Mean pooling can only express a spread through the curvature of `f`, which
  at n = 500 and a narrow distribution is far below the precision an MLP reaches; the explicit
  moments hand that information to the machine directly.

  With `cross_moment_features`, the set's mean of the products `x_j x_k` (`j <= k`) is appended
  too (`+ d_x (d_x + 1) / 2`): the pooled second moments that carry a regression's information
  (`D^T D`, `D^T y`) and that a per-observation MLP followed by a mean can only approximate.

  With `relative` (which needs `moment_features`), observations are measured against a reference
  set's mean `m` and standard deviation `s` (per dimension) before the MLP and the cross moments:
  `asinh((x - m) / s)`. The real data are their own reference; simulated sets are measured against
  the real data's, read back from the real encoding's moment features (`reference`). A fixed
  standardisation fitted to the whole prior leaves a narrow real set (a high Poisson rate, a
  regression with steep slopes) a sliver of the MLP's input range, where near and far simulations
  look alike; relative to the real set, the MLP's resolution sits where the answer is, at every
  scale, and `asinh` keeps far simulations finite. Then the real set's moment features stay
  absolute (they carry the reference and its location), and a simulated set's are relative:
  `asinh((mean - m) / s)` and `log std - log s`.
  """

  #: The smallest reference spread, in standardised units: a constant column (a regression's
  #: intercept column, all-zero counts) measures as `x - m` scaled by this.
  MIN_STD = 1e-3

  def __init__(self, hidden: int, out: int, moment_features: bool = False,
               observation_dim: int = 0, cross_moment_features: bool = False,
               relative: bool = False, name: str = "set_encoder"):
    super().__init__(name=name)
    if relative and not moment_features:
      raise ValueError("a relative set encoder needs moment_features (they carry the reference)")
    self.out = out
    self.moment_features = moment_features
    self.cross_moment_features = cross_moment_features
    self.relative = relative
    self.observation_dim = observation_dim
    self._upper = np.triu_indices(observation_dim)
    self.size = (out + (2 * observation_dim if moment_features else 0)
                 + (len(self._upper[0]) if cross_moment_features else 0))
    self.net = _mlp(hidden, out, "tanh", name="per_observation")

  def reference(self, encoding: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """The `(mean, log std)` `[..., d_x]` a (real) set's `encoding [..., size]` carries."""
    dx = self.observation_dim
    return encoding[..., self.out:self.out + dx], encoding[..., self.out + dx:self.out + 2 * dx]

  def call(self, observations: tf.Tensor,
           reference: Optional[Tuple[tf.Tensor, tf.Tensor]] = None) -> tf.Tensor:
    """`observations [..., n, d_x]` -> `[..., size]`; `reference`: `(mean, log std)`, each
    `[..., d_x]`, of the set to measure against (relative encoders; default the set itself)."""
    moments = self._moments(observations) if self.moment_features else None
    if self.relative:
      observations, moments = self._relative(observations, moments, reference)
    features = [self._pooled(observations)]
    if moments is not None:
      features += list(moments)
    if self.cross_moment_features:
      features.append(self._cross_moments(observations))
    return tf.concat(features, axis=-1)

  def _relative(self, observations: tf.Tensor, moments: Tuple[tf.Tensor, tf.Tensor],
                reference: Optional[Tuple[tf.Tensor, tf.Tensor]]
                ) -> Tuple[tf.Tensor, Tuple[tf.Tensor, tf.Tensor]]:
    """The observations measured against `reference` (default their own moments), and the
    moment features to report: absolute for the reference set itself, else relative to it."""
    reference_mean, reference_log_std = moments if reference is None else reference
    scale = tf.exp(reference_log_std)
    relative = tf.math.asinh((observations - reference_mean[..., tf.newaxis, :])
                             / scale[..., tf.newaxis, :])
    if reference is None:
      return relative, moments
    mean, log_std = moments
    return relative, (tf.math.asinh((mean - reference_mean) / scale), log_std - reference_log_std)

  def _moments(self, observations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Per-dimension mean and log std (floored at `MIN_STD`) over the set, each `[..., d_x]`."""
    mean, variance = tf.nn.moments(observations, axes=[-2])
    return mean, 0.5 * tf.math.log(variance + self.MIN_STD ** 2)

  def _pooled(self, observations: tf.Tensor) -> tf.Tensor:
    shape = tf.shape(observations)
    flat = tf.reshape(observations, [-1, observations.shape[-1]])
    encoded = tf.reshape(self.net(flat), tf.concat([shape[:-1], [self.out]], axis=0))
    return tf.reduce_mean(encoded, axis=-2)

  def _cross_moments(self, observations: tf.Tensor) -> tf.Tensor:
    shape = tf.shape(observations)
    products = tf.einsum("...ni,...nj->...ij", observations, observations)
    products /= tf.cast(shape[-2], observations.dtype)
    rows, columns = self._upper
    return tf.gather(tf.reshape(products, tf.concat([shape[:-2], [-1]], axis=0)),
                     rows * observations.shape[-1] + columns, axis=-1)


class PairedSetEncoder(keras.layers.Layer):
  """`f_pair`: each simulated set against the real observations at the same design rows.

  For simulators with a design (the first `design_dim` observation columns, set by the
  experiment), a step simulates every sample at `N` rows of the real data's design
  (`InferenceMachine.observations_at_design`). Row `i` of a simulated set and row `i` of the real
  rows then differ only through the parameters and the noise, so the pair is encoded together:
  `(design_i, asinh(sim_i - real_i))` (the columns after the design as residuals; `asinh` keeps
  far samples finite), pooled by a `SetEncoder` with moment and cross-moment features. The mean
  residual and the mean products of design and residual are what a regression's parameter error
  shows in: `mean(u_k (y_sim - y_real)) ~ Cov(u) (beta - beta*)`.

  `pairs` maps real rows `[..., N, d_x]` and simulated sets `[..., M, N, d_x]` (both
  standardised) to the paired rows, which the layer encodes to `[..., M, size]`.
  """

  def __init__(self, hidden: int, out: int, observation_dim: int, design_dim: int,
               name: str = "paired_encoder"):
    super().__init__(name=name)
    self.design_dim = design_dim
    self.encoder = SetEncoder(hidden, out, moment_features=True, observation_dim=observation_dim,
                              cross_moment_features=True, name="paired_set_encoder")
    self.size = self.encoder.size

  def pairs(self, real_rows: tf.Tensor, simulated: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """`(design [..., M, N, D], asinh(sim - real) [..., M, N, r])` of the paired rows.

    What `call` and `residual_moments` read, so that a step computes the residuals once for both.
    """
    real = tf.broadcast_to(real_rows[..., tf.newaxis, :, :], tf.shape(simulated))
    residual = tf.math.asinh(simulated[..., self.design_dim:] - real[..., self.design_dim:])
    return real[..., :self.design_dim], residual

  def call(self, pairs: Tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
    """The encoding `[..., M, size]` of `pairs(real_rows, simulated)`."""
    return self.encoder(tf.concat(pairs, axis=-1))

  def residual_moments(self, pairs: Tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
    """Each simulated set's mean residual and mean products of design and residual.

    `[..., M, r (1 + D)]` of `pairs(real_rows, simulated)` for `r` response and `D` design
    columns: for a regression, linear in its parameters near the real data's (where `asinh` is
    the identity), and zero for the real rows against themselves; the summaries of
    `InferenceMachine`'s regression step at the observed design.
    """
    design, residual = pairs                                                   # [..., M, N, D|r]
    products = design[..., :, tf.newaxis] * residual[..., tf.newaxis, :]       # [..., M, N, D, r]
    products = tf.reshape(products, tf.concat(
        [tf.shape(products)[:-2], [products.shape[-2] * products.shape[-1]]], axis=0))
    return tf.reduce_mean(tf.concat([residual, products], axis=-1), axis=-2)


class SampleAggregator(keras.layers.Layer):
  """`g`: maps each sample's features `[batch, M, k]` to a vector, then averages over the M samples.

  With `valid [batch, M]`, the average runs over the valid samples only (those whose simulations
  came back finite): a simulator that fails for part of its prior does not poison the step. A
  problem without any valid sample gets a zero context that step.
  """

  def __init__(self, hidden: int, out: int, name: str = "sample_aggregator"):
    super().__init__(name=name)
    self.net = _mlp(hidden, out, None, name="per_sample")

  def call(self, features: tf.Tensor, valid: Optional[tf.Tensor] = None) -> tf.Tensor:
    per_sample = self.net(features)                                             # [batch, M, C]
    mean = tf.reduce_mean(per_sample, axis=1)
    if valid is None:
      return mean
    weights = tf.cast(valid, per_sample.dtype)[..., tf.newaxis]                 # [batch, M, 1]
    masked_mean = (tf.reduce_sum(per_sample * weights, axis=1)
                   / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0))
    # The plain mean where every sample is valid: exactly what it was before masks existed.
    return tf.where(tf.reduce_all(valid, axis=1, keepdims=True), mean, masked_mean)


class Updater(keras.layers.Layer):
  """Input MLP -> Keras `LSTMCell` -> output layer -> bounded `Delta psi`.

  The output layer starts at zero so that an untrained machine leaves `psi` where it is, instead of
  taking random bounded steps away from its start. With `shortcut`, a second output layer (zero
  at the start too) gates a given direction `[batch, P]` entry by entry into the step, before
  the bound: the step can then follow the direction to its last digit, which an output computed
  through the LSTM's saturating units only approximates.
  """

  def __init__(self, hidden: int, lstm_units: int, psi_size: int, bound: float, bound_type: str,
               shortcut: bool = False, name: str = "updater"):
    super().__init__(name=name)
    self.bound = bound
    self.bound_type = bound_type
    self.lstm_units = lstm_units
    self.input_net = keras.layers.Dense(hidden, activation="relu", name="input")
    self.cell = keras.layers.LSTMCell(lstm_units, name="lstm_cell")
    self.output_net = keras.Sequential([
        keras.layers.Dense(hidden, activation="relu", name="hidden"),
        keras.layers.Dense(psi_size, kernel_initializer="zeros", name="delta"),
    ], name="output")
    self.gate = (keras.layers.Dense(psi_size, kernel_initializer="zeros", name="shortcut_gate")
                 if shortcut else None)

  def initial_state(self, batch_size: tf.Tensor) -> List[tf.Tensor]:
    """`h_0 = c_0 = 0`, each `[batch, lstm_units]`."""
    zeros = tf.zeros(tf.stack([batch_size, self.lstm_units]))
    return [zeros, zeros]

  def call(self, inputs: tf.Tensor, state: List[tf.Tensor],
           direction: Optional[tf.Tensor] = None) -> Tuple[tf.Tensor, List[tf.Tensor]]:
    """`[batch, k]` inputs, the LSTM state and (with `shortcut`) the `direction [batch, P]` ->
    (`Delta psi [batch, P]`, new state)."""
    if (direction is None) != (self.gate is None):
      raise ValueError("an updater with a shortcut takes a direction, and only then")
    hidden, new_state = self.cell(self.input_net(inputs), state)
    raw = self.output_net(hidden)
    if self.gate is not None:
      raw = raw + self.gate(hidden) * direction
    if self.bound_type == "tanh":
      delta = self.bound * tf.tanh(raw / self.bound)
    else:
      delta = tf.clip_by_value(raw, -self.bound, self.bound)
    return delta, list(new_state)
