"""The meta-loss (spec §3): per-step losses `l(theta*, psi_t)`, weighted over the T steps.

`meta_loss` is what meta-training minimises, whether through the `Trainer` or `machine.fit`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorflow as tf

from alfi_tf.config import LOSSES, TIME_WEIGHTS
from alfi_tf.model.proposals import Proposal


def check_loss_for(proposal: Proposal, kind: str) -> None:
  """Refuses the `nll` loss for a proposal (instance or family) without a density."""
  if kind == "nll" and not proposal.has_density:
    raise ValueError(f"loss 'nll' needs a proposal with a density; the {proposal.name!r} proposal "
                     "has none: use loss 'mse' or 'l1' (--loss=mse)")


def check_meta_loss_settings(loss: str, weights: str, beta: float) -> None:
  """Refuses meta-loss settings `meta_loss` cannot use, naming the argument (they would otherwise
  fail inside the first traced training step, or turn every loss into NaN)."""
  if not isinstance(loss, str) or loss not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES} (the machine's own meta-loss; Keras loss "
                     f"objects do not apply), got {loss!r}")
  if not isinstance(weights, str) or weights not in TIME_WEIGHTS:
    raise ValueError(f"time_weights must be one of {TIME_WEIGHTS}, got {weights!r}")
  if (not isinstance(beta, numbers.Real) or isinstance(beta, bool)
      or not math.isfinite(beta)):
    raise ValueError(f"beta must be a finite number, got {beta!r}")


def step_losses(theta: tf.Tensor, psi: tf.Tensor, kind: str, proposal: Proposal) -> tf.Tensor:
  """Loss of each step of each problem.

  Args:
    theta: `[batch, d]` true parameters, standardised.
    psi: `[batch, T, P]` trajectory, standardised.
    kind: `nll` (`-log q(theta* | psi_t)`), `mse` or `l1` (of the proposal's mean, summed over d).
    proposal: the family that `psi` parameterises.

  Returns:
    `[batch, T]`.
  """
  target = theta[:, tf.newaxis]
  if kind == "nll":
    return -proposal.log_prob(target, psi)
  mean = proposal.mean(psi)
  if kind == "mse":
    return tf.reduce_sum(tf.square(mean - target), axis=-1)
  if kind == "l1":
    return tf.reduce_sum(tf.abs(mean - target), axis=-1)
  raise ValueError(f"unknown loss {kind!r}")


def _exp_ramp(beta: float, num_steps: int) -> np.ndarray:
  """`(e^{beta s} - 1) / (e^beta - 1)` at `s = linspace(0, 1, T)`, finite for every beta: its
  limit `s` at 0 (0 / 0 gave NaN weights), and for beta > 0 rewritten as
  `e^{beta (s - 1)} (1 - e^{-beta s}) / (1 - e^{-beta})`, which does not overflow (inf / inf gave NaN
  from beta = 710 on)."""
  s = np.linspace(0.0, 1.0, num_steps)
  if beta == 0:
    return s
  if beta > 0:
    return np.exp(beta * (s - 1.0)) * np.expm1(-beta * s) / np.expm1(-beta)
  return np.expm1(beta * s) / np.expm1(beta)


def time_weights(kind: str, num_steps: int, beta: float = 3.0) -> np.ndarray:
  """Fixed weights `w_t`, `t = 1..T`, summing to 1.

  `exp`: the ramp `(e^{beta s} - 1) / (e^beta - 1)` over `s = linspace(0, 1, T)`, normalised;
  `constant`: `1/T`; `last`: only the final step. (`observed_improvement` depends on the losses and
  is handled by `weighted_loss`.)
  """
  if kind == "exp":
    if num_steps == 1:
      return np.ones(1, np.float32)
    ramp = _exp_ramp(beta, num_steps)
    return (ramp / ramp.sum()).astype(np.float32)
  if kind in ("constant", "observed_improvement"):
    return np.full(num_steps, 1.0 / num_steps, np.float32)
  if kind == "last":
    weights = np.zeros(num_steps, np.float32)
    weights[-1] = 1.0
    return weights
  raise ValueError(f"unknown time weights {kind!r}")


def weighted_loss(losses: tf.Tensor, kind: str, beta: float = 3.0,
                  initial_losses: tf.Tensor = None) -> tf.Tensor:
  """Combines per-step losses `[batch, T]` into one scalar (mean over the batch).

  `observed_improvement` sums `l_t - min_{i<t} l_i` over `t = 1..T`, where the running minimum
  includes `initial_losses` (the loss at `psi_0`, `[batch]`): a step is only rewarded for beating the
  best proposal seen so far.
  """
  num_steps = losses.shape[1]
  if kind == "observed_improvement":
    if initial_losses is None:
      raise ValueError("observed_improvement weights need the losses at psi_0")
    history = tf.concat([initial_losses[:, tf.newaxis], losses[:, :-1]], axis=1)
    best_so_far = tf.scan(tf.minimum, tf.transpose(history))            # [T, batch]
    improvement = losses - tf.transpose(best_so_far)
    return tf.reduce_mean(tf.reduce_sum(improvement, axis=1))
  weights = tf.constant(time_weights(kind, num_steps, beta))
  return tf.reduce_mean(tf.reduce_sum(losses * weights, axis=1))


def meta_loss(machine, theta: tf.Tensor, observations: tf.Tensor, seed: tf.Tensor,
              loss: str = "nll", weights: str = "exp", beta: float = 3.0) -> tf.Tensor:
  """The meta-loss of a batch of problems: run the machine, score its trajectory against `theta`.

  Args:
    machine: an `InferenceMachine` (its standardisation statistics set).
    theta: `[batch, d]` true parameters, raw units.
    observations: `[batch, n, d_x]` their observations, raw.
    seed: int32 `[2]`, the seed of the machine's proposals and simulations.
    loss: per-step loss, see `step_losses`.
    weights, beta: weighting over the steps, see `time_weights` / `weighted_loss`.

  Returns:
    A scalar: the batch's mean of the weighted per-step losses.
  """
  return trajectory_loss(machine, machine(observations, seed=seed, training=True), theta, loss,
                         weights, beta)


def trajectory_loss(machine, trajectory, theta: tf.Tensor, loss: str = "nll",
                    weights: str = "exp", beta: float = 3.0) -> tf.Tensor:
  """`meta_loss` of a trajectory the machine has already run (`machine(observations, seed)`), for
  callers that also want the rest of the trajectory (e.g. its masked-sample counts)."""
  target = machine.parameter_space.forward(theta)
  per_step = step_losses(target, trajectory.psi, loss, machine.proposal)
  initial = None
  if weights == "observed_improvement":
    initial = step_losses(target, trajectory.initial_psi[:, tf.newaxis], loss,
                          machine.proposal)[:, 0]
  return weighted_loss(per_step, weights, beta, initial)
