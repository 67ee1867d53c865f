"""The Trainer: meta-training of one workdir, scheduled around a compiled (optionally distributed)
Adam step: progress lines, TensorBoard scalars, validation, checkpoints, the run's summary and, at
the end, the recalibration of the answer's std."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, Iterator, NamedTuple, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.metrics import rmse_per_step
from alfi_tf.model import losses
from alfi_tf.model.arguments import check_jit_compile
from alfi_tf.model.inference import Inferrer
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.model.proposals import FAMILIES
from alfi_tf.simulators import get_simulator
from alfi_tf.simulators.base import SimulatorError, simulator_error_message
from alfi_tf.training import data as data_lib
from alfi_tf.training import distribute, pipeline
from alfi_tf.training.calibration import calibrate_run
from alfi_tf.training.checkpoints import CheckpointKeeper
from alfi_tf.training.step import check_global_batch, make_train_step
from alfi_tf.workdir import Workdir


def set_global_seed(seed: int) -> None:
  """Seeds Python, numpy, TensorFlow and Keras: the initial weights of a machine built afterwards
  (Keras initialisers draw from the global seed) derive from `seed`. Call it with the run's seed
  before constructing a `Trainer`.

  Any seed of `config.SEED_RANGE`, negative ones too: Keras takes [0, 2**32), into which they are
  mapped one to one (modulo 2**32).
  """
  keras.utils.set_random_seed(seed % 2 ** 32)


@contextlib.contextmanager
def _simulator_failures_named(stage: str) -> Iterator[None]:
  """Turns a numpy simulator's failure, wrapped by TensorFlow, into a `SimulatorError` naming
  `stage`; other errors pass unchanged."""
  try:
    yield
  except tf.errors.OpError as error:
    message = simulator_error_message(error)
    if message is None:
      raise
    raise SimulatorError(f"{stage}: {message}") from None


class SessionProgbar(keras.utils.Progbar):
  """A `keras.utils.Progbar` of a session that starts at step `first_step` (a resumed run): the
  bar shows the run's steps, its time per step and ETA count only the session's own.

  Keras' estimate divides the time since the bar was made by the step number, so a session
  resumed at step 90,000 of 100,000 would show a time per step and an ETA about ten times too
  small, and always count its first step (which traces the graph).
  """

  def __init__(self, target: int, first_step: int, **kwargs):
    super().__init__(target, **kwargs)
    self.first_step = first_step

  def _estimate_step_duration(self, current, now):
    return super()._estimate_step_duration(current - self.first_step, now)


class TrainingResult(NamedTuple):
  """Summary of a finished run, also written to `DIR/training_summary.json`.

  `train_seconds` is the wall time of the optimisation steps (with validation and checkpoints),
  summed over resumed sessions; data generation is reported separately as `data_seconds`.
  """

  steps: int
  final_loss: float
  validation_rmse: Dict[str, float]
  train_seconds: float


class _Clock:
  """Bookkeeping of one `train()` session: step rates, time since the last checkpoint, and the
  run's totals (summed over resumed sessions): training time, problems redrawn and simulated sets
  masked out because the simulator returned NaN/inf."""

  def __init__(self, step: int, data_seconds: float, data_redrawn: int,
               previous: Dict[str, float]):
    self._data_seconds, self._data_redrawn = data_seconds, data_redrawn
    self._previous_seconds = previous.get("train_seconds", 0.0)
    #: Online problems redrawn and simulated sets masked, over the run's steps so far.
    self.online_redrawn = int(previous.get("online_redrawn_problems", 0))
    self.masked_samples = int(previous.get("masked_samples", 0))
    self._start = self._last_rate = self._last_save = time.time()
    self._last_rate_step = step

  def count(self, redrawn: int, masked: int) -> None:
    """Adds one step's online redraws and masked samples."""
    self.online_redrawn += redrawn
    self.masked_samples += masked

  @property
  def redrawn(self) -> int:
    """Problems redrawn in the run: the fixed sets' and the online batches'."""
    return self._data_redrawn + self.online_redrawn

  def record(self) -> Dict[str, float]:
    """The totals for `training_summary.json`."""
    return {"data_seconds": self._data_seconds, "train_seconds": self.train_seconds(),
            "redrawn_problems": self.redrawn, "online_redrawn_problems": self.online_redrawn,
            "masked_samples": self.masked_samples}

  def steps_per_second(self, step: int, now: float) -> float:
    """The rate since the previous call (or the session's start)."""
    rate = (step - self._last_rate_step) / max(now - self._last_rate, 1e-9)
    self._last_rate, self._last_rate_step = now, step
    return rate

  def minutes_since_save(self, now: float) -> float:
    return (now - self._last_save) / 60.0

  def saved(self) -> None:
    self._last_save = time.time()

  def train_seconds(self) -> float:
    return self._previous_seconds + time.time() - self._start


