"""Meta-training: a tf.data input pipeline, a compiled (optionally distributed) Adam step with
BPTT, validation, TensorBoard summaries and checkpoints that resume exactly."""

from __future__ import annotations

import functools
import os
import shutil
import time
from typing import Dict, List, NamedTuple, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from alfi_tf.training import data as data_lib
from alfi_tf.model import losses
from alfi_tf.training import distribute, pipeline
from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.metrics import rmse_per_step
from alfi_tf.model.inference import Inferrer
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.model.normalization import Moments
from alfi_tf.simulators import NumpySimulator, get_simulator
from alfi_tf.workdir import Workdir, restore_checkpoint


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
  """Owns the machine, optimizer, input pipeline and checkpoints of one workdir.

  Args:
    machine_config: architecture and simulation budget.
    train_config: meta-training settings.
    workdir: run directory; an existing one must hold the same configuration and is resumed.
    jit_compile: compile each replica's forward and backward pass with XLA (TF-native simulators).
    log_every: steps between progress lines.
    strategy: a `tf.distribute.Strategy` (see `alfi_tf.training.distribute`); default: one device. The
      global batch is split evenly across its replicas. With one replica a run is bit-for-bit
      reproducible; with several, each replica's simulations use their own seed.
    data_workers: processes that generate a numpy simulator's problems (0 or 1: in-process).
    data_dir: where `data_source='disk'` keeps its problem store, default `workdir/data`.
  """

  def __init__(self, machine_config: MachineConfig, train_config: TrainConfig, workdir: str,
               jit_compile: bool = False, log_every: int = 100,
               strategy: Optional[tf.distribute.Strategy] = None, data_workers: int = 0,
               data_dir: Optional[str] = None):
    self.machine_config = machine_config
    self.train_config = train_config
    self.strategy = strategy or tf.distribute.get_strategy()
    self.replicas = self.strategy.num_replicas_in_sync
    if train_config.batch_size % self.replicas:
      raise ValueError(f"batch_size ({train_config.batch_size}) must be a multiple of the number "
                       f"of replicas ({self.replicas}): the global batch is split evenly")
    if data_workers < 0:
      raise ValueError(f"data_workers must be >= 0, got {data_workers}")
    self.simulator = get_simulator(machine_config.simulator)
    if jit_compile and isinstance(self.simulator, NumpySimulator):
      raise ValueError(f"jit_compile needs a TF-native simulator; {self.simulator.name!r} runs "
                       "numpy code (tf.numpy_function), which XLA cannot compile")
    self.is_chief = distribute.is_chief(self.strategy)
    self.workdir = Workdir(workdir)
    if self.is_chief:
      self.workdir.claim(machine_config, train_config)
    else:   # the chief records the run; the others only refuse a mismatching one
      self.workdir.check(machine_config, train_config)
    self.log_every = log_every
    self.data_workers = data_workers
    self.data_dir = data_dir or self.workdir.data
    with self.strategy.scope():
      # Initial weights derive from the run's seed too (Keras initialisers draw from the global
      # seed).
      keras.utils.set_random_seed(train_config.seed)
      self.machine = InferenceMachine(self.simulator, machine_config)
      schedule = keras.optimizers.schedules.CosineDecay(
          train_config.learning_rate, decay_steps=train_config.total_steps,
          alpha=train_config.final_learning_rate_fraction)
      # No clipnorm here: Keras would clip each replica's gradient before summing them; the
      # step clips the summed gradient instead (`_replica_step`).
      self.optimizer = keras.optimizers.Adam(schedule)
      self.optimizer.build(self.machine.trainable_variables)
    self.checkpoint = tf.train.Checkpoint(machine=self.machine, optimizer=self.optimizer)
    # Every worker saves (saving may involve collectives), but only the chief into the run; the
    # others write scratch copies that are deleted after each save.
    self._scratch = (None if self.is_chief else
                     self.workdir.worker_scratch(distribute.worker_name(self.strategy)))
    self.manager = tf.train.CheckpointManager(self.checkpoint, self._scratch or
                                              self.workdir.checkpoints, max_to_keep=3)
    # One compiled optimisation step on a global batch (also used by the benchmarks).
    self.train_step = tf.function(self._distributed_step)
    self._gradients = tf.function(self._replica_gradients, jit_compile=jit_compile)
    self.writer = (tf.summary.create_file_writer(self.workdir.tensorboard) if self.is_chief
                   else tf.summary.create_noop_writer())

  @property
  def step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  def _loss(self, theta: tf.Tensor, observations: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    cfg = self.train_config
    return losses.meta_loss(self.machine, theta, observations, seed, cfg.loss, cfg.time_weights,
                            cfg.beta)

  def _replica_gradients(self, theta: tf.Tensor, observations: tf.Tensor,
                         seed: tf.Tensor) -> Tuple[tf.Tensor, List[tf.Tensor]]:
    """This replica's share of the loss (its mean loss / replicas) and its gradients."""
    variables = self.machine.trainable_variables
    with tf.GradientTape() as tape:
      loss = self._loss(theta, observations, seed) / self.replicas
    return loss, tape.gradient(loss, variables)

  def _replica_step(self, theta: tf.Tensor, observations: tf.Tensor,
                    seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Runs on each replica: its slice of the global batch, summed gradients, one Adam update."""
    context = tf.distribute.get_replica_context()
    if self.replicas > 1:
      replica = context.replica_id_in_sync_group
      share = self.train_config.batch_size // self.replicas
      theta = theta[replica * share:(replica + 1) * share]
      observations = observations[replica * share:(replica + 1) * share]
      seed = tf.random.experimental.stateless_fold_in(seed, replica)
    loss, gradients = self._gradients(theta, observations, seed)
    if self.replicas > 1:
      gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
    norm = tf.linalg.global_norm(gradients)
    if self.train_config.grad_clip_norm:
      gradients, _ = tf.clip_by_global_norm(gradients, self.train_config.grad_clip_norm,
                                            use_norm=norm)
    if self.replicas > 1:   # Keras sums the replicas' gradients again when it applies them
      gradients = [gradient / self.replicas for gradient in gradients]
    self.optimizer.apply_gradients(zip(gradients, self.machine.trainable_variables))
    return loss, norm

  def _distributed_step(self, theta: tf.Tensor, observations: tf.Tensor,
                        seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """One Adam step on a global batch.

    Args:
      theta: `[B, d]` true parameters of the batch's problems.
      observations: `[B, n, d_x]` their observations.
      seed: int32 `[2]`, the seed of the machine's proposals and simulations at this step.

    Returns:
      The batch's loss and the global norm of its (summed, unclipped) gradients.
    """
    loss, norm = self.strategy.run(self._replica_step, args=(theta, observations, seed))
    return (self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            self.strategy.reduce(tf.distribute.ReduceOp.MEAN, norm, axis=None))

  def _validate(self, inferrer: Inferrer, problems: data_lib.Problems) -> np.ndarray:
    """RMSE of `mu_t` on the validation problems at every step, `[T, d]`."""
    result = inferrer(problems.observations, seed=self.train_config.seed + 1)
    return rmse_per_step(result.trajectory_mean, problems.theta)

  def _restore(self) -> bool:
    """Restores the newest readable checkpoint (see `workdir.restore_checkpoint`)."""
    path = restore_checkpoint(self.checkpoint, self.workdir.checkpoints)
    if path is not None:
      logging.info("resumed from %s at step %d", path, self.step)
    return path is not None

  def _save(self, step: int) -> None:
    self.manager.save(checkpoint_number=step)
    if self._scratch:
      shutil.rmtree(self._scratch, ignore_errors=True)

  def _write_scalars(self, scalars: Dict[str, float]) -> None:
    with self.writer.as_default(step=self.step):
      for name, value in scalars.items():
        tf.summary.scalar(name, value)

  def _training_data(self, executor) -> Tuple[Optional[data_lib.Problems],
                                              Optional[data_lib.ProblemStore]]:
    """The fixed meta-training set: in memory, or (`disk`) as a store on disk."""
    cfg = self.train_config
    if cfg.data_source == "disk":
      store = data_lib.ProblemStore(os.path.join(self.data_dir, "train"))
      return None, store.create(self.simulator, cfg.num_problems, cfg.num_obs, cfg.seed,
                                data_lib.TRAIN_STREAM, executor=executor)
    return data_lib.generate_problems(self.simulator, cfg.num_problems, cfg.num_obs, cfg.seed,
                                      data_lib.TRAIN_STREAM, executor=executor), None

  def _adapt(self, problems: Optional[data_lib.Problems],
             store: Optional[data_lib.ProblemStore]) -> None:
    """Standardisation statistics from the meta-training set (one streaming pass over a store)."""
    if problems is not None:
      self.machine.adapt(problems.theta, problems.observations)
      return
    per_chunk = [self.machine.problem_moments(chunk.theta, chunk.observations)
                 for chunk in store.iterate_chunks()]   # small: two Moments per chunk
    self.machine.set_moments(*(functools.reduce(Moments.merge, moments)
                               for moments in zip(*per_chunk)))

  def _time_to_save(self, minutes_since_save: float) -> bool:
    """The time-based checkpoint cadence. Workers' clocks differ, but all must save together:
    in a multi-worker run they save when any of them is due."""
    minutes = self.train_config.checkpoint_every_minutes
    due = 0 < minutes <= minutes_since_save
    if minutes > 0 and distribute.task(self.strategy) is not None:
      votes = self.strategy.run(lambda: tf.constant(int(due)))
      return bool(self.strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None) > 0)
    return due

  def train(self, stop_at_step: Optional[int] = None) -> TrainingResult:
    """Runs (or resumes) meta-training to `train_config.total_steps`.

    Args:
      stop_at_step: stop (with a checkpoint) once this step is reached, e.g. to time-box a session;
        running `train()` again later continues exactly where it stopped.
    """
    executor = data_lib.worker_pool(self.simulator, self.data_workers)
    try:
      return self._train(stop_at_step, executor)
    finally:
      if executor is not None:
        executor.shutdown(cancel_futures=True)

  def _train(self, stop_at_step: Optional[int], executor) -> TrainingResult:
    cfg = self.train_config
    data_start = time.time()
    train_problems, store = self._training_data(executor)
    validation_problems = data_lib.generate_problems(
        self.simulator, cfg.num_validation_problems, cfg.num_obs, cfg.seed,
        data_lib.VALIDATION_STREAM)
    data_seconds = time.time() - data_start
    logging.info("generated %d training (%s) and %d validation problems in %.1fs",
                 cfg.num_problems, cfg.data_source, cfg.num_validation_problems, data_seconds)

    previous_seconds = 0.0
    if self._restore():
      previous_seconds = self.workdir.read_summary().get("train_seconds", 0.0)
    else:
      self._adapt(train_problems, store)
    batches = iter(pipeline.training_batches(cfg, self.simulator, self.step, train_problems,
                                             store, executor))
    del train_problems   # the pipeline holds what it needs

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
      loss_tensor, gradient_norm = self.train_step(*next(batches))
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
      if self.is_chief and (step % cfg.validate_every == 0 or step == stop):
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
          or self._time_to_save(minutes_since_save)):
        self._save(step)
        last_save_time = time.time()
        if self.is_chief:
          self.workdir.write_summary({"steps": step, "data_seconds": data_seconds,
                                      "train_seconds": previous_seconds + last_save_time
                                      - start_time})
    self.writer.flush()
    train_seconds = previous_seconds + time.time() - start_time
    result = TrainingResult(self.step, loss, validation, train_seconds)
    if self.is_chief:
      self.workdir.write_summary({**result._asdict(), "data_seconds": data_seconds,
                                  "replicas": self.replicas})
    return result

