"""The checkpoint keeper: saves by step, at the last step and by time; restores the newest readable
checkpoint with the optimizer's state, falling back past a corrupted one."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from alfi_tf.training import CheckpointKeeper
from alfi_tf.workdir import Workdir


def _keeper(path, every_steps: int = 5, every_minutes: float = 0.0) -> CheckpointKeeper:
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros")])
  optimizer = keras.optimizers.Adam(0.1)
  optimizer.build(model.trainable_variables)
  return CheckpointKeeper(Workdir(str(path)), tf.distribute.get_strategy(), model, optimizer,
                          every_steps, every_minutes)


def _step(keeper: CheckpointKeeper) -> None:
  """One Adam update of the keeper's model (so the optimizer's state changes too)."""
  model = keeper.checkpoint.machine
  keeper.checkpoint.optimizer.apply_gradients(
      [(tf.ones_like(v), v) for v in model.trainable_variables])


def _state(keeper: CheckpointKeeper):
  return ([v.numpy() for v in keeper.checkpoint.machine.weights],
          int(keeper.checkpoint.optimizer.iterations.numpy()))


def test_without_checkpoints_restore_returns_none(tmp_path):
  assert _keeper(tmp_path / "run").restore() is None


def test_restores_the_newest_checkpoint_with_the_optimizer_state(tmp_path):
  keeper = _keeper(tmp_path / "run")
  for step in (1, 2):
    _step(keeper)
    keeper.save(step)
  weights, iterations = _state(keeper)
  fresh = _keeper(tmp_path / "run")
  assert fresh.restore().endswith("ckpt-2")
  restored_weights, restored_iterations = _state(fresh)
  assert restored_iterations == iterations == 2
  for a, b in zip(weights, restored_weights):
    np.testing.assert_array_equal(a, b)


def test_a_corrupted_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
  keeper = _keeper(tmp_path / "run")
  _step(keeper)
  keeper.save(1)
  weights_at_1, _ = _state(keeper)
  _step(keeper)
  keeper.save(2)
  directory = tmp_path / "run" / "checkpoints"
  for name in os.listdir(directory):
    if name.startswith("ckpt-2.data"):
      with open(directory / name, "r+b") as stream:
        stream.truncate(16)
  fresh = _keeper(tmp_path / "run")
  assert fresh.restore().endswith("ckpt-1")
  weights, iterations = _state(fresh)
  assert iterations == 1
  for a, b in zip(weights_at_1, weights):
    np.testing.assert_array_equal(a, b)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
  keeper = _keeper(tmp_path / "run")
  for step in range(1, 6):
    keeper.save(step)
  assert [os.path.basename(path) for path in keeper.manager.checkpoints] == [
      "ckpt-3", "ckpt-4", "ckpt-5"]


@pytest.mark.parametrize("every_minutes, step, last, minutes, due", [
    (0.0, 10, False, 0.0, True),      # a multiple of every_steps
    (0.0, 7, True, 0.0, True),        # the last step of a session
    (0.0, 7, False, 1e9, False),      # no time-based cadence
    (2.0, 7, False, 1.9, False),
    (2.0, 7, False, 2.0, True),
])
def test_saves_by_step_at_the_last_step_and_by_time(tmp_path, every_minutes, step, last, minutes,
                                                    due):
  keeper = _keeper(tmp_path / "run", every_steps=5, every_minutes=every_minutes)
  assert keeper.due(step, last, minutes) is due
