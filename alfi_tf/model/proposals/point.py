"""A point proposal, `q(theta | psi) = delta(theta - mu)` (the authors' constant proposal): all M
samples of a step sit at the current estimate, so the machine compares M simulations at `mu` with
the data.

`psi = mu`, `[..., d]`. A point mass has no density, so this family trains with the `mse` or `l1`
loss (not `nll`), carries no score features (they are zero) and reports `std = 0`: it answers with
an estimate and no uncertainty.
"""

from __future__ import annotations

import tensorflow as tf

from alfi_tf.model.proposals.base import LocationProposal


class Point(LocationProposal):
  """`delta(theta - mu)` with `psi = mu`, `P = d`."""

  name = "point"
  has_density = False

  def sample(self, psi: tf.Tensor, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
    del seed   # deterministic
    return tf.repeat(tf.stop_gradient(psi)[:, tf.newaxis], num_samples, axis=1)

  def log_prob(self, theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
    raise ValueError("the 'point' proposal has no density: train it with loss 'mse' or 'l1'")

  def score(self, theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
    return tf.zeros_like(theta)   # P = d: one zero per sample and parameter

  def stddev(self, psi: tf.Tensor) -> tf.Tensor:
    return tf.zeros_like(psi)
