"""The train step factory: on one device, one step is a hand-written Adam step on the meta-loss, its
gradient clipped by its global norm; the global batch must split evenly across replicas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from alfi_tf.model import losses
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.simulators import get_simulator
from alfi_tf.training import generate_problems, make_train_step
from tests.test_training import TINY_MACHINE


def _loss_and_masked(machine):
  """The step's loss function: the meta-loss and the masked-sample count of the machine's run."""
  def loss_fn(theta, observations, seed):
    trajectory = machine(observations, seed=seed)
    return (losses.trajectory_loss(machine, trajectory, theta),
            tf.cast(tf.reduce_sum(trajectory.masked_samples), tf.float32))
  return loss_fn


def _machine_and_optimizer(problems) -> tuple:
  machine = InferenceMachine(get_simulator("poisson"), TINY_MACHINE)
  machine.adapt(problems.theta, problems.observations)
  optimizer = keras.optimizers.Adam(3e-3)
  optimizer.build(machine.trainable_variables)
  return machine, optimizer


@pytest.mark.parametrize("grad_clip_norm", [None, 0.05])
def test_one_device_step_is_an_adam_step_on_the_clipped_meta_loss_gradient(grad_clip_norm):
  problems = generate_problems(get_simulator("poisson"), 16, 50, seed=4, stream=0)
  machine, optimizer = _machine_and_optimizer(problems)
  reference, reference_optimizer = _machine_and_optimizer(problems)
  for target, source in zip(reference.weights, machine.weights):
    target.assign(source)
  theta, observations = tf.constant(problems.theta), tf.constant(problems.observations)
  seed = tf.constant([7, 8])
  step = make_train_step(machine, optimizer, tf.distribute.get_strategy(),
                         _loss_and_masked(machine), global_batch_size=16,
                         grad_clip_norm=grad_clip_norm)

  loss, norm, masked = step(theta, observations, seed)

  variables = reference.trainable_variables
  with tf.GradientTape() as tape:
    expected_loss = losses.meta_loss(reference, theta, observations, seed)
  gradients = tape.gradient(expected_loss, variables)
  expected_norm = tf.linalg.global_norm(gradients)
  if grad_clip_norm:
    gradients, _ = tf.clip_by_global_norm(gradients, grad_clip_norm)
    assert float(expected_norm) > grad_clip_norm, "clipping acts"
  reference_optimizer.apply_gradients(zip(gradients, variables))
  np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-5)
  np.testing.assert_allclose(float(norm), float(expected_norm), rtol=1e-4)
  assert int(optimizer.iterations.numpy()) == 1
  assert float(masked) == 0.0   # Poisson never returns NaN
  for a, b in zip(machine.trainable_variables, variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def test_the_global_batch_must_split_evenly_across_replicas():
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    machine = InferenceMachine(get_simulator("poisson"), TINY_MACHINE)
    optimizer = keras.optimizers.Adam(3e-3)
  with pytest.raises(ValueError, match=r"batch_size \(15\) must be a multiple of the number of "
                                       r"replicas \(2\)"):
    make_train_step(machine, optimizer, strategy, _loss_and_masked(machine),
                    global_batch_size=15)
