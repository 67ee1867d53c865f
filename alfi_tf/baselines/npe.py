"""Amortised neural posterior estimation (NPE), the baseline alfi-tf is compared against.

NPE (Papamakarios & Murray 2016; Greenberg et al. 2019; the `sbi` and BayesFlow default) trains a
conditional density `q(theta | s(X))` on pairs `(theta*, X)` drawn from the prior and the simulator,
by maximum likelihood:

    min  E_{theta* ~ p(theta), X ~ p(X | theta*)} [ -log q(theta* | s(X)) ],

whose minimiser is the exact posterior `p(theta | X)` for a sufficient summary `s`. At test time a
data set costs one forward pass and no simulation: all simulations go into training
(`num_problems x num_obs` simulated observations).

The summary network `s` is ALFI's own set encoder (a per-observation MLP, mean-pooled, optionally
with the set's moments), on the same input transform and standardisation, followed by a small MLP;
its output and the pooled encoding together condition the density head, either a full-covariance
Gaussian (`gaussian_density`) or a neural spline flow (`spline_flow`). Parameters are standardised
with the training set's moments; densities are reported in raw units.

Shapes: `theta [batch, d]`, observations `[batch, n, d_x]`, samples `[batch, S, d]`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, NamedTuple, Tuple

import keras
import numpy as np
import tensorflow as tf

from alfi_tf.checks import check_observations, check_transform_domain
from alfi_tf.config import (OBSERVATION_TRANSFORMS, require_choice, require_positive,
                            require_well_formed, to_dict)
from alfi_tf.baselines.gaussian_density import ConditionalGaussian
from alfi_tf.baselines.spline_flow import ConditionalSplineFlow
from alfi_tf.model.arguments import (check_float_tensor, check_model_arguments, check_problems,
                                     check_seed, require_positive_integer)
from alfi_tf.model.loss_model import LossModel, float32_layers
from alfi_tf.model.networks import SetEncoder
from alfi_tf.model.normalization import Standardizer, transform_observations
from alfi_tf.simulators import Simulator, get_simulator

#: NPE's conditional density heads.
DENSITIES = ("gaussian", "flow")


@dataclasses.dataclass(frozen=True)
class NPEConfig:
  """An NPE estimator and its training.

  Attributes:
    simulator: the simulator's spec (as for `MachineConfig.simulator`).
    density: `gaussian` (full covariance) or `flow` (neural spline flow).
    num_problems: training pairs `(theta*, X)` drawn from the prior (a tenth of them, at least one,
      held out for early stopping); the training budget is `num_problems * num_obs` simulated
      observations.
    num_obs: `n`, observations per data set.
    observation_transform, moment_features, cross_moment_features, encoder_hidden, encoder_out:
      the summary network, as in `MachineConfig`.
    context_hidden: width of the MLP on the pooled encoding.
    flow_layers, flow_hidden, spline_bins: the spline flow's couplings, their conditioners' width
      and the bins per spline.
    epochs: the most passes over the training pairs; training stops earlier when the validation
      loss has not improved for `patience` epochs (the best weights are kept). A flow trains in
      two such stages: its Gaussian part alone, then everything (`npe_training`).
    batch_size, learning_rate: Adam, its rate halved whenever the validation loss has not
      improved for `patience // 4` epochs.
    seed: the training pairs' seed (training stream) and the weights' initialisation.
  """

  simulator: str = "poisson"
  density: str = "flow"
  num_problems: int = 20000
  num_obs: int = 500
  observation_transform: str = "none"
  moment_features: bool = True
  cross_moment_features: bool = False
  encoder_hidden: int = 64
  encoder_out: int = 32
  context_hidden: int = 64
  flow_layers: int = 4
  flow_hidden: int = 64
  spline_bins: int = 8
  epochs: int = 200
  patience: int = 20
  batch_size: int = 128
  learning_rate: float = 1e-3
  seed: int = 0

  def __post_init__(self):
    require_well_formed(self)
    require_positive(self, "num_obs", "encoder_hidden", "encoder_out", "context_hidden",
                     "flow_layers", "flow_hidden", "spline_bins", "epochs", "patience",
                     "batch_size", "learning_rate")
    if self.num_problems < 2:
      raise ValueError(f"num_problems must be at least 2 (training and validation pairs), got "
                       f"{self.num_problems}")
    if self.spline_bins < 2:
      raise ValueError(f"spline_bins must be at least 2, got {self.spline_bins}")
    require_choice(self, "density", DENSITIES)
    require_choice(self, "observation_transform", OBSERVATION_TRANSFORMS)

  @property
  def training_simulations(self) -> int:
    """Simulated observations spent on training: `num_problems * num_obs`."""
    return self.num_problems * self.num_obs


class Posterior(NamedTuple):
  """NPE's answer for a batch of data sets, in raw parameter units.

  Attributes:
    mean, std: `[K, d]` the posterior mean and marginal standard deviations (exact for the
      Gaussian head, from `samples` for the flow).
    samples: `[K, S, d]` posterior draws.
  """

  mean: np.ndarray
  std: np.ndarray
  samples: np.ndarray


@keras.saving.register_keras_serializable(package="alfi_tf")
class PosteriorEstimator(LossModel):
  """`q(theta | s(X))`: a summary network and a conditional density, trained with `fit`.

  `fit` takes `{"theta": [B, d], "observations": [B, n, d_x]}` and minimises the mean negative
  log-density of `theta` (standardised units); call `adapt` on the training pairs first.

  Example:
    >>> estimator = PosteriorEstimator(get_simulator("poisson"), NPEConfig())
    >>> estimator.adapt(theta, observations)
    >>> estimator.compile(keras.optimizers.Adam(1e-3))
    >>> estimator.fit({"theta": theta, "observations": observations}, batch_size=128, epochs=10)
    >>> estimator.posterior(test_observations, num_samples=1000, seed=0).mean
  """

  def __init__(self, simulator: Simulator, config: NPEConfig, name: str = "npe"):
    with float32_layers():
      super().__init__(name=name, dtype="float32")
      self._create(simulator, config)

  def _create(self, simulator: Simulator, config: NPEConfig) -> None:
    """Creates the estimator's layers and weights (float32: `float32_layers`)."""
    check_model_arguments(simulator, config, NPEConfig)
    self.simulator, self.config = simulator, config
    d, dx = simulator.parameter_dim, simulator.observation_dim
    self.theta_standardizer = Standardizer(d, name="theta_standardizer")
    self.observation_standardizer = Standardizer(dx, name="observation_standardizer")
    self.encoder = SetEncoder(config.encoder_hidden, config.encoder_out, config.moment_features,
                              dx, config.cross_moment_features)
    self.context_net = keras.layers.Dense(config.context_hidden, activation="relu",
                                          name="context")
    if config.density == "gaussian":
      self.density = ConditionalGaussian(d)
    else:
      self.density = ConditionalSplineFlow(d, config.flow_layers, config.flow_hidden,
                                           config.spline_bins)
    self.encoder(tf.zeros([1, 1, dx]))          # every weight exists before a restore
    self.density.build((None, self.encoder.size + config.context_hidden))
    self.context_net.build((None, self.encoder.size))
    self.built = True

  def get_config(self) -> Dict[str, Any]:
    return {"name": self.name, "simulator": self.simulator.spec, "npe_config": to_dict(self.config)}

  @classmethod
  def from_config(cls, config: Dict[str, Any]) -> "PosteriorEstimator":
    return cls(get_simulator(config["simulator"]), NPEConfig(**config["npe_config"]),
               name=config["name"])

  def adapt(self, theta: np.ndarray, observations: np.ndarray) -> None:
    """Standardisation statistics from the training pairs `theta [K, d]`, `observations [K, n,
    d_x]` (raw; the input transform is applied here)."""
    theta, observations = check_problems(theta, observations, self.simulator)
    # Below the transform's domain (negative values under log1p) they would be clamped into it.
    check_transform_domain(observations, self.config.observation_transform,
                           f"the training observations of simulator {self.simulator.spec!r}")
    self.theta_standardizer.adapt_to(theta)
    self.observation_standardizer.adapt_to(transform_observations(
        tf.constant(observations, tf.float32), self.config.observation_transform).numpy())

  def context(self, observations: tf.Tensor) -> tf.Tensor:
    """`[B, n, d_x]` raw observations -> the density's context `[B, k]`: the pooled encoding and
    an MLP of it (the encoding itself passes through, so the head can be linear in the set's
    moments)."""
    standardized = self.observation_standardizer.forward(
        transform_observations(observations, self.config.observation_transform))
    encoding = self.encoder(standardized)
    return tf.concat([encoding, self.context_net(encoding)], axis=-1)

  def log_prob(self, theta: tf.Tensor, observations: tf.Tensor) -> tf.Tensor:
    """`log q(theta | X)` in raw parameter units, `[B]`, for `theta [B, d]` and `observations
    [B, n, d_x]`; a ValueError naming the argument of another shape (or, eagerly, with NaN/inf
    values or observations outside the observation transform's domain)."""
    theta, observations = self._check_pairs(theta, observations)
    standardized = self.theta_standardizer.forward(theta)
    return (self.density.log_prob(standardized, self.context(observations))
            + self.theta_standardizer.forward_log_det_jacobian())

  def _check_pairs(self, theta, observations) -> Tuple[tf.Tensor, tf.Tensor]:
    """`log_prob`'s arguments as float32 tensors, checked: a wrong shape would fail deep in the
    density's ops, naming neither."""
    d, dx = self.simulator.parameter_dim, self.simulator.observation_dim
    theta = check_float_tensor(theta, "theta", [None, d], f"[batch, {d}]")
    observations = check_float_tensor(observations, "observations", [theta.shape[0], None, dx],
                                      f"[{theta.shape[0]} (theta's batch), num_obs, {dx}]")
    if tf.executing_eagerly():   # in a graph the values are unknown
      check_transform_domain(observations.numpy(), self.config.observation_transform)
    return theta, observations

  def sample(self, observations: tf.Tensor, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
    """`[B, num_samples, d]` raw draws from `q(theta | X)`."""
    return self.theta_standardizer.inverse(
        self.density.sample(self.context(observations), num_samples, seed))

  def call(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    """`{"theta", "observations"}` -> the negative log-density of each pair in standardised
    units, `[B]` (the training loss before averaging)."""
    return -self.density.log_prob(self.theta_standardizer.forward(inputs["theta"]),
                                  self.context(inputs["observations"]))

  def batch_loss(self, data, training: bool = False) -> tf.Tensor:
    """The mean negative log-density of a batch `{"theta", "observations"}`."""
    inputs, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    if not isinstance(inputs, dict) or set(inputs) != {"theta", "observations"}:
      raise ValueError(f"each batch for fit / evaluate must be a dict {{'theta': [B, d], "
                       f"'observations': [B, n, d_x]}}, got {type(inputs).__name__}"
                       + (f" with keys {sorted(inputs)}" if isinstance(inputs, dict) else ""))
    d = self.simulator.parameter_dim
    theta = check_float_tensor(inputs["theta"], "theta", [None, d], f"[batch, {d}]")
    return tf.reduce_mean(self({"theta": theta, "observations": inputs["observations"]},
                               training=training))

  def posterior(self, observations: np.ndarray, num_samples: int = 1000, seed: int = 0,
                batch_size: int = 256) -> Posterior:
    """Posterior draws and moments for `observations [K, n, d_x]`, `batch_size` sets at a time.

    Raises:
      ValueError: `observations` of the wrong shape, empty, not finite or outside the domain of
        the observation transform (with the location).
    """
    observations = check_transform_domain(
        check_observations(observations, self.simulator.observation_dim),
        self.config.observation_transform)
    if require_positive_integer("num_samples", num_samples) < 2:
      raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    batch_size, seed = require_positive_integer("batch_size", batch_size), check_seed(seed)
    means, stds, samples = [], [], []
    for index, start in enumerate(range(0, len(observations), batch_size)):
      batch = tf.constant(observations[start:start + batch_size], tf.float32)
      batch_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0]), index)
      mean, std, draws = (value.numpy() for value in self._draw(batch, num_samples, batch_seed))
      means.append(mean)
      stds.append(std)
      samples.append(draws)
    return Posterior(np.concatenate(means), np.concatenate(stds), np.concatenate(samples))

  @tf.function(reduce_retracing=True)  # one trace per instance, not one per `posterior` call
  def _draw(self, observations: tf.Tensor, num_samples: int,
            seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    context = self.context(observations)             # the set encoder runs once per batch
    samples = self.theta_standardizer.inverse(self.density.sample(context, num_samples, seed))
    if isinstance(self.density, ConditionalGaussian):    # exact moments, not Monte Carlo
      mean, std = self.density.mean_and_std(context)
      return (self.theta_standardizer.inverse(mean), std * self.theta_standardizer.std, samples)
    return tf.reduce_mean(samples, axis=1), tf.math.reduce_std(samples, axis=1), samples
