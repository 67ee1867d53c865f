"""The meta-training step: one Adam update of the machine on a global batch, across replicas.

The global batch is split evenly across the replicas of a `tf.distribute` strategy, each replica's
simulations get their own seed, and the replicas' gradients are summed and clipped once, as one
gradient of the whole batch's loss, before the update.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import keras
import tensorflow as tf

#: `(theta [b, d], observations [b, n, d_x], seed [2]) -> (the batch's mean loss, masked samples)`:
#: the machine's meta-loss (e.g. `Trainer.meta_loss`) and how many of its simulated sets failed,
#: NaN/inf or outside the observation transform's domain (a float32 scalar count, see
#: `Trajectory.masked_samples`).
LossFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]
#: `(theta [B, d], observations [B, n, d_x], seed [2]) -> (loss, gradient norm, masked samples)`.
TrainStep = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], Tuple[tf.Tensor, tf.Tensor, tf.Tensor]]


def check_global_batch(global_batch_size: int, replicas: int) -> None:
  """Refuses a global batch that the replicas cannot share evenly."""
  if global_batch_size % replicas:
    raise ValueError(f"batch_size ({global_batch_size}) must be a multiple of the number of "
                     f"replicas ({replicas}): the global batch is split evenly")


def _sum_and_clip(context: tf.distribute.ReplicaContext, gradients: List[tf.Tensor],
                  replicas: int,
                  grad_clip_norm: Optional[float]) -> Tuple[List[tf.Tensor], tf.Tensor]:
  """The replicas' summed gradients, clipped by their global norm, and that (unclipped) norm.

  The result is divided by the number of replicas: Keras sums the replicas' gradients again when it
  applies them.
  """
  if replicas > 1:
    gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
  norm = tf.linalg.global_norm(gradients)
  if grad_clip_norm:
    gradients, _ = tf.clip_by_global_norm(gradients, grad_clip_norm, use_norm=norm)
  if replicas > 1:
    gradients = [gradient / replicas for gradient in gradients]
  return gradients, norm


def make_train_step(machine: keras.Model, optimizer: keras.optimizers.Optimizer,
                    strategy: tf.distribute.Strategy, loss_fn: LossFn, global_batch_size: int,
                    grad_clip_norm: Optional[float] = None,
                    jit_compile: bool = False) -> TrainStep:
  """A compiled optimisation step on a global batch.

  Args:
    machine: the model whose trainable variables are updated (built in `strategy`'s scope).
    optimizer: its optimizer, built in `strategy`'s scope, without `clipnorm`: Keras would clip each
      replica's gradient before summing them, the step clips the summed gradient instead.
    strategy: the `tf.distribute.Strategy` whose replicas share the batch.
    loss_fn: the loss of one replica's share of the batch (see `LossFn`).
    global_batch_size: `B`, a multiple of the number of replicas.
    grad_clip_norm: clip the summed gradient to this global norm (None or 0: no clipping).
    jit_compile: compile each replica's forward and backward pass with XLA.

  Returns:
    A `tf.function` `(theta [B, d], observations [B, n, d_x], seed [2]) -> (loss, norm, masked)`:
    the batch's loss, the global norm of its summed, unclipped gradients and the number of simulated
    sets masked out for NaN/inf, over all replicas. `seed` seeds the machine's proposals and
    simulations; each replica folds in its index.
  """
  replicas = strategy.num_replicas_in_sync
  check_global_batch(global_batch_size, replicas)
  share = global_batch_size // replicas

  def replica_gradients(theta: tf.Tensor, observations: tf.Tensor,
                        seed: tf.Tensor) -> Tuple[tf.Tensor, List[tf.Tensor], tf.Tensor]:
    """This replica's share of the loss (its mean loss / replicas), its gradients and its count
    of masked samples."""
    with tf.GradientTape() as tape:
      loss, masked = loss_fn(theta, observations, seed)
      loss = loss / replicas
    return loss, tape.gradient(loss, machine.trainable_variables), masked

  gradients_of = tf.function(replica_gradients, jit_compile=jit_compile)

  def meta_minimize(theta: tf.Tensor, observations: tf.Tensor,
                    seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Runs on each replica: its slice of the batch, the summed gradients, one Adam update."""
    context = tf.distribute.get_replica_context()
    if replicas > 1:
      replica = context.replica_id_in_sync_group
      theta = theta[replica * share:(replica + 1) * share]
      observations = observations[replica * share:(replica + 1) * share]
      seed = tf.random.experimental.stateless_fold_in(seed, replica)
    loss, gradients, masked = gradients_of(theta, observations, seed)
    gradients, norm = _sum_and_clip(context, gradients, replicas, grad_clip_norm)
    optimizer.apply_gradients(zip(gradients, machine.trainable_variables))
    return loss, norm, masked

  def train_step(theta: tf.Tensor, observations: tf.Tensor,
                 seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    loss, norm, masked = strategy.run(meta_minimize, args=(theta, observations, seed))
    return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.MEAN, norm, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, masked, axis=None))

  return tf.function(train_step)
