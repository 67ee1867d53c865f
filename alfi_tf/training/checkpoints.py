"""Checkpoints of a training run: when to save, saving on every worker, restoring with fallback."""

from __future__ import annotations

import shutil
from typing import Optional

import keras
import tensorflow as tf
from absl import logging

from alfi_tf.training import distribute
from alfi_tf.workdir import Workdir, restore_checkpoint


class CheckpointKeeper:
  """Saves and restores the machine and optimizer of a run in `workdir/checkpoints`.

  The optimizer's state (its moments and step counter) is saved with the machine, so a restored run
  continues exactly. Every worker of a multi-worker run saves (saving may involve collectives), but
  only the chief into the run; the others write scratch copies that are deleted after each save.

  Args:
    workdir: the run.
    strategy: the run's `tf.distribute.Strategy` (which worker this is, and the save vote).
    machine: the model.
    optimizer: its optimizer.
    every_steps: save when the step is a multiple of this.
    every_minutes: also save when this many minutes have passed since the last save (0: never).
    max_to_keep: the newest checkpoints kept; older ones are deleted.
  """

  def __init__(self, workdir: Workdir, strategy: tf.distribute.Strategy, machine: keras.Model,
               optimizer: keras.optimizers.Optimizer, every_steps: int,
               every_minutes: float = 0.0, max_to_keep: int = 3):
    self.checkpoint = tf.train.Checkpoint(machine=machine, optimizer=optimizer)
    self.directory = workdir.checkpoints
    self.every_steps = every_steps
    self.every_minutes = every_minutes
    self._strategy = strategy
    self._optimizer = optimizer
    self._scratch = (None if distribute.is_chief(strategy) else
                     workdir.worker_scratch(distribute.worker_name(strategy)))
    self.manager = tf.train.CheckpointManager(self.checkpoint, self._scratch or self.directory,
                                              max_to_keep=max_to_keep)

  def restore(self) -> Optional[str]:
    """Restores the newest readable checkpoint of the run (see `workdir.restore_checkpoint`).

    Returns:
      Its path, or None when the run has no checkpoint yet.

    Raises:
      RuntimeError: checkpoints exist but none of them is readable.
    """
    path = restore_checkpoint(self.checkpoint, self.directory)
    if path is not None:
      logging.info("resumed from %s at step %d", path, int(self._optimizer.iterations.numpy()))
    return path

  def time_to_save(self, minutes_since_save: float) -> bool:
    """The time-based cadence. Workers' clocks differ, but all must save together: in a
    multi-worker run they save when any of them is due."""
    due = 0 < self.every_minutes <= minutes_since_save
    if self.every_minutes > 0 and distribute.task(self._strategy) is not None:
      votes = self._strategy.run(lambda: tf.constant(int(due)))
      return bool(self._strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None) > 0)
    return due

  def due(self, step: int, last: bool, minutes_since_save: float) -> bool:
    """Whether to save after `step`: every `every_steps`, at the `last` step of a session, or when
    `time_to_save`. Every worker must ask at every step (the time vote is a collective)."""
    return step % self.every_steps == 0 or last or self.time_to_save(minutes_since_save)

  def save(self, step: int) -> None:
    """Saves the checkpoint of `step` (on every worker at once)."""
    self.manager.save(checkpoint_number=step)
    if self._scratch:
      shutil.rmtree(self._scratch, ignore_errors=True)
