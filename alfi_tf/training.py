"""Meta-training: seeded data, a compiled Adam step with BPTT, validation and checkpoints."""

from __future__ import annotations

import os
import time
from typing import Dict, NamedTuple, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from alfi_tf import data as data_lib
from alfi_tf import losses
from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.evaluation.metrics import rmse_per_step
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
    # One compiled optimisation step on the full training arrays (also used by the benchmarks).
    self.train_step = tf.function(self._step, jit_compile=jit_compile)
    self.writer = tf.summary.create_file_writer(self.workdir.tensorboard)

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
    # argsort of uniforms rather than stateless_shuffle, which XLA cannot compile.
    order = tf.argsort(tf.random.stateless_uniform([cfg.num_problems], seed=epoch_seed))
    # A gather, not a slice: XLA makes a slice's start a compile-time constant, which recompiled the
    # whole step at every step.
    return tf.gather(order, position * cfg.batch_size + tf.range(cfg.batch_size))

  def _step(self, theta_all: tf.Tensor,
            observations_all: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """One Adam step; returns the loss and the global norm of the (unclipped) gradients."""
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
    return loss, tf.linalg.global_norm(gradients)

  def _validate(self, inferrer: Inferrer, problems: data_lib.Problems) -> np.ndarray:
    """RMSE of `mu_t` on the validation problems at every step, `[T, d]`."""
    result = inferrer(problems.observations, seed=self.train_config.seed + 1)
    return rmse_per_step(result.mean, problems.theta)

  def _restore(self) -> bool:
    """Restores the newest readable checkpoint; an unreadable one is reported and skipped."""
    for path in reversed(self.manager.checkpoints):
      try:
        self.checkpoint.restore(path).assert_existing_objects_matched()
      except (tf.errors.OpError, AssertionError, IndexError, KeyError, ValueError) as error:
        logging.error("checkpoint %s is corrupted or partial (%s: %s); trying an older one", path,
                      type(error).__name__, str(error).splitlines()[0][:200])
        continue
      logging.info("resumed from %s at step %d", path, self.step)
      return True
    if self.manager.checkpoints:
      raise RuntimeError(f"no readable checkpoint in {self.workdir.checkpoints}; move the directory "
                         "away to start over")
    return False

  def _write_scalars(self, scalars: Dict[str, float]) -> None:
    with self.writer.as_default(step=self.step):
      for name, value in scalars.items():
        tf.summary.scalar(name, value)

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
    if self._restore():
      previous_seconds = self.workdir.read_summary().get("train_seconds", 0.0)
    else:
      self.machine.adapt(train_problems.theta, train_problems.observations)

    theta_all = tf.constant(train_problems.theta)
    observations_all = tf.constant(train_problems.observations)
    inferrer = Inferrer(self.machine, batch_size=cfg.num_validation_problems)
    names = self.simulator.parameter_names
    mc = self.machine_config
    simulations_per_step = cfg.batch_size * mc.num_steps * mc.num_samples * mc.num_simulated_obs
    total = cfg.total_steps
    stop = min(total, stop_at_step) if stop_at_step is not None else total
    start_time, start_step = time.time(), self.step
    last_log_time, last_log_step, last_save_time = start_time, start_step, start_time
    loss = float("nan")
    validation: Dict[str, float] = {}
    while self.step < stop:
      loss_tensor, gradient_norm = self.train_step(theta_all, observations_all)
      loss, step, now = float(loss_tensor), self.step, time.time()
      if not np.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss} at step {step}; lower the learning "
                                 "rate or the update bound")
      if step % self.log_every == 0 or step == stop:
        rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
        last_log_time, last_log_step = now, step
        logging.info("step %d/%d loss %.4f  %.1f steps/s  %.3g simulations/s  ETA %.0fs", step,
                     total, loss, rate, rate * simulations_per_step, (stop - step) / max(rate, 1e-9))
        self._write_scalars({
            "train/loss": loss, "train/gradient_norm": float(gradient_norm),
            "train/learning_rate": float(self.optimizer.learning_rate),
            "train/steps_per_second": rate,
            "train/simulations_per_second": rate * simulations_per_step})
      if step % cfg.validate_every == 0 or step == stop:
        rmse = self._validate(inferrer, validation_problems)
        validation = dict(zip(names, map(float, rmse[-1])))
        logging.info("step %d validation RMSE(mu_T): %s", step,
                     ", ".join(f"{k}={v:.4f}" for k, v in validation.items()))
        scalars = {f"validation/rmse_T/{name}": value for name, value in validation.items()}
        scalars.update({f"validation/rmse_t{t + 1:02d}/{name}": float(rmse[t, i])
                        for t in range(rmse.shape[0]) for i, name in enumerate(names)})
        self._write_scalars(scalars)
      minutes_since_save = (now - last_save_time) / 60.0
      if (step % cfg.checkpoint_every == 0 or step == stop
          or 0 < cfg.checkpoint_every_minutes <= minutes_since_save):
        self.manager.save(checkpoint_number=step)
        last_save_time = time.time()
        self.workdir.write_summary({"steps": step, "data_seconds": data_seconds,
                                    "train_seconds": previous_seconds + last_save_time - start_time})
    self.writer.flush()
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
