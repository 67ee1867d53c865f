"""The recurrent inference machine (spec §2): the whole T-step loop unrolled in one graph.

A Keras model: besides the `Trainer` (the main path: exact resume, per-step stateless seeds, the
summed gradient clipped once across replicas), a Keras user can `compile` and `fit` it on batches of
`(theta, observations, seed)`, and `save` / `keras.saving.load_model` it as a `.keras` file.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from alfi_tf.checks import check_transform_domain
from alfi_tf.config import (OBSERVATION_TRANSFORM_MINIMUM, MachineConfig, require_horizon,
                            to_dict)
from alfi_tf.model import arguments, losses
from alfi_tf.model.calibration import (PooledStdScales, check_mean_shifts, check_pooled_std_scales,
                                      check_std_scales)
from alfi_tf.model.loss_model import LossModel, float32_layers
from alfi_tf.model.networks import PairedSetEncoder, SampleAggregator, SetEncoder, Updater
from alfi_tf.model.normalization import Moments, Standardizer, transform_observations
from alfi_tf.model.parameter_space import ParameterSpace, parameter_bijector
from alfi_tf.model.proposals import get_proposal
from alfi_tf.simulators import Simulator, get_simulator


#: Folded into a step's simulation seed to draw the design rows it simulates at (`design_rows`).
_DESIGN_STREAM = 0x0DE5


class Trajectory(NamedTuple):
  """Proposal parameters after each step, in standardised parameter space.

  Attributes:
    initial_psi: `[batch, P]`, `psi_0`.
    psi: `[batch, T, P]`, `psi_1 .. psi_T`.
    masked_samples: int32 `[batch, T]`, how many of each step's M simulated sets failed (NaN/inf,
      or values outside the observation transform's domain: `usable_sets`) and were left out of
      the update (zero for a simulator that never fails).
  """

  initial_psi: tf.Tensor
  psi: tf.Tensor
  masked_samples: tf.Tensor


class LoopState(NamedTuple):
  """What the machine carries from one step to the next.

  Attributes:
    psi: `[batch, P]` current proposal parameters (standardised).
    lstm_h, lstm_c: `[batch, lstm_units]` the LSTM cell's state.
    real_encoding: `[batch, E]` the set encoding of the observed data (computed once).
  """

  psi: tf.Tensor
  lstm_h: tf.Tensor
  lstm_c: tf.Tensor
  real_encoding: tf.Tensor


def usable_sets(simulated: tf.Tensor, transform: str) -> tf.Tensor:
  """Whether each simulated set can be read: `[batch, M, N, d_x] -> [batch, M]` bool.

  A set is usable when all its values are finite and inside the domain of the machine's
  `observation_transform` (no negative counts for `log1p`). Any other set is a failed simulation,
  left out of its step's update: clamping it into the domain would feed the machine data its
  simulator never produced (observed data outside the domain are refused instead, by
  `alfi_tf.checks.check_transform_domain`).
  """
  usable = tf.math.is_finite(simulated)
  minimum = OBSERVATION_TRANSFORM_MINIMUM.get(transform)
  if minimum is not None:
    usable = tf.logical_and(usable, simulated >= minimum)
  return tf.reduce_all(usable, axis=[2, 3])


def tail_window(steps: tf.Tensor, fraction: float) -> tf.Tensor:
  """How many of the last iterates the answer after each of `steps` (int32, any shape) averages:
  `max(1, ceil(fraction * t))` (`MachineConfig.tail_averaging`)."""
  # Less a hair, so that a product that is an integer in exact arithmetic (0.3 * 10) is not
  # rounded up past it by a float error.
  widths = tf.math.ceil(fraction * tf.cast(steps, tf.float64) - 1e-9)
  return tf.maximum(tf.cast(widths, tf.int32), 1)


def standardize_over_samples(features: tf.Tensor, epsilon: float = 1e-5) -> tf.Tensor:
  """Zero mean, unit std across the `M` samples of each problem: `[batch, M, k] -> [batch, M, k]`."""
  mean, variance = tf.nn.moments(features, axes=[1], keepdims=True)
  return (features - mean) * tf.math.rsqrt(variance + epsilon)


def _row_at(table: tf.Tensor, steps: tf.Tensor) -> tf.Tensor:
  """Rows `steps` (int, any shape `S`) of a per-step calibration `table [1 + C, d]`, the last
  row for steps past C -> `[*S, d]`."""
  return tf.gather(table, tf.minimum(tf.cast(steps, tf.int32), table.shape[0] - 1))


def regression_step(theta: tf.Tensor, summaries: tf.Tensor, real_summary: tf.Tensor,
                    valid: tf.Tensor, ridge: float = 1e-3) -> tf.Tensor:
  """The regression-adjustment step of a step's samples, `[batch, d]`.

  Over the `M` samples of each problem, the least-squares (ridge) map `B [d, k]` from the
  simulated summaries `s_m` to the samples `theta_m`, both centred,

      B = C_ts (C_ss + lambda I)^-1,   lambda = ridge * tr(C_ss) / k,

  applied to the real summary's offset from theirs: `B (s_real - mean_m s_m)`, where regression
  ABC would move the samples' mean. For a model whose summaries are linear in `theta` it is the
  whole (Newton) step at once, which an update built from per-sample features has to assemble
  from sample-wise products.

  Args:
    theta: `[batch, M, d]` the standardised samples.
    summaries: `[batch, M, k]` their simulated sets' summaries.
    real_summary: `[batch, k]` the real set's.
    valid: `[batch, M]` bool, the samples whose simulations count (`usable_sets`).
  """
  weights = tf.cast(valid, theta.dtype)[..., tf.newaxis]                        # [batch, M, 1]
  count = tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1.0)
  theta_mean = tf.reduce_sum(weights * theta, axis=1, keepdims=True) / count
  summary_mean = tf.reduce_sum(weights * summaries, axis=1, keepdims=True) / count
  centred_theta = weights * (theta - theta_mean)
  centred_summaries = weights * (summaries - summary_mean)
  cross = tf.einsum("bmi,bmj->bij", centred_theta, centred_summaries)            # [batch, d, k]
  gram = tf.einsum("bmi,bmj->bij", centred_summaries, centred_summaries)         # [batch, k, k]
  k = summaries.shape[-1]
  regulariser = (ridge * tf.linalg.trace(gram) / k + 1e-6)[:, tf.newaxis, tf.newaxis]
  offset = (real_summary - summary_mean[:, 0])[..., tf.newaxis]                  # [batch, k, 1]
  solved = tf.linalg.solve(gram + regulariser * tf.eye(k, dtype=gram.dtype), offset)
  return tf.matmul(cross, solved)[..., 0]


@keras.saving.register_keras_serializable(package="alfi_tf")
class InferenceMachine(LossModel):
  """Meta-learned inference: proposes, simulates, compares, updates `psi`, T times.

  The standardisation statistics of parameters and observations are weights of the model (set them
  with `adapt`), so they are saved and restored with it. The answer's location and widths can be
  recalibrated after training (`set_mean_shifts`, `set_std_scales`, `alfi_tf.model.calibration`);
  the shifts and factors travel with the workdir (`calibration.json`), the `.keras` file and the
  export.

  Example:
    >>> simulator = get_simulator("poisson")
    >>> machine = InferenceMachine(simulator, MachineConfig(simulator="poisson"))
    >>> machine.adapt(theta_train, observations_train)
    >>> trajectory = machine(observations, seed=tf.constant([1, 2]))

  Or trained the Keras way (one device; the `Trainer` adds exact resume and distribution):
    >>> machine.compile(keras.optimizers.Adam(1e-3))
    >>> machine.fit(tf.data.Dataset.from_tensor_slices((theta, observations, seeds)).batch(32))
  """

  def __init__(self, simulator: Simulator, config: MachineConfig, name: str = "alfi_machine"):
    with float32_layers():
      super().__init__(name=name, dtype="float32")
      self._create(simulator, config)
    self.set_std_scales(None)
    self.set_mean_shifts(None)
    self.set_pooled_std_scales(None)

  def _create(self, simulator: Simulator, config: MachineConfig) -> None:
    """Creates the machine's layers and weights (float32: `float32_layers`)."""
    arguments.check_model_arguments(simulator, config, MachineConfig)
    self.simulator = simulator
    self.config = config
    self.proposal = get_proposal(config.proposal, simulator.parameter_dim, config.initial_scale,
                                 config.mixture_components)
    self._meta_loss_settings: Dict[str, Any] = {}
    d = simulator.parameter_dim
    self.theta_standardizer = Standardizer(d, name="theta_standardizer")
    self.observation_standardizer = Standardizer(simulator.observation_dim,
                                                 name="observation_standardizer")
    self.encoder = SetEncoder(config.encoder_hidden, config.encoder_out, config.moment_features,
                              simulator.observation_dim, config.cross_moment_features,
                              config.relative_encoding)
    self.paired_encoder = None
    if self.simulates_at_observed_design:
      self.paired_encoder = PairedSetEncoder(config.encoder_hidden, config.encoder_out,
                                             simulator.observation_dim, simulator.design_dim)
    self.aggregator = SampleAggregator(config.aggregator_hidden, config.aggregator_out)
    self.updater = Updater(config.updater_hidden, config.lstm_units, self.proposal.psi_size,
                           config.bound, config.bound_type, config.regression_shortcut)
    bounds = simulator.parameter_bounds
    self._bounds = None if bounds is None else tuple(tf.constant(b, tf.float32) for b in bounds)
    self.parameter_space = ParameterSpace(
        self.theta_standardizer,
        parameter_bijector(simulator) if config.unconstrained_parameters else None, self._bounds)
    self._build_weights()
    self.built = True

  def _build_weights(self) -> None:
    """Creates every weight now, so checkpoints can be restored before the first call."""
    d, dx, psi_size = (self.simulator.parameter_dim, self.simulator.observation_dim,
                       self.proposal.psi_size)
    self.encode_sets(tf.zeros([1, 1, dx]))
    # Per sample: real and simulated encodings, the sample itself, (optionally) its score, and
    # (simulating at the observed design) the pair of it and the real rows it was simulated at.
    score_size = psi_size if self.config.score_features else 0
    paired_size = 0
    if self.paired_encoder is not None:
      self.paired_encoder(self.paired_encoder.pairs(tf.zeros([1, 1, dx]),
                                                    tf.zeros([1, 1, 1, dx])))
      paired_size = self.paired_encoder.size
    self.aggregator(tf.zeros([1, 1, 2 * self.encoding_size + paired_size + d + score_size]))
    regression_size = d if self.config.regression_features else 0
    self.updater(tf.zeros([1, self.config.aggregator_out + psi_size + regression_size]),
                 self.updater.initial_state(1),
                 tf.zeros([1, psi_size]) if self.config.regression_shortcut else None)

  def get_config(self) -> Dict[str, Any]:
    """The simulator (by spec: a registered name or an import path) and the machine's
    configuration."""
    scales, shifts = self.std_scales, self.mean_shifts
    return {"name": self.name, "simulator": self.simulator.spec,
            "machine_config": to_dict(self.config),
            "std_scales": None if scales is None else scales.tolist(),
            "mean_shifts": None if shifts is None else shifts.tolist(),
            "pooled_std_scales": (None if self.pooled_std_scales is None
                                  else self.pooled_std_scales.to_json())}

  @classmethod
  def from_config(cls, config: Dict[str, Any]) -> "InferenceMachine":
    machine = cls(get_simulator(config["simulator"]), MachineConfig(**config["machine_config"]),
                  name=config["name"])
    machine.set_std_scales(config.get("std_scales"))
    machine.set_mean_shifts(config.get("mean_shifts"))
    machine.set_pooled_std_scales(config.get("pooled_std_scales"))
    return machine

  @property
  def std_scales(self) -> Optional[np.ndarray]:
    """The calibration factors `[C, d]` of steps 1..C (later steps use step C's), or None."""
    return None if self._std_scale_table.shape[0] == 1 else self._std_scale_table.numpy()[1:]

  def set_std_scales(self, scales: Optional[np.ndarray]) -> None:
    """Sets the factors `[C, d]` that multiply the answer's std after steps 1..C (and after any
    later step, step C's); None removes them. A constant rather than a weight: the factors are
    fitted after training, and checkpoints written before they existed must still restore."""
    self._std_scale_table = self._step_table(scales, 1.0, check_std_scales)

  @property
  def mean_shifts(self) -> Optional[np.ndarray]:
    """The calibration shifts `[C, d]` of steps 1..C (later steps use step C's), or None."""
    return None if self._mean_shift_table.shape[0] == 1 else self._mean_shift_table.numpy()[1:]

  def set_mean_shifts(self, shifts: Optional[np.ndarray]) -> None:
    """Sets the shifts `[C, d]` that move the answer's mean by that many of its (unscaled)
    standard deviations after steps 1..C (and after any later step, step C's); None removes
    them. A constant, as the std factors are."""
    self._mean_shift_table = self._step_table(shifts, 0.0, check_mean_shifts)

  def _step_table(self, values: Optional[np.ndarray], start: float, check) -> tf.Tensor:
    """`[1 + C, d]`: the start's row, never recalibrated (`start`), then `check(values)`."""
    d = self.simulator.parameter_dim
    table = [np.full([1, d], start, np.float32)]
    if values is not None:
      table.append(check(values, d))
    return tf.constant(np.concatenate(table))

  @property
  def pooled_std_scales(self) -> Optional[PooledStdScales]:
    """The factors of answers pooled over `R` runs (`inference.pool_starts`), or None."""
    return self._pooled_std_scales

  def set_pooled_std_scales(self, pooled) -> None:
    """Sets the factors of pooled answers: a `PooledStdScales`, its `to_json` record, or None
    (removes them). Pooling happens outside the graph, so they are a plain attribute."""
    self._pooled_std_scales = check_pooled_std_scales(pooled, self.simulator.parameter_dim)

  def std_scale_at(self, steps: tf.Tensor) -> tf.Tensor:
    """The factors after `steps` (int, any shape `S`; 0 is the start) -> `[*S, d]`."""
    return _row_at(self._std_scale_table, steps)

  def mean_shift_at(self, steps: tf.Tensor) -> tf.Tensor:
    """The shifts after `steps` (int, any shape `S`; 0 is the start) -> `[*S, d]`."""
    return _row_at(self._mean_shift_table, steps)

  def adapt(self, theta: np.ndarray, observations: np.ndarray) -> None:
    """Sets the standardisation statistics from the meta-training set.

    Args:
      theta: `[K, d]` true parameters of the meta-training problems.
      observations: `[K, n, d_x]` their observations (raw; the input transform is applied here).
    """
    self.set_moments(*self.problem_moments(theta, observations))

  def problem_moments(self, theta: np.ndarray,
                      observations: np.ndarray) -> Tuple[Moments, Moments]:
    """`(theta moments, transformed-observation moments)` of some problems, to merge over chunks
    of a meta-training set too large for memory and pass to `set_moments`.

    Raises:
      ValueError: observations outside the domain of the observation transform (a simulator that
        returns negative values under `log1p`), named before any training.
    """
    theta, observations = arguments.check_problems(theta, observations, self.simulator)
    check_transform_domain(observations, self.config.observation_transform,
                           f"the observations that simulator {self.simulator.spec!r} returned "
                           "for the meta-training problems")
    transformed = transform_observations(tf.constant(observations, tf.float32),
                                         self.config.observation_transform)
    return (self.parameter_space.moments_of(theta),
            Moments.of(transformed.numpy(), self.simulator.observation_dim))

  def set_moments(self, theta_moments: Moments, observation_moments: Moments) -> None:
    """Sets the standardisation statistics from accumulated `problem_moments`."""
    self.theta_standardizer.set_moments(theta_moments)
    self.observation_standardizer.set_moments(observation_moments)

  def standardize_observations(self, observations: tf.Tensor) -> tf.Tensor:
    """Raw observations `[..., d_x]` -> the encoder's input scale."""
    return self.observation_standardizer.forward(
        transform_observations(observations, self.config.observation_transform))

  @property
  def encoding_size(self) -> int:
    """`E`, the size of a set's encoding (`encode_sets`)."""
    raw_mean_size = self.simulator.observation_dim if self.config.raw_mean_features else 0
    return self.encoder.size + raw_mean_size

  def encode_sets(self, observations: tf.Tensor,
                  reference: Optional[Tuple[tf.Tensor, tf.Tensor]] = None
                  ) -> Tuple[tf.Tensor, tf.Tensor]:
    """Raw sets `[..., n, d_x]` -> `(encodings [..., E], the standardised sets [..., n, d_x])`.

    `reference`: the real data's `(mean, log std)` for a relative encoder (`SetEncoder.call`).
    With `raw_mean_features`, each set's raw mean, transformed and standardised like a single
    observation, follows the encoder's features (`MachineConfig.raw_mean_features`).
    """
    standardized = self.standardize_observations(observations)
    encoding = self.encoder(standardized, reference)
    if self.config.raw_mean_features:
      raw_mean = tf.reduce_mean(observations, axis=-2, keepdims=True)         # [..., 1, d_x]
      encoding = tf.concat([encoding, self.standardize_observations(raw_mean)[..., 0, :]], -1)
    return encoding, standardized

  def initial_psi(self, batch_size: int, seed: tf.Tensor,
                  initial_mean: Optional[tf.Tensor] = None, training: bool = False) -> tf.Tensor:
    """`psi_0`, spread sigma_0, centred on `initial_mean [batch, d]` (raw units) where given, else
    on `default_starts`."""
    if initial_mean is None:
      initial_mean = self.default_starts(batch_size, seed, training)
    return self.proposal.initial_psi(self.parameter_space.forward(initial_mean))

  def default_starts(self, count, seed: tf.Tensor, training: bool = False) -> tf.Tensor:
    """The raw starts `mu_0 [count, d]` (float32) of `count` runs given none: prior draws in
    training, and at inference where `config.start` is `prior_draw`; else the mean of the
    meta-training parameters (in the proposals' space), the standardised origin."""
    if self.config.start == "prior_mean" and not training:
      return tf.broadcast_to(self.parameter_space.inverse(tf.zeros([self.simulator.parameter_dim])),
                             tf.stack([count, self.simulator.parameter_dim]))
    return self.prior_draws(count, seed)

  def prior_draws(self, count, seed: tf.Tensor) -> tf.Tensor:
    """`count` draws from the simulator's prior, raw units, float32 `[count, d]`."""
    return tf.cast(self.simulator.prior.sample(count, seed=seed), tf.float32)

  def simulation_parameters(self, theta_standardized: tf.Tensor) -> tf.Tensor:
    """Standardised samples `[batch, M, d]` -> the raw parameters to simulate, `[batch, M, d]`.

    Gaussian proposals on the raw parameters may leave the prior's support, where a simulator can
    be undefined, so the samples are clipped into the prior's box (when it has one) before
    simulation (under `unconstrained_parameters` they are inside it but for float32 rounding).
    """
    theta = self.parameter_space.inverse(theta_standardized)
    if self._bounds is not None:
      theta = tf.clip_by_value(theta, self._bounds[0], self._bounds[1])
    return theta

  @property
  def simulates_at_observed_design(self) -> bool:
    """Whether each step simulates at rows of the real data's design (`config.observed_design`
    with a simulator that has one)."""
    return self.config.observed_design and self.simulator.design_dim > 0

  def design_rows(self, simulation_seed: tf.Tensor, batch_size, num_obs,
                  training: bool = False) -> tf.Tensor:
    """The rows of each real set `[batch, n, d_x]` whose design a step simulates at: int32
    `[batch, N]` (`N = config.simulated_obs(training)`), the first `N` of a random permutation of
    the `n` rows (cycled through again when `N > n`, so every row serves equally often), drawn
    from the step's `simulation_seed` (folded with a constant, to keep it apart from the
    simulator's own use of that seed)."""
    keys = tf.random.stateless_uniform(
        tf.stack([batch_size, num_obs]),
        seed=tf.random.experimental.stateless_fold_in(simulation_seed, _DESIGN_STREAM))
    permutation = tf.argsort(keys, axis=-1, stable=True)
    return tf.gather(permutation, tf.range(self.config.simulated_obs(training)) % num_obs, axis=1)

  def observations_at_design(self, observations: tf.Tensor, simulation_seed: tf.Tensor,
                             training: bool = False) -> Optional[tf.Tensor]:
    """The real observations `[batch, n, d_x]` at the step's `design_rows`, `[batch, N, d_x]`
    (None unless `simulates_at_observed_design`): the design the step simulates at, and the real
    observations its simulations are compared with row by row."""
    if not self.simulates_at_observed_design:
      return None
    rows = self.design_rows(simulation_seed, tf.shape(observations)[0], tf.shape(observations)[1],
                            training)
    return tf.gather(observations, rows, batch_dims=1)

  def _simulate(self, theta_standardized: tf.Tensor, seed: tf.Tensor, n_sim: int,
                real_at_design: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Runs the simulator on `[batch, M, d]` standardised samples -> `[batch, M, N, d_x]` raw obs
    (`N = n_sim`); at the design of `real_at_design [batch, N, d_x]` (`observations_at_design`)
    when given."""
    batch, num_samples = tf.shape(theta_standardized)[0], theta_standardized.shape[1]
    theta = tf.reshape(self.simulation_parameters(theta_standardized),
                       [-1, self.simulator.parameter_dim])
    if real_at_design is not None:
      design_dim = self.simulator.design_dim
      design = tf.broadcast_to(real_at_design[:, tf.newaxis, :, :design_dim],
                               tf.stack([batch, num_samples, n_sim, design_dim]))
      method, simulated = "simulate_at_design", self.simulator.simulate_at_design(
          theta, tf.reshape(design, [-1, n_sim, design_dim]), seed)
    else:
      method, simulated = "simulate", self.simulator.simulate(theta, n_sim, seed)
    simulated = self.simulator.checked_simulations(simulated, tf.shape(theta)[0], n_sim, method)
    return tf.reshape(simulated, tf.stack([batch, num_samples, n_sim,
                                           self.simulator.observation_dim]))

  # The loop is exposed in three pieces (begin, propose, update) so that it can also be driven from
  # outside the graph, one simulator call at a time (ask/tell with an external simulator); `call`
  # strings them together with the simulator inline.

  def begin(self, observations: tf.Tensor, seed: tf.Tensor,
            initial_mean: Optional[tf.Tensor] = None,
            training: bool = False) -> Tuple[LoopState, tf.Tensor]:
    """Encodes the observations and sets up `psi_0` and `h_0`.

    Args:
      observations: `[batch, n, d_x]` raw observations.
      seed: int32 `[2]`; the start (when drawn) and every later step derive from it.
      initial_mean: optional `[batch, d]` raw start `mu_0`; default a prior draw in training,
        `config.start` at inference (`initial_psi`).
      training: whether this is a meta-training run.

    Returns:
      `(state, loop_seed)`: the state before step 1 and the seed that `step_seeds` derives from.
    """
    observations, seed, initial_mean = self._check_inputs(observations, seed, initial_mean)
    batch = tf.shape(observations)[0]
    init_seed, loop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    h, c = self.updater.initial_state(batch)
    state = LoopState(psi=self.initial_psi(batch, init_seed, initial_mean, training),
                      lstm_h=h, lstm_c=c,
                      real_encoding=self.encode_sets(observations)[0])
    return state, loop_seed

  def _check_inputs(self, observations, seed, initial_mean) -> Tuple[tf.Tensor, tf.Tensor,
                                                                     Optional[tf.Tensor]]:
    """`begin`'s inputs as float32 / int32 tensors (numpy, float64 welcome), or one ValueError
    naming the argument with the wrong shape (or, eagerly, NaN/inf values, or observations
    outside the observation transform's domain, which it would clamp into it)."""
    d, dx = self.simulator.parameter_dim, self.simulator.observation_dim
    observations = arguments.check_float_tensor(observations, "observations", [None, None, dx],
                                                f"[batch, num_obs, {dx}]")
    if tf.executing_eagerly():
      check_transform_domain(observations.numpy(), self.config.observation_transform)
    initial_mean = arguments.optional_float_tensor(
        initial_mean, "initial_mean", [observations.shape[0], d], f"[batch, {d}] (raw units)")
    return observations, arguments.check_seed_tensor(seed), initial_mean

  @staticmethod
  def step_seeds(loop_seed: tf.Tensor, step: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """`(proposal_seed, simulation_seed)` of step `step` (0-based), independent of the horizon."""
    pair = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(loop_seed, tf.cast(step, tf.int32)), 2)
    return pair[0], pair[1]

  def propose(self, state: LoopState, seed: tf.Tensor) -> tf.Tensor:
    """Draws the step's `M` standardised samples `[batch, M, d]` from `q(theta | psi_t)`."""
    return self.proposal.sample(state.psi, self.config.num_samples, seed)

  def update(self, state: LoopState, theta: tf.Tensor, simulated: tf.Tensor,
             valid: Optional[tf.Tensor] = None,
             real_at_design: Optional[tf.Tensor] = None) -> LoopState:
    """One update `psi_{t+1} = psi_t + Delta psi_t` from the simulations of the proposed samples.

    Args:
      state: the state at step t.
      theta: `[batch, M, d]` the standardised samples returned by `propose`.
      simulated: `[batch, M, N, d_x]` raw observations simulated at `simulation_parameters(theta)`;
        sets with NaN/inf values or values outside the observation transform's domain are masked
        out of the update (`usable_sets`).
      valid: `usable_sets(simulated, ...)`, when the caller has it already.
      real_at_design: `[batch, N, d_x]` the real observations at the rows whose design the step
        simulated at (`observations_at_design`); required when `simulates_at_observed_design`.
        Each simulated set is encoded paired with them (`PairedSetEncoder`), which the
        design's own spread does not blur.
    """
    if self.simulates_at_observed_design and real_at_design is None:
      raise ValueError("this machine simulates at the observed design: update needs "
                       "real_at_design (observations_at_design)")
    psi = state.psi
    # A failed simulated set is left out of the aggregator's mean (zeroed first, so that no NaN
    # reaches the gradients either).
    if valid is None:
      valid = usable_sets(simulated, self.config.observation_transform)     # [batch, M]
    simulated = tf.where(valid[:, :, tf.newaxis, tf.newaxis], simulated, tf.zeros_like(simulated))
    reference = None
    if self.config.relative_encoding:   # the real data's (mean, log std), [batch, 1, d_x] each
      reference = tuple(r[:, tf.newaxis] for r in self.encoder.reference(state.real_encoding))
    simulated_encoding, standardized = self.encode_sets(simulated, reference)    # [batch, M, E]
    features = [tf.broadcast_to(state.real_encoding[:, tf.newaxis], tf.shape(simulated_encoding)),
                simulated_encoding, theta]
    pairs = None
    if self.paired_encoder is not None:
      pairs = self.paired_encoder.pairs(self.standardize_observations(real_at_design),
                                        standardized)
      features.append(self.paired_encoder(pairs))                               # [batch, M, E']
    if self.config.score_features:
      # Scores are random features of the samples; like the samples they carry no gradient.
      features.append(standardize_over_samples(
          tf.stop_gradient(self.proposal.score(theta, psi))))                    # [batch, M, P]
    features = tf.concat(features, axis=-1)
    context = self.aggregator(features, valid)                                   # [batch, C]
    step, shortcut = None, None
    if self.config.regression_features:   # like the scores, functions of the samples: no gradient
      summaries = self._regression_summaries(standardized, state.real_encoding, pairs)
      targets = theta
      if self.config.regression_shortcut:
        simulated_at = self.parameter_space.forward(self.simulation_parameters(theta))
        targets = tf.concat([theta, simulated_at], axis=-1)                      # [b, M, 2d]
      # One ridge solve for every target column: the step is linear in the targets.
      steps = tf.stop_gradient(regression_step(targets, *summaries, valid))
      d = self.simulator.parameter_dim
      step = steps[:, :d]
      if self.config.regression_shortcut:
        shortcut = tf.stop_gradient(
            self._regression_shortcut(psi, simulated_at, steps[:, d:], valid))
    return self._apply_updater(state, context, step, shortcut)

  def _apply_updater(self, state: LoopState, context: tf.Tensor, step: Optional[tf.Tensor],
                     shortcut: Optional[tf.Tensor]) -> LoopState:
    """The updater's `Delta psi` from the step's `context [batch, C]`, `psi`, the regression
    `step [batch, d]` and the `shortcut` (`_regression_shortcut`; each None when not used),
    applied to `state`."""
    psi = state.psi
    units = self.proposal.update_units(psi) if self.config.relative_updates else None
    updater_inputs = [context, psi] + ([] if step is None else [step])
    direction = None
    if shortcut is not None:
      direction = self.proposal.translation(shortcut)                            # [batch, P]
      if units is not None:   # the updater's output is in units of the proposal, the step is not
        direction = direction / units
    delta, (h, c) = self.updater(tf.concat(updater_inputs, axis=-1),
                                 [state.lstm_h, state.lstm_c], direction)
    if units is not None:
      delta = delta * units
    return LoopState(psi=psi + delta, lstm_h=h, lstm_c=c, real_encoding=state.real_encoding)

  def _regression_summaries(self, standardized: tf.Tensor, real_encoding: tf.Tensor,
                            pairs: Optional[Tuple[tf.Tensor, tf.Tensor]]
                            ) -> Tuple[tf.Tensor, tf.Tensor]:
    """`(summaries [batch, M, k], real summary [batch, k])` of `regression_step`: at the
    observed design, the paired residual moments of `pairs` (`PairedSetEncoder.
    residual_moments`, the real rows' are zero), which a regression's parameters move linearly;
    otherwise each set's mean observation."""
    if pairs is not None:
      summaries = self.paired_encoder.residual_moments(pairs)                    # [batch, M, k]
      return summaries, tf.zeros_like(summaries[:, 0])
    return tf.reduce_mean(standardized, axis=-2), self.encoder.reference(real_encoding)[0]

  def _regression_shortcut(self, psi: tf.Tensor, simulated_at: tf.Tensor,
                           simulated_at_step: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """The move `[batch, d]` from the proposal's mean to where the step's regression puts the
    real data: the valid samples' mean plus their `regression_step` (`simulated_at_step`), both
    of the parameters `simulated_at [batch, M, d]` they were simulated at
    (`simulation_parameters`, standardised). Anchored at the samples' mean, not the proposal's,
    whose Monte-Carlo difference the step would otherwise carry; and of the simulated
    parameters, not the proposed ones: samples clipped into the prior's box simulate at its
    edge, and a regression on where they were proposed points out of the box."""
    weights = tf.cast(valid, simulated_at.dtype)[..., tf.newaxis]
    sample_mean = (tf.reduce_sum(weights * simulated_at, axis=1)
                   / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0))
    return sample_mean + simulated_at_step - self.proposal.mean(psi)

  def call(self, observations: tf.Tensor, seed: tf.Tensor, num_steps: Optional[int] = None,
           initial_mean: Optional[tf.Tensor] = None, training: Optional[bool] = None) -> Trajectory:
    """Runs the machine on a batch of problems, the T steps unrolled in one graph.

    Args:
      observations: `[batch, n, d_x]` raw observations (n may differ from training).
      seed: int32 `[2]` stateless seed (initial means, proposals and simulations derive from it).
      num_steps: horizon `T` (a Python int), default `config.num_steps`.
      initial_mean: optional `[batch, d]` raw start `mu_0`; default a prior draw in training,
        `config.start` at inference.
      training: a meta-training run (the meta-loss's): starts are prior draws whatever
        `config.start` says, and each step simulates `num_simulated_obs` whatever
        `config.answer_simulated_obs` says (`MachineConfig.simulated_obs`).

    Returns:
      The `Trajectory` of `psi`, standardised.
    """
    num_steps = (self.config.num_steps if num_steps is None else
                 arguments.require_positive_integer("num_steps", arguments.scalar_value(num_steps)))
    require_horizon("num_steps", num_steps)
    training = bool(training)
    state, loop_seed = self.begin(observations, seed, initial_mean, training)
    observations = tf.cast(observations, tf.float32)   # checked by `begin`
    initial_psi = state.psi
    trajectory, masked = [], []
    for t in range(num_steps):
      proposal_seed, simulation_seed = self.step_seeds(loop_seed, t)
      theta = self.propose(state, proposal_seed)                               # [batch, M, d]
      real_at_design = self.observations_at_design(observations, simulation_seed, training)
      simulated = self._simulate(theta, simulation_seed, self.config.simulated_obs(training),
                                 real_at_design)
      valid = usable_sets(simulated, self.config.observation_transform)   # [batch, M]
      state = self.update(state, theta, simulated, valid, real_at_design)
      trajectory.append(state.psi)
      masked.append(tf.reduce_sum(tf.cast(~valid, tf.int32), axis=1))
    return Trajectory(initial_psi=initial_psi, psi=tf.stack(trajectory, axis=1),
                      masked_samples=tf.stack(masked, axis=1))

  def to_raw(self, psi: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Standardised `psi [..., P]` -> `(mean, std)` in raw parameter units, each `[..., d]`."""
    return self.parameter_space.moments(self.proposal, psi, tf.ones([self.simulator.parameter_dim]))

  def average_iterates(self, psi: tf.Tensor) -> tf.Tensor:
    """The answer's parameters after each step (tail averaging, `config.tail_averaging = f`): the
    iterates `psi_1 .. psi_T [B, T, P]` (T may be dynamic, or 0) -> `psi_bar_1 .. psi_bar_T
    [B, T, P]`, where `psi_bar_t` is the mean of `psi_s` over the last `w_t` steps,
    `s = t - w_t + 1 .. t` (`tail_window`)."""
    psi = tf.convert_to_tensor(psi)
    if psi.shape.rank != 3 or not psi.shape[2:].is_compatible_with([self.proposal.psi_size]):
      raise ValueError(f"psi must have shape [batch, steps, {self.proposal.psi_size}] (the "
                       f"iterates psi_1 .. psi_T), got shape {psi.shape}")
    if self.config.tail_averaging == 0:
      return psi
    steps = tf.range(1, tf.shape(psi)[1] + 1)
    widths = tail_window(steps, self.config.tail_averaging)
    # Window sums as differences of running sums (a zero row first: the sum of no steps),
    # accumulated in float64 so that a long trajectory's sum does not swamp the spread of a narrow
    # proposal's parameters.
    running = tf.cumsum(tf.cast(psi, tf.float64), axis=1)
    running = tf.concat([tf.zeros_like(running[:, :1]), running], axis=1)
    window_sum = tf.gather(running, steps, axis=1) - tf.gather(running, steps - widths, axis=1)
    average = window_sum / tf.cast(widths, tf.float64)[:, tf.newaxis]
    return tf.ensure_shape(tf.cast(average, psi.dtype), psi.shape)

  def answer(self, psi: tf.Tensor, steps: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """The answer after `steps`: `to_raw(psi)` recalibrated (`set_mean_shifts`,
    `set_std_scales`), restricted to the prior's box where the proposal is not confined to it
    (`parameter_space`).

    Args:
      psi: the answer's parameters (`average_iterates`), `[B, P]` after one step (`steps` a
        scalar) or `[B, T, P]` after each of `steps [T]`.
    """
    return self.parameter_space.moments(self.proposal, psi, self.std_scale_at(steps),
                                        self.mean_shift_at(steps))

  def predict(self, *args, **kwargs):
    """Refused: Keras' `predict` calls the model batch by batch without a seed, and an answer
    needs one (it simulates). Use `infer`, or `alfi_tf.Inferrer` for many data sets."""
    del args, kwargs
    raise TypeError("InferenceMachine.predict is not supported (an answer simulates, and needs a "
                    "seed): use machine.infer(observations, seed), or alfi_tf.Inferrer(machine) "
                    "for many data sets")

  def infer(self, observations: tf.Tensor, seed: tf.Tensor, num_steps: Optional[int] = None,
            initial_mean: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
    """The answer for `B` observation sets, in raw parameter units: the one inference body behind
    `Inferrer` and the export's `infer` signature.

    Args: as for `call`.

    Returns:
      `mean`, `std` `[B, d]` (the final answer, its std recalibrated), `trajectory_mean`,
      `trajectory_std` `[B, T, d]` (the answers after steps 1..T), `initial_mean` `[B, d]` (the
      start `mu_0`), `answer_psi` `[B, P]` (the final answer's parameters `psi_bar_T`,
      `average_iterates`, standardised; `trajectory_answer_psi` `[B, T, P]` after each step),
      `psi` `[B, P]` (the last proposal's, `psi_T`),
      `failed_sets` int `[B]` (failed simulated sets, `usable_sets`, of the run's `T M`) and
      `proposal_mean` `[B, d]` (the mean of the final answer's proposal `q(z | psi_bar_T)` itself,
      before its calibration and its restriction to the prior's box,
      `parameter_space.ParameterSpace.proposal_mean`).
    """
    trajectory = self(observations, seed=seed, num_steps=num_steps, initial_mean=initial_mean)
    answer_psi = self.average_iterates(trajectory.psi)
    mean, std = self.answer(answer_psi, tf.range(1, trajectory.psi.shape[1] + 1))
    initial, _ = self.to_raw(trajectory.initial_psi)
    return {"mean": mean[:, -1], "std": std[:, -1], "trajectory_mean": mean,
            "trajectory_std": std, "initial_mean": initial, "answer_psi": answer_psi[:, -1],
            "trajectory_answer_psi": answer_psi,
            "proposal_mean": self.parameter_space.proposal_mean(self.proposal, answer_psi[:, -1]),
            "psi": trajectory.psi[:, -1],
            "failed_sets": tf.reduce_sum(trajectory.masked_samples, axis=1)}

  def sample_final_proposal(self, psi: tf.Tensor, num_samples: int, seed: tf.Tensor,
                            step: int) -> tf.Tensor:
    """Draws from the answer after `step` in raw parameter units: `psi [B, P]` (the answer's
    parameters, `infer`'s `answer_psi`) -> `[B, num_samples, d]`, draws of `q(z | psi)` moved by
    the step's shifts and spread about its mean by its std factors (`_recalibrated`), mapped to
    raw units (`parameter_space`); not clipped to the prior's box: these are the answer's draws,
    not simulation inputs."""
    psi = arguments.check_answer_psi(psi, self.proposal.psi_size)
    num_samples = arguments.require_positive_integer("num_samples", num_samples)
    seed, step = arguments.check_seed_tensor(seed), arguments.check_step(step)
    draws = self.proposal.sample(psi, num_samples, seed)                      # [B, S, d]
    mean, centre, scale = self._recalibrated(psi, step)
    return self.parameter_space.inverse(centre[:, tf.newaxis]
                                        + scale * (draws - mean[:, tf.newaxis]))

  def _recalibrated(self, psi: tf.Tensor, step) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The answer after `step` as a map of `q(z | psi)`: `z -> centre + scale (z - mean)`, with
    `mean` the proposal's `[B, d]`, `centre = mean + shift sigma` (`[B, d]`) and `scale` `[d]`
    the step's calibration (`set_mean_shifts`, `set_std_scales`)."""
    mean = self.proposal.mean(psi)
    centre = mean + self.mean_shift_at(step) * self.proposal.stddev(psi)
    return mean, centre, self.std_scale_at(step)

  def answer_log_prob(self, theta: tf.Tensor, psi: tf.Tensor, step: int) -> tf.Tensor:
    """The log-density at raw `theta [B, d]` of the answer after `step` that
    `sample_final_proposal` draws from: `q(z | psi)` mapped by `z -> c + s (z - mu)`
    (`_recalibrated`), `log q(mu + (z - c) / s) - sum log s + log |dz / dtheta|` with
    `z = parameter_space.forward(theta)` -> `[B]`."""
    psi = arguments.check_answer_psi(psi, self.proposal.psi_size)
    d = self.simulator.parameter_dim
    theta = arguments.check_float_tensor(theta, "theta", [psi.shape[0], d],
                                         f"[batch, {d}] (raw units, a row per row of psi)")
    step = arguments.check_step(step)
    mean, centre, scale = self._recalibrated(psi, step)
    unscaled = mean + (self.parameter_space.forward(theta) - centre) / scale
    log_det = self.parameter_space.forward_log_det_jacobian(theta)   # -inf: outside the support
    log_prob = self.proposal.log_prob(unscaled, psi) - tf.reduce_sum(tf.math.log(scale)) + log_det
    return tf.where(tf.math.is_finite(log_det), log_prob, log_det)

  # The Keras training surface. `fit` gets batches `(theta [B, d], observations [B, n, d_x], seed)`
  # with an int32 seed `[2]` per batch (or `[B, 2]` per problem, of which the first is used), and
  # minimises the same `losses.meta_loss` as the `Trainer`.

  def compile(self, optimizer: Any = "adam", loss: str = "nll", time_weights: str = "exp",
              beta: float = 3.0, jit_compile: bool = False, **kwargs) -> None:
    """Prepares `fit`: the optimizer and the meta-loss settings (`losses.meta_loss`).

    `jit_compile` defaults to False (Keras' "auto" would pick XLA, which numpy simulators and
    TensorFlow's CPU Poisson sampler do not support).
    """
    losses.check_meta_loss_settings(loss, time_weights, beta)
    losses.check_loss_for(self.proposal, loss)
    arguments.check_jit_compile(jit_compile, self.simulator)
    self._meta_loss_settings = {"loss": loss, "weights": time_weights, "beta": beta}
    super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

  def get_compile_config(self) -> Dict[str, Any]:
    config = super().get_compile_config()
    if config:
      config = {**config, "loss": self._meta_loss_settings["loss"],
                "time_weights": self._meta_loss_settings["weights"],
                "beta": self._meta_loss_settings["beta"]}
    return config

  def batch_loss(self, data, training: bool = False) -> tf.Tensor:
    """`losses.meta_loss` of a batch `(theta, observations, seed)`."""
    del training   # the machine has no layers that train differently
    theta, observations, seed = self._unpack_batch(data)
    return losses.meta_loss(self, theta, observations, seed, **self._meta_loss_settings)

  def _unpack_batch(self, data) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(theta [B, d], observations [B, n, d_x], seed [2])` of a batch, cast to float32 / int32,
    or one ValueError saying what a batch must hold."""
    if isinstance(data, (tuple, list)) and len(data) == 1:
      data = data[0]   # `fit(x=(theta, observations, seeds))`: Keras hands over `(x,)`
    if not isinstance(data, (tuple, list)) or len(data) != 3:
      raise ValueError("each batch for fit / evaluate must be a tuple (theta [B, d], observations "
                       f"[B, n, d_x], seed [2] or [B, 2]), got {_describe(data)}")
    theta, observations, seed = data
    d, d_x = self.simulator.parameter_dim, self.simulator.observation_dim
    theta = arguments.check_float_tensor(theta, "theta (the batch's first element)", [None, d],
                                         f"[batch, {d}]")
    observations = arguments.check_float_tensor(
        observations, "observations (the batch's second element)", [None, None, d_x],
        f"[batch, n, {d_x}]")
    theta, observations = _checked_pairs(theta, observations)
    if not tf.convert_to_tensor(seed).dtype.is_integer:
      raise ValueError(f"the batch's seeds (third element) must be integers, got "
                       f"{_describe(seed)}")
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank not in (None, 1, 2) or seed.shape[-1] not in (None, 2):
      # [B, 3] or [4] would be read as other pairs of numbers than the ones meant.
      raise ValueError(f"the batch's seeds (third element) must have shape [2] or [B, 2], got "
                       f"{_describe(seed)}")
    if seed.dtype != tf.int32:
      # A wider seed beyond int32 would wrap around in the cast (float64 holds int32's bounds).
      wide = tf.cast(seed, tf.float64)
      in_range = tf.debugging.Assert(
          tf.reduce_all((wide >= tf.int32.min) & (wide <= tf.int32.max)),
          ["the seeds of a batch (its third element) must lie in the int32 range"])
      with tf.control_dependencies([in_range]):
        seed = tf.identity(seed)
    seed = tf.reshape(tf.cast(seed, tf.int32), [-1, 2])[0]
    return theta, observations, seed


def _checked_pairs(theta: tf.Tensor, observations: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """`theta [B, d]` and `observations [B, n, d_x]` behind checks that run in `fit`'s graph too,
  where the values are unknown until it runs: NaN/inf turned every weight into NaN while the
  reported loss looked normal, and a theta batch of one broadcast against every data set."""
  same_batch = tf.debugging.assert_equal(
      tf.shape(theta)[0], tf.shape(observations)[0],
      message="theta and observations of a batch must hold the same number of problems")
  with tf.control_dependencies([same_batch]):
    return (tf.debugging.assert_all_finite(theta, "theta (the batch's first element) holds "
                                                  "NaN/inf values"),
            tf.debugging.assert_all_finite(observations, "observations (the batch's second "
                                                         "element) hold NaN/inf values"))


def _describe(data) -> str:
  """A batch's structure for an error message: the dtype and shape of each tensor in it."""
  return str(tf.nest.map_structure(
      lambda value: f"{tf.as_dtype(value.dtype).name}{list(value.shape)}"
      if hasattr(value, "shape") else type(value).__name__, data))
