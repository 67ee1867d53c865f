"""Meta-training: seeded data, a compiled Adam step with BPTT, validation and checkpoints."""

from __future__ import annotations

import os
import time
from typing import Dict, NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from alfi_tf import data as data_lib
from alfi_tf import losses
from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.inference import Inferrer
from alfi_tf.machine import InferenceMachine
from alfi_tf.simulators import get_simulator
from alfi_tf.workdir import Workdir


class TrainingResult(NamedTuple):
  """Summary of a finished run, also written to `DIR/training_summary.json`.

  `train_seconds` is the wall time of the optimisation steps (with validation and checkpoints),
  summed over resumed sessions; data generation is reported separately as `data_seconds`.
  """

  steps: int
  final_loss: float
  validation_rmse: Dict[str, float]
  train_seconds: float


def rmse_per_step(estimates: np.ndarray, theta: np.ndarray) -> np.ndarray:
  """RMSE over problems: `estimates [K, T, d]` against `theta [K, d]` -> `[T, d]`."""
  return np.sqrt(np.mean(np.square(estimates - theta[:, np.newaxis]), axis=0))


class Trainer:
  """Owns the machine, optimizer and checkpoints of one workdir.

  Args:
    machine_config: architecture and simulation budget.
    train_config: meta-training settings.
    workdir: run directory; an existing one must hold the same configuration and is resumed.
    jit_compile: compile the training step with XLA (TF-native simulators only).
    log_every: steps between progress lines.
  """

  def __init__(self, machine_config: MachineConfig, train_config: TrainConfig, workdir: str,
               jit_compile: bool = False, log_every: int = 100):
    self.machine_config = machine_config
    self.train_config = train_config
    self.workdir = Workdir(workdir)
    self.workdir.claim(machine_config, train_config)
    self.log_every = log_every
    self.simulator = get_simulator(machine_config.simulator)
    # Initial weights derive from the run's seed too (Keras initialisers draw from the global seed).
    keras.utils.set_random_seed(train_config.seed)
    self.machine = InferenceMachine(self.simulator, machine_config)
    schedule = keras.optimizers.schedules.CosineDecay(
        train_config.learning_rate, decay_steps=train_config.total_steps,
        alpha=train_config.final_learning_rate_fraction)
    self.optimizer = keras.optimizers.Adam(
        schedule, global_clipnorm=train_config.grad_clip_norm or None)
    self.optimizer.build(self.machine.trainable_variables)
    self.checkpoint = tf.train.Checkpoint(machine=self.machine, optimizer=self.optimizer)
    self.manager = tf.train.CheckpointManager(self.checkpoint, self.workdir.checkpoints,
                                              max_to_keep=3)
    self._time_weights = train_config.time_weights
    self._train_step = tf.function(self._step, jit_compile=jit_compile)

  @property
  def step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  def _loss(self, theta: tf.Tensor, observations: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    cfg = self.train_config
    trajectory = self.machine(observations, seed=seed)
    target = self.machine.theta_standardizer.forward(theta)
    per_step = losses.step_losses(target, trajectory.psi, cfg.loss)
    initial = None
    if cfg.time_weights == "observed_improvement":
      initial = losses.step_losses(target, trajectory.initial_psi[:, tf.newaxis], cfg.loss)[:, 0]
    return losses.weighted_loss(per_step, cfg.time_weights, cfg.beta, initial)

  def _batch_indices(self, step: tf.Tensor) -> tf.Tensor:
    """Problems of the batch at `step`: a fresh stateless permutation per epoch, so the data
    position is a pure function of the step and a resumed run sees exactly the same batches."""
    cfg = self.train_config
    epoch = step // cfg.steps_per_epoch
    position = step % cfg.steps_per_epoch
    epoch_seed = tf.random.experimental.stateless_fold_in(
        data_lib.stream_seed(cfg.seed, data_lib.TRAIN_STREAM), epoch)
    order = tf.random.experimental.stateless_shuffle(tf.range(cfg.num_problems), seed=epoch_seed)
    return order[position * cfg.batch_size:(position + 1) * cfg.batch_size]

  def _step(self, theta_all: tf.Tensor, observations_all: tf.Tensor) -> tf.Tensor:
    cfg = self.train_config
    step = tf.cast(self.optimizer.iterations, tf.int32)
    # Simulations of step s use their own seed stream: reproducible and independent of the batching.
    seed, problem_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(tf.constant([cfg.seed, 1], tf.int32), step), 2))
    if cfg.online:
      theta, observations = self.simulator.sample_problems(cfg.batch_size, cfg.num_obs,
                                                           problem_seed)
    else:
      indices = self._batch_indices(step)
      theta = tf.gather(theta_all, indices)
      observations = tf.gather(observations_all, indices)
    variables = self.machine.trainable_variables
    with tf.GradientTape() as tape:
      loss = self._loss(theta, observations, seed)
    gradients = tape.gradient(loss, variables)
    self.optimizer.apply_gradients(zip(gradients, variables))
    return loss

  def _validate(self, inferrer: Inferrer, problems: data_lib.Problems) -> Dict[str, float]:
    result = inferrer(problems.observations, seed=self.train_config.seed + 1)
    rmse = rmse_per_step(result.mean, problems.theta)[-1]
    return dict(zip(self.simulator.parameter_names, map(float, rmse)))

  def train(self, stop_at_step: Optional[int] = None) -> TrainingResult:
    """Runs (or resumes) meta-training to `train_config.total_steps`.

    Args:
      stop_at_step: stop (with a checkpoint) once this step is reached, e.g. to time-box a session;
        running `train()` again later continues exactly where it stopped.
    """
    cfg = self.train_config
    data_start = time.time()
    train_problems = data_lib.generate_problems(
        self.simulator, cfg.num_problems, cfg.num_obs, cfg.seed, data_lib.TRAIN_STREAM)
    validation_problems = data_lib.generate_problems(
        self.simulator, cfg.num_validation_problems, cfg.num_obs, cfg.seed,
        data_lib.VALIDATION_STREAM)
    data_seconds = time.time() - data_start
    logging.info("generated %d training and %d validation problems in %.1fs", cfg.num_problems,
                 cfg.num_validation_problems, data_seconds)

    previous_seconds = 0.0
    if self.manager.latest_checkpoint:
      self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
      previous_seconds = self.workdir.read_summary().get("train_seconds", 0.0)
      logging.info("resumed from %s at step %d", self.manager.latest_checkpoint, self.step)
    else:
      self.machine.adapt(train_problems.theta, train_problems.observations)

    theta_all = tf.constant(train_problems.theta)
    observations_all = tf.constant(train_problems.observations)
    inferrer = Inferrer(self.machine, batch_size=cfg.num_validation_problems)
    total = cfg.total_steps
    stop = min(total, stop_at_step) if stop_at_step is not None else total
    start_time, start_step = time.time(), self.step
    loss = float("nan")
    validation: Dict[str, float] = {}
    while self.step < stop:
      loss = float(self._train_step(theta_all, observations_all))
      step = self.step
      if not np.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss} at step {step}; lower the learning "
                                 "rate or the update bound")
      if step % self.log_every == 0 or step == stop:
        elapsed = time.time() - start_time
        rate = (step - start_step) / max(elapsed, 1e-9)
        logging.info("step %d/%d loss %.4f  %.1f steps/s  ETA %.0fs", step, total, loss, rate,
                     (total - step) / max(rate, 1e-9))
      if step % cfg.validate_every == 0 or step == stop:
        validation = self._validate(inferrer, validation_problems)
        logging.info("step %d validation RMSE(mu_T): %s", step,
                     ", ".join(f"{k}={v:.4f}" for k, v in validation.items()))
      if step % cfg.checkpoint_every == 0 or step == stop:
        self.manager.save(checkpoint_number=step)
        self.workdir.write_summary({"steps": step, "data_seconds": data_seconds,
                                    "train_seconds": previous_seconds + time.time() - start_time})
    train_seconds = previous_seconds + time.time() - start_time
    result = TrainingResult(self.step, loss, validation, train_seconds)
    self.workdir.write_summary({**result._asdict(), "data_seconds": data_seconds})
    return result


def load_machine(workdir: str, checkpoint: Optional[str] = None) -> InferenceMachine:
  """Rebuilds the machine of a workdir and restores its latest (or the given) checkpoint."""
  run = Workdir(workdir)
  machine_config, _ = run.read_config()
  machine = InferenceMachine(get_simulator(machine_config.simulator), machine_config)
  path = checkpoint or tf.train.latest_checkpoint(run.checkpoints)
  if path is None:
    raise FileNotFoundError(f"no checkpoint in {run.checkpoints}: train first")
  tf.train.Checkpoint(machine=machine).restore(path).expect_partial()
  return machine
