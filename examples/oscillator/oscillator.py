"""A damped oscillator measured with noise: a simulator that lives in its own file, not in alfi_tf.

Each observation is one noisy recording of the oscillator released from rest at amplitude 1,

    x(t) = exp(-damping * t) * cos(frequency * t) + noise,   noise ~ N(0, noise_std^2),

at `NUM_TIMES` fixed times `t` in [0.25, 4]; an observation set is `n` such recordings (repeated
experiments). Parameters: `damping` in [0.1, 1] (1/s) and `frequency` in [0.5, 3] (rad/s), uniform.

Train on it with nothing but the flags:

    alfi-train --simulator=examples/oscillator/oscillator.py:DampedOscillator --workdir=runs/osc
"""

import numpy as np

from alfi_tf import NumpySimulator, box_prior

NUM_TIMES = 8
TIMES = np.linspace(0.25, 4.0, NUM_TIMES)


class DampedOscillator(NumpySimulator):
  """`[batch, 2]` (damping, frequency) -> `[batch, num_obs, NUM_TIMES]` noisy positions."""

  name = "damped_oscillator"

  def __init__(self, noise_std: float = 0.1):
    super().__init__(parameter_names=["damping", "frequency"], observation_dim=NUM_TIMES,
                     prior=box_prior([0.1, 0.5], [1.0, 3.0]))
    self.noise_std = noise_std

  def simulate_numpy(self, theta, num_obs, rng):
    damping, frequency = theta[:, 0, None], theta[:, 1, None]                 # [batch, 1]
    clean = np.exp(-damping * TIMES) * np.cos(frequency * TIMES)            # [batch, NUM_TIMES]
    noise = rng.normal(scale=self.noise_std, size=(len(theta), num_obs, NUM_TIMES))
    return clean[:, None, :] + noise


  def log_likelihood(self, theta, observations):
    """`[batch, k]` Gaussian log-likelihood of each candidate `theta [batch, k, 2]`, up to a
    constant; enables the evaluation's exact grid posterior (d = 2, box prior)."""
    theta = np.asarray(theta, np.float64)
    x = np.asarray(observations, np.float64)                                # [batch, n, T]
    clean = (np.exp(-theta[..., 0, None] * TIMES)
             * np.cos(theta[..., 1, None] * TIMES))                         # [batch, k, T]
    # sum_i |x_i - c|^2 = sum_i |x_i|^2 - 2 c . sum_i x_i + n |c|^2; the first term is constant.
    cross = np.einsum("bkt,bt->bk", clean, x.sum(axis=1))
    squares = x.shape[1] * np.sum(clean ** 2, axis=-1)
    return (cross - 0.5 * squares) / self.noise_std ** 2


def noisier():
  """A factory function works as a spec too: `oscillator.py:noisier`."""
  return DampedOscillator(noise_std=0.3)
