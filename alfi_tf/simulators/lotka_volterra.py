"""Lotka-Volterra predator-prey dynamics (spec §4), a black-box numpy simulator bridged into TF.

Prey `x` and predators `y` follow `dx/dt = alpha x - beta x y`, `dy/dt = delta x y - gamma y` from
`(x0, y0) = (1, 0.5)`. `theta = (log alpha, log beta, log gamma, log delta)`, each `~ U(log 0.5, log 2)`.
Each observation (a replicate) is the log-populations at `t = 1, 2, ..., 10`, prey first then
predators (20 values), plus independent `N(0, 0.1^2)` noise.

It stands for a black-box simulator: the inference only ever calls it, so it defines neither
`log_likelihood` nor a reference estimator.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from alfi_tf.simulators.base import NumpySimulator, box_prior

INITIAL_POPULATIONS = (1.0, 0.5)
OBSERVATION_TIMES = tuple(float(t) for t in range(1, 11))
NOISE_STD = 0.1
# RK4 at dt = 0.05 agrees with a tight adaptive solver to ~2e-4 in log space even at the corners of
# the prior box (where a population dips to ~e^-9), far below the 0.1 observation noise.
TIME_STEP = 0.05
_STEPS_PER_OBSERVATION = 20  # 1.0 / TIME_STEP, the observation times being 1 apart.


def _log_space_derivative(log_populations: np.ndarray, rates: np.ndarray) -> np.ndarray:
  """`d(u, v)/dt = (alpha - beta e^v, delta e^u - gamma)` for `u = log x`, `v = log y`.

  Args:
    log_populations: `[batch, 2]`, `(u, v)`.
    rates: `[batch, 4]`, `(alpha, beta, gamma, delta)`.

  Returns:
    `[batch, 2]`.
  """
  alpha, beta, gamma, delta = rates.T
  u, v = log_populations.T
  return np.stack([alpha - beta * np.exp(v), delta * np.exp(u) - gamma], axis=-1)


def solve_log_populations(theta: np.ndarray) -> np.ndarray:
  """Noise-free log-populations at `t = 1..10`, by fixed-step RK4 in log space.

  Integrating `(log x, log y)` rather than `(x, y)` keeps the populations positive whatever the step,
  and the loop runs over time steps only: all parameter vectors are solved at once.

  Args:
    theta: `[batch, 4]` log-rates `(log alpha, log beta, log gamma, log delta)`.

  Returns:
    `[batch, 2, 10]` float64: `log x(t)` in `[:, 0]` and `log y(t)` in `[:, 1]`.
  """
  rates = np.exp(np.asarray(theta, np.float64))
  state = np.broadcast_to(np.log(INITIAL_POPULATIONS), (rates.shape[0], 2)).copy()
  records = []
  for _ in OBSERVATION_TIMES:
    for _ in range(_STEPS_PER_OBSERVATION):
      k1 = _log_space_derivative(state, rates)
      k2 = _log_space_derivative(state + 0.5 * TIME_STEP * k1, rates)
      k3 = _log_space_derivative(state + 0.5 * TIME_STEP * k2, rates)
      k4 = _log_space_derivative(state + TIME_STEP * k3, rates)
      state = state + TIME_STEP / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    records.append(state)
  return np.stack(records, axis=-1)


class LotkaVolterraSimulator(NumpySimulator):
  """Noisy replicates of a predator-prey trajectory; the ODE is solved once per parameter vector."""

  name = "lotka_volterra"

  def __init__(self):
    log_half, log_two = float(np.log(0.5)), float(np.log(2.0))
    super().__init__(parameter_names=("log_alpha", "log_beta", "log_gamma", "log_delta"),
                     observation_dim=2 * len(OBSERVATION_TIMES),
                     prior=box_prior([log_half] * 4, [log_two] * 4))

  def simulate_numpy(self, theta: np.ndarray, num_obs: int,
                     rng: np.random.Generator) -> np.ndarray:
    """`[batch, 4]` float64 log-rates to `[batch, num_obs, 20]` noisy log-populations."""
    trajectory = solve_log_populations(theta).reshape(theta.shape[0], 1, self.observation_dim)
    noise = rng.standard_normal((theta.shape[0], num_obs, self.observation_dim))
    return trajectory + NOISE_STD * noise

  def summary_statistics(self, observations: tf.Tensor) -> tf.Tensor:
    """The mean over replicates of each of the 20 log-populations, `[batch, 20]`: sufficient, as
    the replicates are the one trajectory plus Gaussian noise of known std."""
    return tf.reduce_mean(tf.convert_to_tensor(observations, tf.float32), axis=1)
