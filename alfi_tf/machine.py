"""The recurrent inference machine (spec §2): the whole T-step loop unrolled in one graph."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from alfi_tf import proposal
from alfi_tf.config import MachineConfig
from alfi_tf.networks import SampleAggregator, SetEncoder, Updater
from alfi_tf.normalization import Moments, Standardizer, transform_observations
from alfi_tf.simulators import Simulator


class Trajectory(NamedTuple):
  """Proposal parameters after each step, in standardised parameter space.

  Attributes:
    initial_psi: `[batch, 2d]`, `psi_0`.
    psi: `[batch, T, 2d]`, `psi_1 .. psi_T`.
  """

  initial_psi: tf.Tensor
  psi: tf.Tensor


class LoopState(NamedTuple):
  """What the machine carries from one step to the next.

  Attributes:
    psi: `[batch, 2d]` current proposal parameters (standardised).
    lstm_h, lstm_c: `[batch, lstm_units]` the LSTM cell's state.
    real_encoding: `[batch, E]` the set encoding of the observed data (computed once).
  """

  psi: tf.Tensor
  lstm_h: tf.Tensor
  lstm_c: tf.Tensor
  real_encoding: tf.Tensor


class InferenceMachine(keras.Model):
  """Meta-learned inference: proposes, simulates, compares, updates `psi`, T times.

  The standardisation statistics of parameters and observations are weights of the model (set them
  with `adapt`), so they are saved and restored with it.

  Example:
    >>> simulator = get_simulator("poisson")
    >>> machine = InferenceMachine(simulator, MachineConfig(simulator="poisson"))
    >>> machine.adapt(theta_train, observations_train)
    >>> trajectory = machine(observations, seed=tf.constant([1, 2]))
  """

  def __init__(self, simulator: Simulator, config: MachineConfig, name: str = "alfi_machine"):
    super().__init__(name=name)
    if config.simulator != simulator.name:
      raise ValueError(f"config.simulator is {config.simulator!r} but the simulator is "
                       f"{simulator.name!r}")
    self.simulator = simulator
    self.config = config
    d = simulator.parameter_dim
    self.theta_standardizer = Standardizer(d, name="theta_standardizer")
    self.observation_standardizer = Standardizer(simulator.observation_dim,
                                                 name="observation_standardizer")
    self.encoder = SetEncoder(config.encoder_hidden, config.encoder_out, config.moment_features,
                              simulator.observation_dim)
    self.aggregator = SampleAggregator(config.aggregator_hidden, config.aggregator_out)
    self.updater = Updater(config.updater_hidden, config.lstm_units, 2 * d, config.bound,
                           config.bound_type)
    bounds = simulator.parameter_bounds
    self._bounds = None if bounds is None else tuple(tf.constant(b, tf.float32) for b in bounds)
    self._build_weights()
    self.built = True

  def _build_weights(self) -> None:
    """Creates every weight now, so checkpoints can be restored before the first call."""
    d, dx, cfg = self.simulator.parameter_dim, self.simulator.observation_dim, self.config
    self.encoder(tf.zeros([1, 1, dx]))
    self.aggregator(tf.zeros([1, 1, 2 * self.encoder.size + 3 * d]))
    self.updater(tf.zeros([1, cfg.aggregator_out + 2 * d]), self.updater.initial_state(1))

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
    of a meta-training set too large for memory and pass to `set_moments`."""
    transformed = transform_observations(tf.constant(observations, tf.float32),
                                         self.config.observation_transform)
    return (Moments.of(theta, self.simulator.parameter_dim),
            Moments.of(transformed.numpy(), self.simulator.observation_dim))

  def set_moments(self, theta_moments: Moments, observation_moments: Moments) -> None:
    """Sets the standardisation statistics from accumulated `problem_moments`."""
    self.theta_standardizer.set_moments(theta_moments)
    self.observation_standardizer.set_moments(observation_moments)

  def standardize_observations(self, observations: tf.Tensor) -> tf.Tensor:
    """Raw observations `[..., d_x]` -> the encoder's input scale."""
    return self.observation_standardizer.forward(
        transform_observations(observations, self.config.observation_transform))

  def initial_psi(self, batch_size: int, seed: tf.Tensor,
                  initial_mean: Optional[tf.Tensor] = None) -> tf.Tensor:
    """`psi_0`: mean drawn from the prior (or `initial_mean [batch, d]`, raw units), log sigma_init."""
    if initial_mean is None:
      initial_mean = tf.cast(self.simulator.prior.sample(batch_size, seed=seed), tf.float32)
    mean = self.theta_standardizer.forward(initial_mean)
    log_scale = tf.fill(tf.shape(mean), math.log(self.config.initial_scale))
    return proposal.join_psi(mean, log_scale)

  def simulation_parameters(self, theta_standardized: tf.Tensor) -> tf.Tensor:
    """Standardised samples `[batch, M, d]` -> the raw parameters to simulate, `[batch, M, d]`.

    Gaussian proposals may leave the prior's support, where a simulator can be undefined, so the
    samples are clipped into the prior's box (when it has one) before simulation.
    """
    theta = self.theta_standardizer.inverse(theta_standardized)
    if self._bounds is not None:
      theta = tf.clip_by_value(theta, self._bounds[0], self._bounds[1])
    return theta

  def _simulate(self, theta_standardized: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Runs the simulator on `[batch, M, d]` standardised samples -> `[batch, M, N, d_x]` raw obs."""
    batch, num_samples = tf.shape(theta_standardized)[0], theta_standardized.shape[1]
    theta = tf.reshape(self.simulation_parameters(theta_standardized),
                       [-1, self.simulator.parameter_dim])
    simulated = self.simulator.simulate(theta, self.config.num_simulated_obs, seed)
    return tf.reshape(simulated, tf.stack([batch, num_samples, self.config.num_simulated_obs,
                                           self.simulator.observation_dim]))

  # The loop is exposed in three pieces (begin, propose, update) so that it can also be driven from
  # outside the graph, one simulator call at a time (ask/tell with an external simulator); `call`
  # strings them together with the simulator inline.

  def begin(self, observations: tf.Tensor, seed: tf.Tensor,
            initial_mean: Optional[tf.Tensor] = None) -> Tuple[LoopState, tf.Tensor]:
    """Encodes the observations and sets up `psi_0` and `h_0`.

    Args:
      observations: `[batch, n, d_x]` raw observations.
      seed: int32 `[2]`; the start (when drawn) and every later step derive from it.
      initial_mean: optional `[batch, d]` raw start `mu_0`; default a draw from the prior.

    Returns:
      `(state, loop_seed)`: the state before step 1 and the seed that `step_seeds` derives from.
    """
    observations = tf.convert_to_tensor(observations, tf.float32)
    batch = tf.shape(observations)[0]
    init_seed, loop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    h, c = self.updater.initial_state(batch)
    state = LoopState(psi=self.initial_psi(batch, init_seed, initial_mean), lstm_h=h, lstm_c=c,
                      real_encoding=self.encoder(self.standardize_observations(observations)))
    return state, loop_seed

  @staticmethod
  def step_seeds(loop_seed: tf.Tensor, step: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """`(proposal_seed, simulation_seed)` of step `step` (0-based), independent of the horizon."""
    pair = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(loop_seed, tf.cast(step, tf.int32)), 2)
    return pair[0], pair[1]

  def propose(self, state: LoopState, seed: tf.Tensor) -> tf.Tensor:
    """Draws the step's `M` standardised samples `[batch, M, d]` from `q(theta | psi_t)`."""
    return proposal.sample(state.psi, self.config.num_samples, seed)

  def update(self, state: LoopState, theta: tf.Tensor, simulated: tf.Tensor) -> LoopState:
    """One update `psi_{t+1} = psi_t + Delta psi_t` from the simulations of the proposed samples.

    Args:
      state: the state at step t.
      theta: `[batch, M, d]` the standardised samples returned by `propose`.
      simulated: `[batch, M, N, d_x]` raw observations simulated at `simulation_parameters(theta)`.
    """
    psi = state.psi
    simulated_encoding = self.encoder(self.standardize_observations(simulated))  # [batch, M, E]
    # Scores are random features of the samples; like the samples they carry no gradient.
    scores = proposal.standardize_over_samples(
        tf.stop_gradient(proposal.score(theta, psi)))                            # [batch, M, 2d]
    features = tf.concat([
        tf.broadcast_to(state.real_encoding[:, tf.newaxis], tf.shape(simulated_encoding)),
        simulated_encoding, theta, scores], axis=-1)
    context = self.aggregator(features)                                          # [batch, C]
    delta, (h, c) = self.updater(tf.concat([context, psi], axis=-1), [state.lstm_h, state.lstm_c])
    return LoopState(psi=psi + delta, lstm_h=h, lstm_c=c, real_encoding=state.real_encoding)

  def call(self, observations: tf.Tensor, seed: tf.Tensor, num_steps: Optional[int] = None,
           initial_mean: Optional[tf.Tensor] = None) -> Trajectory:
    """Runs the machine on a batch of problems, the T steps unrolled in one graph.

    Args:
      observations: `[batch, n, d_x]` raw observations (n may differ from training).
      seed: int32 `[2]` stateless seed (initial means, proposals and simulations derive from it).
      num_steps: horizon `T` (a Python int), default `config.num_steps`.
      initial_mean: optional `[batch, d]` raw start `mu_0`; default a draw from the prior.

    Returns:
      The `Trajectory` of `psi`, standardised.
    """
    num_steps = num_steps or self.config.num_steps
    state, loop_seed = self.begin(observations, seed, initial_mean)
    initial_psi = state.psi
    trajectory = []
    for t in range(num_steps):
      proposal_seed, simulation_seed = self.step_seeds(loop_seed, t)
      theta = self.propose(state, proposal_seed)                               # [batch, M, d]
      state = self.update(state, theta, self._simulate(theta, simulation_seed))
      trajectory.append(state.psi)
    return Trajectory(initial_psi=initial_psi, psi=tf.stack(trajectory, axis=1))

  def to_raw(self, psi: tf.Tensor):
    """Standardised `psi [..., 2d]` -> `(mean, std)` in raw parameter units, each `[..., d]`."""
    mean, log_scale = proposal.split_psi(psi)
    return (self.theta_standardizer.inverse(mean),
            tf.exp(log_scale) * self.theta_standardizer.std)
