"""Meta-training: the loss goes down, checkpoints resume exactly, workdirs are guarded."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from alfi_tf.training import data as data_lib
from alfi_tf.config import SEED_RANGE, MachineConfig, TrainConfig
from alfi_tf.training import Trainer, set_global_seed
from alfi_tf.training.calibration import warn_if_unfinished
from alfi_tf.workdir import Workdir, load_machine
from tests.binary_runs import ROOT, binary_env

TINY_MACHINE = MachineConfig(simulator="poisson", num_steps=3, num_samples=4, num_simulated_obs=8,
                             encoder_hidden=16, encoder_out=8, aggregator_hidden=16,
                             aggregator_out=8, updater_hidden=16, lstm_units=8, bound=1.0,
                             observation_transform="log1p")
TINY_TRAIN = TrainConfig(num_problems=64, num_obs=50, epochs=20, batch_size=16,
                         learning_rate=3e-3, num_validation_problems=16, validate_every=40,
                         checkpoint_every=20, seed=3, calibration_problems=32,
                         calibration_horizon=4)


def seeded_trainer(train_config: TrainConfig, workdir: str, **kwargs) -> Trainer:
  """A Trainer of `TINY_MACHINE` whose initial weights derive from the run's seed."""
  set_global_seed(train_config.seed)
  return Trainer(TINY_MACHINE, train_config, workdir, **kwargs)


def _weights(trainer: Trainer):
  return [v.numpy() for v in trainer.machine.trainable_variables]


def _fixed_batch_loss(trainer: Trainer, problems: data_lib.Problems) -> float:
  return float(trainer.meta_loss(tf.constant(problems.theta), tf.constant(problems.observations),
                                 tf.constant([5, 6])))


@pytest.mark.parametrize("data_source", ["memory", "disk", "online"])
def test_training_reduces_the_loss(tmp_path, data_source):
  config = TrainConfig(**{**TINY_TRAIN.__dict__, "data_source": data_source})
  trainer = seeded_trainer(config, str(tmp_path / "run"), log_every=1000)
  problems = data_lib.generate_problems(trainer.simulator, 64, 50, seed=11, stream=0)
  trainer.machine.adapt(problems.theta, problems.observations)
  before = _fixed_batch_loss(trainer, problems)
  result = trainer.train()
  after = _fixed_batch_loss(trainer, problems)
  assert result.steps == TINY_TRAIN.total_steps == 80
  # A untrained machine does not move psi_0 (a prior draw): the loss must drop substantially.
  assert after < before - 1.0, (before, after)
  summary = json.load(open(tmp_path / "run" / "training_summary.json"))
  assert summary["steps"] == 80 and summary["train_seconds"] > 0
  assert set(summary["validation_rmse"]) == {"log_rate"}