class Trainer:
  """Meta-trains the machine of one workdir: owns the machine, optimizer and training schedule.

  Call `set_global_seed(train_config.seed)` first: the machine's initial weights derive from the
  global seed when it is built here, so two runs with the same settings start alike.

  This is the main training path rather than Keras' `machine.fit`: a run resumes exactly (the
  optimizer's state is checkpointed and the input pipeline restarts at the restored step), the
  replicas' gradients are summed and then clipped once (Keras' `clipnorm` clips each replica's), and
  every step's simulations use a stateless seed derived from the run's seed and the step.

  Args:
    machine_config: architecture and simulation budget.
    train_config: meta-training settings.
    workdir: run directory; an existing one must hold the same configuration and is resumed.
    jit_compile: compile each replica's forward and backward pass with XLA (TF-native simulators).
    log_every: steps between progress lines (absl logging) and TensorBoard scalars.
    strategy: a `tf.distribute.Strategy` (see `alfi_tf.training.distribute`); default: one device.
      The global batch is split evenly across its replicas. With one replica a run is bit-for-bit
      reproducible; with several, each replica's simulations use their own seed.
    data_workers: processes that generate a numpy simulator's problems (0 or 1: in-process).
    data_dir: where `data_source='disk'` keeps its problem store, default `workdir/data`.
    progress_bar: show a `keras.utils.Progbar` of the steps, the loss and the validation RMSE: the
      progress a notebook or script user sees without configuring absl logging (the binaries log
      progress lines instead).
  """

  def __init__(self, machine_config: MachineConfig, train_config: TrainConfig, workdir: str,
               jit_compile: bool = False, log_every: int = 100,
               strategy: Optional[tf.distribute.Strategy] = None, data_workers: int = 0,
               data_dir: Optional[str] = None, progress_bar: bool = True):
    self.machine_config = machine_config
    self.train_config = train_config
    self.strategy = strategy or tf.distribute.get_strategy()
    self.replicas = self.strategy.num_replicas_in_sync
    check_global_batch(train_config.batch_size, self.replicas)
    if data_workers < 0:
      raise ValueError(f"data_workers must be >= 0, got {data_workers}")
    self.simulator = get_simulator(machine_config.simulator)
    check_jit_compile(bool(jit_compile), self.simulator)
    # Refused before the workdir is claimed:
    losses.check_loss_for(FAMILIES[machine_config.proposal], train_config.loss)
    pipeline.require_memory_for(train_config, self.simulator)
    self.workdir = Workdir(workdir)
    self.data_dir = data_dir or self.workdir.data
    if train_config.data_source == "disk":
      pipeline.problem_store(self.data_dir).require_writable()
    self.is_chief = distribute.is_chief(self.strategy)
    if self.is_chief:
      self.workdir.claim(machine_config, train_config, self.simulator)
    else:   # the chief records the run; the others only refuse a mismatching one
      self.workdir.check(machine_config, train_config)
    self.log_every = log_every
    self.progress_bar = progress_bar
    self.data_workers = data_workers
    with self.strategy.scope():
      self.machine = InferenceMachine(self.simulator, machine_config)
      schedule = keras.optimizers.schedules.CosineDecay(
          train_config.learning_rate, decay_steps=train_config.total_steps,
          alpha=train_config.final_learning_rate_fraction)
      # No clipnorm: the step clips the replicas' summed gradient (`make_train_step`).
      self.optimizer = keras.optimizers.Adam(schedule)
      self.optimizer.build(self.machine.trainable_variables)
    self.checkpoints = CheckpointKeeper(self.workdir, self.strategy, self.machine, self.optimizer,
                                        train_config.checkpoint_every,
                                        train_config.checkpoint_every_minutes)
    # One compiled optimisation step on a global batch (also used by the benchmarks).
    self.train_step = make_train_step(self.machine, self.optimizer, self.strategy,
                                      self._loss_and_masked_samples, train_config.batch_size,
                                      train_config.grad_clip_norm, jit_compile)
    self.writer = tf.summary.create_noop_writer()   # the chief's event file opens in `train`

  @property
  def step(self) -> int:
    return int(self.optimizer.iterations.numpy())

  def meta_loss(self, theta: tf.Tensor, observations: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The run's meta-loss (`losses.meta_loss` with its settings) of a batch of problems.

    Args:
      theta: `[batch, d]` true parameters.
      observations: `[batch, n, d_x]` their observations.
      seed: int32 `[2]`, the seed of the machine's proposals and simulations.
    """
    return self._loss_and_masked_samples(theta, observations, seed)[0]

  def _loss_and_masked_samples(self, theta: tf.Tensor, observations: tf.Tensor,
                               seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """`meta_loss` and how many simulated sets of the run failed (`step.LossFn`)."""
    cfg = self.train_config
    trajectory = self.machine(observations, seed=seed, training=True)
    loss = losses.trajectory_loss(self.machine, trajectory, theta, cfg.loss, cfg.time_weights,
                                  cfg.beta)
    return loss, tf.cast(tf.reduce_sum(trajectory.masked_samples), tf.float32)

  def train(self, stop_at_step: Optional[int] = None) -> TrainingResult:
    """Runs (or resumes) meta-training to `train_config.total_steps`.

    Args:
      stop_at_step: stop (with a checkpoint) once this step is reached, e.g. to time-box a session;
        running `train()` again later continues exactly where it stopped.

    Raises:
      RuntimeError: another process is training in the same workdir.
      FloatingPointError: the loss became NaN or inf.
    """
    # One training process per run: a second one is refused, naming the holder of the lock.
    with self.workdir.lock() if self.is_chief else contextlib.nullcontext():
      if self.is_chief:
        # Between the claim and this lock another process may have given an attempt without
        # progress other settings: this run's checkpoints must not go under its config.
        self.workdir.check(self.machine_config, self.train_config)
        self.writer = tf.summary.create_file_writer(self.workdir.tensorboard)
      executor = data_lib.worker_pool(self.simulator, self.data_workers)
      try:
        return self._train(stop_at_step, executor)
      finally:
        if executor is not None:
          executor.shutdown(cancel_futures=True)

  def _train(self, stop_at_step: Optional[int], executor) -> TrainingResult:
    cfg = self.train_config
    stop = cfg.total_steps if stop_at_step is None else min(cfg.total_steps, stop_at_step)
    batches, validation_problems, clock = self._start(executor)
    first_step = self.step
    inferrer = Inferrer(self.machine, batch_size=cfg.num_validation_problems)
    loss = float("nan")
    validation: Dict[str, float] = {}
    bar = self._progress_bar(first_step, stop)
    while self.step < stop:
      loss_tensor, gradient_norm = self._step(batches, clock)
      loss, step, now = float(loss_tensor), self.step, time.time()
      if not (np.isfinite(loss) and np.isfinite(float(gradient_norm))):
        # Raised before this step is checkpointed: the last checkpoint holds finite weights.
        raise FloatingPointError(
            f"training loss became {loss} (gradient norm {float(gradient_norm)}) at step {step} "
            f"(simulator {self.simulator.spec!r}). "
            "Either the simulator returned NaN/inf for some parameters of its prior (check it "
            "there: the machine samples anywhere in the prior's support), or the optimisation "
            "diverged (lower --learning_rate or --bound); the last checkpoint is intact")
      if step % self.log_every == 0 or step == stop:
        self._log_progress(step, stop, loss, float(gradient_norm), clock, now)
      if self.is_chief and (step % cfg.validate_every == 0 or step == stop):
        validation = self._validate(inferrer, validation_problems)
      if self.checkpoints.due(step, step == stop, clock.minutes_since_save(now)):
        self._save(step, clock, loss)
      if bar is not None:
        faults = [("redrawn", clock.redrawn), ("masked", clock.masked_samples)]
        bar.update(step, [("loss", loss)] + [(f"val_rmse/{k}", v) for k, v in validation.items()]
                   + [(name, count) for name, count in faults if count])
    self.writer.flush()
    result = self._finish(first_step, loss, validation, clock,
                          lambda: self._validate(inferrer, validation_problems))
    if self.is_chief and self.step == cfg.total_steps:
      with _simulator_failures_named("recalibrating the std on fresh problems"):
        calibrate_run(self.workdir, self.machine, cfg, self.checkpoints.manager.latest_checkpoint)
    return result

  def _finish(self, first_step: int, loss: float, validation: Dict[str, float], clock: _Clock,
              validate: Callable[[], Dict[str, float]]) -> TrainingResult:
    """The session's result, recorded in the run's summary by the chief.

    A session that trained no step resumed a run already at its end (say to recalibrate it): its
    summary stands as it was. If that summary is incomplete (the run was killed after saving its
    last checkpoint, before writing its summary), it is completed: the loss of the last step, as
    the checkpoint's summary recorded it, and the validation, which is the same on every call.
    """
    if self.step == first_step == 0:
      # Nothing trained yet (`train(stop_at_step=0)` on a new run): nothing to record, and no
      # summary that would pin the run's settings as if it had made progress.
      return TrainingResult(0, loss, validation, clock.train_seconds())
    previous = self.workdir.read_summary()
    if self.step == first_step:
      if all(field in previous for field in TrainingResult._fields):
        return TrainingResult(*(previous[field] for field in TrainingResult._fields))
      if self.is_chief:
        loss, validation = previous.get("final_loss", loss), validate()
    result = TrainingResult(self.step, loss, validation, clock.train_seconds())
    if self.is_chief:
      self.workdir.write_summary({**result._asdict(), **clock.record(),
                                  "replicas": self.replicas})
    return result

  def _progress_bar(self, first_step: int, stop: int) -> Optional[keras.utils.Progbar]:
    """A bar from `first_step` to `stop` showing the current loss and validation RMSE (not
    averages), or None."""
    if not (self.progress_bar and self.is_chief):
      return None
    current = (["loss", "redrawn", "masked"]
               + [f"val_rmse/{name}" for name in self.simulator.parameter_names])
    return SessionProgbar(stop, first_step, stateful_metrics=current, unit_name="step")

  def _step(self, batches, clock: _Clock) -> Tuple[tf.Tensor, tf.Tensor]:
    """One optimisation step, its redraws and masked samples counted on `clock`; a numpy
    simulator's failure is reported with the step it broke."""
    with _simulator_failures_named(f"training step {self.step + 1}"):
      theta, observations, seed, redrawn = next(batches)
      loss, gradient_norm, masked = self.train_step(theta, observations, seed)
    clock.count(int(redrawn), int(masked))
    return loss, gradient_norm

  def _start(self, executor) -> Tuple[Iterator[Tuple[tf.Tensor, tf.Tensor, tf.Tensor]],
                                      data_lib.Problems, _Clock]:
    """A session's data, its restored (or freshly standardised) state and input pipeline.

    Returns:
      The batches from the current step on, the validation problems and the session's clock.
    """
    cfg = self.train_config
    data_start = time.time()
    with _simulator_failures_named("generating the meta-training and validation sets"):
      data = pipeline.meta_training_data(cfg, self.simulator, self.data_dir, executor)
    data_seconds = time.time() - data_start
    logging.info("generated %d training (%s) and %d validation problems in %.1fs",
                 cfg.num_problems, cfg.data_source, cfg.num_validation_problems, data_seconds)
    previous: Dict[str, float] = {}
    if self.checkpoints.restore() is not None:
      previous = self.workdir.read_summary()
    else:
      pipeline.adapt_machine(self.machine, data)
    # The pipeline holds what it needs of the meta-training set; the rest goes with `data`.
    batches = iter(pipeline.training_batches(cfg, self.simulator, self.step, data.problems,
                                             data.store, executor))
    if data.store is not None:   # a file corrupted in place shows only when it is read
      batches = data.store.with_corruption_named(batches)
    clock = _Clock(self.step, data_seconds, data.redrawn, previous)
    if data.redrawn:
      logging.warning("simulator %r returned NaN/inf observations for %d problems drawn from its "
                      "prior; they were drawn again", self.simulator.spec, data.redrawn)
    return batches, data.validation, clock

  def _log_progress(self, step: int, stop: int, loss: float, gradient_norm: float,
                    clock: _Clock, now: float) -> None:
    """A progress line and the training scalars."""
    mc = self.machine_config
    rate = clock.steps_per_second(step, now)
    simulations = rate * (self.train_config.batch_size * mc.num_steps * mc.num_samples
                          * mc.num_simulated_obs)
    # Only a simulator that returned NaN/inf adds its counts to the line.
    faults = (f"  redrawn problems {clock.redrawn}  masked samples {clock.masked_samples}"
              if clock.redrawn or clock.masked_samples else "")
    logging.info("step %d/%d loss %.4f  %.1f steps/s  %.3g simulations/s  ETA %.0fs%s", step,
                 self.train_config.total_steps, loss, rate, simulations,
                 (stop - step) / max(rate, 1e-9), faults)
    self._write_scalars({
        "train/loss": loss, "train/gradient_norm": gradient_norm,
        "train/learning_rate": float(self.optimizer.learning_rate),
        "train/steps_per_second": rate, "train/simulations_per_second": simulations,
        "train/redrawn_problems": clock.redrawn, "train/masked_samples": clock.masked_samples})

  def _validate(self, inferrer: Inferrer, problems: data_lib.Problems) -> Dict[str, float]:
    """Logs and records the RMSE of `mu_t` on the validation problems at every step `t`.

    Returns:
      The RMSE of the final `mu_T` per parameter.
    """
    # Single runs whatever the machine's answer_starts: training is measured on what it trains.
    result = inferrer(problems.observations, seed=self.train_config.seed + 1, num_starts=1)
    rmse = rmse_per_step(result.trajectory_mean, problems.theta)   # [T, d]
    names = self.simulator.parameter_names
    validation = dict(zip(names, map(float, rmse[-1])))
    logging.info("step %d validation RMSE(mu_T): %s", self.step,
                 ", ".join(f"{k}={v:.4f}" for k, v in validation.items()))
    scalars = {f"validation/rmse_T/{name}": value for name, value in validation.items()}
    scalars.update({f"validation/rmse_t{t + 1:02d}/{name}": float(rmse[t, i])
                    for t in range(rmse.shape[0]) for i, name in enumerate(names)})
    self._write_scalars(scalars)
    return validation

  def _save(self, step: int, clock: _Clock, loss: float) -> None:
    """A checkpoint (on every worker), and the chief's summary of the run so far (with the loss of
    `step`, the final loss should the run be killed before its own summary)."""
    self.checkpoints.save(step)
    clock.saved()
    if self.is_chief:
      self.workdir.write_summary({"steps": step, "final_loss": loss, **clock.record(),
                                  "replicas": self.replicas})

  def _write_scalars(self, scalars: Dict[str, float]) -> None:
    with self.writer.as_default(step=self.step):
      for name, value in scalars.items():
        tf.summary.scalar(name, value)