@pytest.mark.parametrize("data_source", ["memory", "disk", "online"])
def test_resumed_training_matches_uninterrupted(tmp_path, data_source):
  config = TrainConfig(**{**TINY_TRAIN.__dict__, "data_source": data_source,
                          "shuffle_buffer": 24})
  straight = seeded_trainer(config, str(tmp_path / "straight"), log_every=1000)
  straight.train(stop_at_step=40)

  first = seeded_trainer(config, str(tmp_path / "resumed"), log_every=1000)
  first.train(stop_at_step=22)   # mid-epoch: the pipeline resumes inside an epoch
  assert first.step == 22
  # A fresh process-like restart: new objects, same workdir.
  second = seeded_trainer(config, str(tmp_path / "resumed"), log_every=1000)
  second.train(stop_at_step=40)
  assert second.step == 40
  for a, b in zip(_weights(straight), _weights(second)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_workdir_with_other_configuration_is_refused(tmp_path):
  seeded_trainer(TINY_TRAIN, str(tmp_path / "run"))
  # A run with progress (a first attempt without any gives way to new settings: test_workdir).
  (tmp_path / "run" / "training_summary.json").write_text("{}")
  other = TrainConfig(**{**TINY_TRAIN.__dict__, "learning_rate": 1e-4, "batch_size": 8})
  with pytest.raises(ValueError, match=r"train\.batch_size: workdir has 16, requested 8") as info:
    seeded_trainer(other, str(tmp_path / "run"))
  assert "train.learning_rate" in str(info.value)


def test_a_run_whose_config_was_replaced_before_it_started_does_not_train(tmp_path):
  trainer = seeded_trainer(TINY_TRAIN, str(tmp_path / "run"))
  # Another process, with other settings, claims the run before this one starts training.
  other = TrainConfig(**{**TINY_TRAIN.__dict__, "batch_size": 8})
  Workdir(str(tmp_path / "run")).claim(TINY_MACHINE, other)
  with pytest.raises(ValueError, match=r"train\.batch_size: workdir has 8, requested 16"):
    trainer.train(stop_at_step=1)
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_session_that_trains_no_step_records_nothing_that_pins_the_run(tmp_path):
  run = str(tmp_path / "run")
  result = seeded_trainer(TINY_TRAIN, run).train(stop_at_step=0)
  assert result.steps == 0
  assert not os.path.exists(os.path.join(run, "training_summary.json"))
  # The next attempt may still take other settings: the first made no progress.
  other = TrainConfig(**{**TINY_TRAIN.__dict__, "batch_size": 8})
  assert seeded_trainer(other, run).train(stop_at_step=1).steps == 1


def test_non_empty_foreign_directory_is_refused(tmp_path):
  (tmp_path / "notes.txt").write_text("not a run")
  with pytest.raises(ValueError, match="has no config.json"):
    seeded_trainer(TINY_TRAIN, str(tmp_path))


def test_a_data_dir_below_a_file_is_refused_before_any_work(tmp_path, monkeypatch):
  """--data_dir that is (or lies below) a file, or is not writable, is named before the workdir
  is claimed or a problem simulated, not as a TensorFlow error after the validation set."""
  config = TrainConfig(**{**TINY_TRAIN.__dict__, "data_source": "disk"})
  a_file = tmp_path / "file"
  a_file.write_text("mine")
  for data_dir in (a_file, a_file / "sub"):
    with pytest.raises(ValueError, match=f"problem store {data_dir / 'train'} cannot be written: "
                                         f"{a_file} is a file, not a directory"):
      seeded_trainer(config, str(tmp_path / "run"), data_dir=str(data_dir))
  monkeypatch.setattr(os, "access", lambda *args: False)   # root may write anywhere
  with pytest.raises(PermissionError, match=f"{tmp_path} is not writable"):
    seeded_trainer(config, str(tmp_path / "run"), data_dir=str(tmp_path / "data"))
  assert not (tmp_path / "run").exists() and a_file.read_text() == "mine"


def test_every_seed_of_the_configurations_range_seeds_the_weights_distinctly():
  """--seed=-1 passed the flag's range, then failed in Keras ("Seed must be between 0 and
  2**32 - 1"), naming no flag."""
  draws = {}
  for seed in (SEED_RANGE[0], -1, 0, 1, SEED_RANGE[1]):
    set_global_seed(seed)
    draws[seed] = float(tf.random.uniform([]))
  assert len(set(draws.values())) == len(draws), draws


def test_the_progress_bar_of_a_resumed_session_times_its_own_steps(monkeypatch):
  """Resumed at step 90 of 100, one second per step: the bar's time per step is one second, not
  (time since the bar started) / 90."""
  from alfi_tf.training.trainer import SessionProgbar

  clock = [1000.0]
  monkeypatch.setattr("time.time", lambda: clock[0])
  bar = SessionProgbar(100, first_step=90, verbose=0)
  for step in range(91, 96):
    clock[0] += 1.0
    bar.update(step)
  assert bar._estimate_step_duration(96, clock[0] + 1.0) == pytest.approx(1.0)


def test_load_machine_restores_weights_and_statistics(tmp_path, caplog):
  trainer = seeded_trainer(TINY_TRAIN, str(tmp_path / "run"), log_every=1000)
  trainer.train(stop_at_step=20)
  machine = load_machine(str(tmp_path / "run"))
  for a, b in zip(trainer.machine.weights, machine.weights):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(machine.theta_standardizer.std[0]) != 1.0
  # Evaluating or exporting this machine warns that it is unfinished and not calibrated.
  warn_if_unfinished(str(tmp_path / "run"))
  assert (f"{tmp_path / 'run'} is an unfinished run: training stopped at step 20 of 80, and the "
          "std is not calibrated") in caplog.text


def test_load_machine_without_checkpoint_explains(tmp_path):
  seeded_trainer(TINY_TRAIN, str(tmp_path / "run"))
  with pytest.raises(FileNotFoundError, match="train first"):
    load_machine(str(tmp_path / "run"))
  with pytest.raises(FileNotFoundError, match="not a training workdir"):
    load_machine(str(tmp_path / "missing"))
  assert not os.path.exists(tmp_path / "missing")


def _event_tags(directory) -> set:
  tags = set()
  for name in os.listdir(directory):
    for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
      tags.update(value.tag for value in event.summary.value)
  return tags


def test_tensorboard_event_files_hold_the_named_scalars(tmp_path):
  trainer = seeded_trainer(TINY_TRAIN, str(tmp_path / "run"), log_every=10)
  trainer.train(stop_at_step=40)
  tags = _event_tags(tmp_path / "run" / "tb")
  expected = {"train/loss", "train/gradient_norm", "train/learning_rate",
              "train/steps_per_second", "train/simulations_per_second",
              "validation/rmse_T/log_rate", "validation/rmse_t01/log_rate",
              "validation/rmse_t03/log_rate"}
  assert expected <= tags, expected - tags


def _checkpoint_files(workdir, step):
  directory = os.path.join(workdir, "checkpoints")
  return [os.path.join(directory, name) for name in os.listdir(directory)
          if name.startswith(f"ckpt-{step}.data")]


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
  straight = seeded_trainer(TINY_TRAIN, str(tmp_path / "straight"), log_every=1000)
  straight.train(stop_at_step=60)
  workdir = str(tmp_path / "run")
  seeded_trainer(TINY_TRAIN, workdir, log_every=1000).train(stop_at_step=40)
  for path in _checkpoint_files(workdir, 40):
    with open(path, "r+b") as stream:
      stream.truncate(16)
  resumed = seeded_trainer(TINY_TRAIN, workdir, log_every=1000)
  resumed.train(stop_at_step=60)   # restores step 20, then retraces steps 21..60 exactly
  assert resumed.step == 60
  for a, b in zip(_weights(straight), _weights(resumed)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
  workdir = str(tmp_path / "run")
  seeded_trainer(TINY_TRAIN, workdir, log_every=1000).train(stop_at_step=20)
  for path in _checkpoint_files(workdir, 20):
    with open(path, "r+b") as stream:
      stream.truncate(16)
  with pytest.raises(RuntimeError, match="no readable checkpoint"):
    seeded_trainer(TINY_TRAIN, workdir, log_every=1000).train()


def test_read_paths_fall_back_past_a_corrupted_checkpoint(tmp_path):
  """load_machine (behind evaluate, export and the deployed machine) skips a corrupted newest
  checkpoint like training does, and names the directory when none is readable."""
  from alfi_tf.serving.deploy import DeployedMachine
  workdir = str(tmp_path / "run")
  trainer = seeded_trainer(TINY_TRAIN, workdir, log_every=1000)
  trainer.train(stop_at_step=20)
  at_step_20 = [v.numpy() for v in trainer.machine.weights]
  trainer.train(stop_at_step=40)
  for path in _checkpoint_files(workdir, 40):
    with open(path, "r+b") as stream:
      stream.truncate(16)
  for actual, expected in zip(load_machine(workdir).weights, at_step_20):
    np.testing.assert_array_equal(actual.numpy(), expected)
  assert DeployedMachine.load(workdir).num_steps > 0
  for path in _checkpoint_files(workdir, 20):
    with open(path, "r+b") as stream:
      stream.truncate(16)
  with pytest.raises(RuntimeError, match=f"no readable checkpoint in {workdir}"):
    load_machine(workdir)


def test_a_non_finite_step_stops_the_run_before_it_is_checkpointed(tmp_path):
  workdir = str(tmp_path / "run")
  trainer = seeded_trainer(TINY_TRAIN, workdir, log_every=1000)
  trainer.train(stop_at_step=20)
  real_step = trainer.train_step
  # A step whose loss is finite but whose gradients are not (they would poison the weights).
  trainer.train_step = lambda *batch: (real_step(*batch)[0], tf.constant(float("inf")),
                                       tf.constant(0.0))
  with pytest.raises(FloatingPointError, match=r"gradient norm inf\) at step 21 \(simulator "
                                               r"'poisson'\)\. Either the simulator"):
    trainer.train(stop_at_step=40)
  assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith("ckpt-20")


def test_ctrl_c_during_data_generation_with_worker_processes_is_one_message(tmp_path):
  """A terminal's Ctrl-C reaches the whole process group, the --data_workers processes included:
  the binary stops with status 130 and its one line, no worker's traceback, no TensorFlow error."""
  process = subprocess.Popen(
      [sys.executable, "-m", "experiments.train", "--config=base", "--simulator=lotka_volterra",
       "--observation_transform=none", "--num_problems=20000", "--num_obs=20", "--epochs=1",
       "--data_workers=2", f"--workdir={tmp_path / 'run'}"],
      cwd=ROOT, env=binary_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      start_new_session=True)   # its own process group, as a terminal's foreground job
  try:
    deadline = time.time() + 120
    while not _spawned_workers(process.pid) and time.time() < deadline:
      time.sleep(0.1)
    assert _spawned_workers(process.pid), "the data workers never started"
    time.sleep(2.0)   # the workers are starting or simulating
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
  assert process.returncode == 130, stderr[-3000:]
  assert "interrupted" in stderr and "error:" not in stderr
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]


def _spawned_workers(pid: int) -> list:
  """The multiprocessing workers started by process `pid`."""
  return subprocess.run(["pgrep", "-P", str(pid), "-f", "multiprocessing.spawn"],
                        capture_output=True, text=True).stdout.split()
