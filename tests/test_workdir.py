"""The run directory: the advisory lock, damaged files named, and loading a machine through the
checkpoint fallback."""

import contextlib
import dataclasses
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_probability as tfp

import alfi_tf.simulators
from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.simulators import NumpySimulator, box_prior, get_simulator, register_simulator
from alfi_tf.workdir import (LOCK_FILE, SettingDifference, Workdir, apply_calibration,
                            load_machine, write_json_atomically)

HOLD_LOCK = """
import sys, time
from alfi_tf.workdir import Workdir
with Workdir(sys.argv[1]).lock():
  print("locked", flush=True)
  time.sleep(60)
"""


def test_a_second_holder_is_refused_with_the_holder_named(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RuntimeError, match=rf"is in use by process {holder.pid} on "):
      with Workdir(str(tmp_path)).lock():
        pass
  finally:
    holder.kill()
    holder.wait()
  # Killed holders release the lock: the next run takes it.
  with Workdir(str(tmp_path)).lock():
    assert f"process {os.getpid()}" in (tmp_path / LOCK_FILE).read_text()


def test_the_lock_is_released_on_exit_and_on_error(tmp_path):
  workdir = Workdir(str(tmp_path / "run"))
  with pytest.raises(KeyError):
    with workdir.lock():
      raise KeyError("boom")
  with workdir.lock():
    pass
  assert (tmp_path / "run" / LOCK_FILE).read_text() == ""


def test_a_second_training_of_one_workdir_is_refused(tmp_path):
  from alfi_tf.config import MachineConfig, TrainConfig
  from alfi_tf.training import Trainer

  machine_config = MachineConfig(num_steps=2, num_samples=2, num_simulated_obs=2, encoder_hidden=4,
                                 encoder_out=4, aggregator_hidden=4, aggregator_out=4,
                                 updater_hidden=4, lstm_units=4)
  train_config = TrainConfig(num_problems=8, num_obs=5, epochs=1, batch_size=8,
                             num_validation_problems=4)
  trainer = Trainer(machine_config, train_config, str(tmp_path))
  with Workdir(str(tmp_path)).lock():   # as a concurrent training process would hold it
    with pytest.raises(RuntimeError, match=f"workdir {tmp_path} is in use by process"):
      trainer.train()
  assert not os.path.exists(tmp_path / "checkpoints")
  assert trainer.train().steps == 1


def test_a_workdir_that_is_a_file_or_not_writable_is_named(tmp_path, monkeypatch):
  from alfi_tf.config import MachineConfig, TrainConfig

  path = tmp_path / "file"
  path.write_text("not a directory")
  with pytest.raises(ValueError, match=f"workdir {path} exists and is not a directory"):
    Workdir(str(path)).claim(MachineConfig(), TrainConfig())
  # Below a file: named, not "[Errno 20] Not a directory".
  with pytest.raises(ValueError, match=f"workdir {path / 'run'} cannot be created: {path} is a "
                                       "file, not a directory"):
    Workdir(str(path / "run")).claim(MachineConfig(), TrainConfig())
  # Root may write anywhere, so the permission check is exercised through os.access.
  monkeypatch.setattr(os, "access", lambda *args: False)
  with pytest.raises(PermissionError, match=f"workdir {tmp_path / 'run'} is not writable"):
    Workdir(str(tmp_path / "run")).claim(MachineConfig(), TrainConfig())


def test_a_file_system_that_refuses_writes_is_named_for_what_it_is(tmp_path, monkeypatch):
  """A read-only file system (errno 30) was reported as "... is a file, not a directory", and an
  output that could not be written named only its temporary file."""
  def read_only(path, *args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

  monkeypatch.setattr(os, "makedirs", read_only)
  with pytest.raises(ValueError, match=f"workdir {tmp_path / 'run'} cannot be created: "
                                       "Read-only file system$"):
    Workdir(str(tmp_path / "run")).claim(MachineConfig(), TrainConfig())
  target = tmp_path / "sub" / "result.json"
  with pytest.raises(OSError, match=f"cannot write {target}: Read-only file system$"):
    write_json_atomically(str(target), {})


FIRST, FIXED = TrainConfig(epochs=1), TrainConfig(epochs=2)


def _recorded_train_config(path) -> TrainConfig:
  return Workdir(str(path)).read_config()[1]


def test_a_failed_attempt_without_checkpoints_does_not_pin_the_config(tmp_path, caplog):
  Workdir(str(tmp_path)).claim(MachineConfig(), FIRST)
  (tmp_path / "tb").mkdir()   # what an attempt that failed before its first checkpoint leaves
  Workdir(str(tmp_path)).claim(MachineConfig(), FIXED)
  assert _recorded_train_config(tmp_path) == FIXED
  assert ("holds the configuration of an attempt that saved no checkpoint; replacing it"
          in caplog.text)
  assert "train.epochs: workdir has 1, requested 2" in caplog.text


@pytest.mark.parametrize("progress", ["checkpoints/checkpoint", "training_summary.json",
                                      "calibration.json", "metrics.json"])
def test_a_run_with_progress_keeps_its_config(tmp_path, progress):
  Workdir(str(tmp_path)).claim(MachineConfig(), FIRST)
  (tmp_path / progress).parent.mkdir(exist_ok=True)
  (tmp_path / progress).write_text("{}")
  with pytest.raises(ValueError, match=r"holds a run with a different configuration; .*\n  "
                                       r"train.epochs: workdir has 1, requested 2"):
    Workdir(str(tmp_path)).claim(MachineConfig(), FIXED)
  assert _recorded_train_config(tmp_path) == FIRST


def test_a_run_with_progress_goes_on_when_only_its_answer_settings_differ(tmp_path, caplog):
  """`claim` tells answer settings from the others by the differences' setting names, computed as
  data (it used to parse them back out of the messages' text), which the messages render."""
  Workdir(str(tmp_path)).claim(MachineConfig(), FIRST)
  (tmp_path / "training_summary.json").write_text("{}")
  recorded = MachineConfig()
  answer = dataclasses.replace(recorded, tail_averaging=0.5, start="prior_mean")
  differences = Workdir(str(tmp_path))._differences(answer, FIRST)
  assert differences == [
      SettingDifference("machine.tail_averaging", recorded.tail_averaging, 0.5),
      SettingDifference("machine.start", recorded.start, "prior_mean")]
  rendered = (f"machine.tail_averaging: workdir has {recorded.tail_averaging!r}, requested 0.5\n"
              f"  machine.start: workdir has {recorded.start!r}, requested 'prior_mean'")
  with pytest.raises(ValueError, match="holds a run with a different configuration") as error:
    Workdir(str(tmp_path)).claim(dataclasses.replace(answer, num_samples=7), FIRST)
  assert str(error.value).endswith(f"Differences:\n  machine.num_samples: workdir has "
                                   f"{recorded.num_samples}, requested 7\n  {rendered}")
  assert Workdir(str(tmp_path)).read_config()[0] == recorded   # refused: nothing written
  Workdir(str(tmp_path)).claim(answer, FIRST)   # only how the answer is read off: goes on
  assert Workdir(str(tmp_path)).read_config()[0] == answer
  assert "changing only how the answer is read off" in caplog.text and rendered in caplog.text


def test_a_finished_run_may_answer_with_another_n_but_not_train_with_one(tmp_path):
  """`answer_simulated_obs` is an answer setting; `num_simulated_obs` shapes the training."""
  Workdir(str(tmp_path)).claim(MachineConfig(), FIRST)
  (tmp_path / "training_summary.json").write_text("{}")
  with pytest.raises(ValueError, match=r"machine.num_simulated_obs: workdir has 20, requested 100"):
    Workdir(str(tmp_path)).claim(MachineConfig(num_simulated_obs=100), FIRST)
  Workdir(str(tmp_path)).claim(MachineConfig(answer_simulated_obs=100), FIRST)
  assert Workdir(str(tmp_path)).read_config()[0].simulated_obs() == 100


@pytest.mark.parametrize("simulator, refused", [("poisson", False), ("linear_regression", True)])
def test_observed_design_pins_only_the_runs_of_simulators_with_a_design(tmp_path, simulator,
                                                                        refused):
  """A run from before `observed_design` (recorded without it, so off) resumes under the shipped
  configs, which turn it on, where it changes nothing; a simulator with a design trains another
  machine with it, so that run is refused."""
  Workdir(str(tmp_path)).claim(MachineConfig(simulator=simulator), FIRST)
  recorded = json.loads((tmp_path / "config.json").read_text())
  del recorded["machine"]["observed_design"]
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  (tmp_path / "training_summary.json").write_text("{}")
  outcome = (pytest.raises(ValueError, match="machine.observed_design: workdir has False, "
                                             "requested True")
             if refused else contextlib.nullcontext())
  with outcome:
    Workdir(str(tmp_path)).claim(MachineConfig(simulator=simulator, observed_design=True), FIRST,
                                 get_simulator(simulator))


def test_the_config_of_a_running_attempt_is_not_replaced(tmp_path):
  Workdir(str(tmp_path)).claim(MachineConfig(), FIRST)
  with Workdir(str(tmp_path)).lock():   # the first attempt, still drawing its data
    with pytest.raises(RuntimeError, match=f"workdir {tmp_path} is in use by process"):
      Workdir(str(tmp_path)).claim(MachineConfig(), FIXED)
  assert _recorded_train_config(tmp_path) == FIRST


def test_a_directory_of_other_files_is_refused_untouched(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match=f"workdir {tmp_path} exists, is not empty and has no "
                                       "config.json"):
    Workdir(str(tmp_path)).claim(MachineConfig(), FIRST)
  assert os.listdir(tmp_path) == ["notes.txt"]


def _progress_without_lock(path) -> None:
  """A run with progress, copied without its lock file."""
  Workdir(str(path)).claim(MachineConfig(), FIRST)
  (path / "training_summary.json").write_text("{}")
  os.remove(path / LOCK_FILE)


def _foreign_config(path) -> None:
  """A config.json this program did not write."""
  (path / "config.json").write_text(json.dumps({"name": "another program's"}))


@pytest.mark.parametrize("workdir, message", [
    (_progress_without_lock, "holds a run with a different configuration"),
    (_foreign_config, "is damaged or was written by another alfi-tf version")])
def test_a_refused_workdir_keeps_no_lock_file_of_the_refusal(tmp_path, workdir, message):
  workdir(tmp_path)
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(ValueError, match=message):
    Workdir(str(tmp_path)).claim(MachineConfig(), FIXED)
  assert sorted(os.listdir(tmp_path)) == before


def test_a_refusal_keeps_the_lock_file_it_found(tmp_path):
  Workdir(str(tmp_path)).claim(MachineConfig(), FIRST)   # the run's lock file, from its start
  (tmp_path / "training_summary.json").write_text("{}")
  with pytest.raises(ValueError, match="holds a run with a different configuration"):
    Workdir(str(tmp_path)).claim(MachineConfig(), FIXED)
  assert (tmp_path / LOCK_FILE).exists()


def test_a_lock_file_removed_after_it_was_opened_is_not_taken(tmp_path, monkeypatch):
  """A lock file that its creator removed (refused) after another process opened it locks
  nothing any more: that process takes a new one, so two processes never both hold the lock."""
  import alfi_tf.workdir as workdir_lib
  opened, created = workdir_lib._open_or_create, []

  def open_then_removed(path):
    stream, new = opened(path)
    if not created:
      os.remove(path)
    created.append(new)
    return stream, new

  monkeypatch.setattr(workdir_lib, "_open_or_create", open_then_removed)
  with Workdir(str(tmp_path)).lock():
    assert f"process {os.getpid()}" in (tmp_path / LOCK_FILE).read_text()
  assert created == [True, True]


@pytest.mark.parametrize("leftovers", [[LOCK_FILE], [LOCK_FILE, ".tmp-4242-0123abcd"]])
def test_a_first_attempt_killed_before_its_config_is_resumed(tmp_path, leftovers):
  """Killed between taking the lock and renaming config.json into place, a first attempt leaves
  the lock file (and a temporary file); the rerun takes the workdir instead of refusing it."""
  for name in leftovers:
    (tmp_path / name).write_text("")
  Workdir(str(tmp_path)).claim(MachineConfig(), FIRST)
  assert _recorded_train_config(tmp_path) == FIRST


def test_the_run_files_are_as_readable_as_any_file_of_the_user(tmp_path):
  """config.json and the other atomically written files get the umask's mode, as the checkpoints
  do, not the private 0600 of a temporary file: a colleague can read a shared run."""
  previous = os.umask(0o022)
  try:
    Workdir(str(tmp_path)).claim(MachineConfig(), FIRST)
  finally:
    os.umask(previous)
  assert oct(os.stat(tmp_path / "config.json").st_mode & 0o777) == oct(0o644)
  assert [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")] == []


@pytest.mark.parametrize("content, message", [
    (b"{bad", r"config.json is damaged: not valid JSON \(Expecting property name"),
    (b"\xff\xfe", r"config.json is damaged: not valid JSON \('utf-8' codec"),
    (b"[1]", r"config.json is damaged: expected a JSON object, got list"),
    (b'{"train": {}}', r"config.json is damaged or was written by another alfi-tf version: "
                       r"KeyError: 'machine'"),
    (b'{"machine": {"simulator": "poisson", "speed": 1}, "train": {}}',
     r"another alfi-tf version: TypeError: .*unexpected keyword argument 'speed'"),
    # A value edited by hand is named with the file, not as if a flag had been mistyped.
    (b'{"machine": {"simulator": "poisson", "num_steps": "2"}, "train": {}}',
     r"config.json is damaged or was written by another alfi-tf version: num_steps must be an "
     r"integer, got '2'"),
    (b'{"machine": {"simulator": "poisson", "tail_averaging": NaN}, "train": {}}',
     r"config.json is damaged .*: tail_averaging must be a finite number, got nan"),
])
def test_a_damaged_config_is_named_by_every_reader(tmp_path, content, message):
  (tmp_path / "config.json").write_bytes(content)
  workdir = Workdir(str(tmp_path))
  with pytest.raises(ValueError, match=message):
    workdir.read_config()
  with pytest.raises(ValueError, match=message):
    workdir.check(MachineConfig(simulator="poisson"), TrainConfig())
  assert (tmp_path / "config.json").read_bytes() == content


@pytest.mark.parametrize("content, message", [
    ('"a string"', "expected a JSON object"),
    ('{"steps": "six"}', "steps must be a number, got 'six'"),
    ('{"steps": 6, "train_seconds": [1]}', r"train_seconds must be a number, got \[1\]"),
    ('{"validation_rmse": 1.5}', "validation_rmse must be an object, got 1.5"),
])
def test_damaged_summaries_are_named(tmp_path, content, message):
  (tmp_path / "training_summary.json").write_text(content)
  with pytest.raises(ValueError, match=rf"training_summary.json is damaged: {message}"):
    Workdir(str(tmp_path)).read_summary()


@pytest.mark.parametrize("std_scales, message", [
    (None, r"shape \[steps >= 1, 1\], got \(\)"),
    ([[1.0, 2.0]], r"shape \[steps >= 1, 1\], got \(1, 2\)"),
    ([[-1.0]], "finite and positive"),
    ("abc", "could not convert string to float"),
])
def test_a_damaged_calibration_is_named_when_applied(std_scales, message):
  machine = InferenceMachine(get_simulator("poisson"), MachineConfig(simulator="poisson"))
  calibration = {"checkpoint": "ckpt-6", "tail_averaging": 0.0}
  if std_scales is not None:
    calibration["std_scales"] = std_scales
  with pytest.raises(ValueError, match=rf"^run/calibration.json is damaged: .*"
                                       rf"{message}.*rerun the training command to refit it"):
    apply_calibration(machine, calibration, "run/checkpoints/ckpt-6", "run/calibration.json")


class _EditedDecay(NumpySimulator):
  """A user's simulator; the tests edit its class attributes as a user edits the file."""

  name = "test_edited_decay"
  names, dim, high = ("log_lifetime",), 1, 2.0

  def __init__(self):
    super().__init__(parameter_names=list(self.names), observation_dim=self.dim,
                     prior=box_prior([-1.0] * len(self.names), [self.high] * len(self.names)))

  def simulate_numpy(self, theta, num_obs, rng):
    return rng.exponential(size=(len(theta), num_obs, self.dim))


@pytest.fixture
def edited_run(tmp_path):
  """A run of `_EditedDecay` that made progress (a summary): `(workdir, machine config)`."""
  register_simulator(_EditedDecay)
  config = MachineConfig(simulator=_EditedDecay.name)
  Workdir(str(tmp_path)).claim(config, FIRST, get_simulator(_EditedDecay.name))
  (tmp_path / "training_summary.json").write_text("{}")
  yield Workdir(str(tmp_path)), config
  del alfi_tf.simulators._REGISTRY[_EditedDecay.name]


CHANGED = r"^simulator 'test_edited_decay' changed since workdir .* was trained on it: "


def test_a_run_records_its_simulator_and_a_resume_refuses_another(edited_run, monkeypatch,
                                                                     caplog):
  workdir, config = edited_run
  assert json.loads(open(workdir.file("simulator.json")).read()) == {
      "parameter_names": ["log_lifetime"], "observation_dim": 1,
      "prior_box": {"low": [-1.0], "high": [2.0]}, "parameter_bijector": None}
  monkeypatch.setattr(_EditedDecay, "high", 3.0)
  workdir.claim(config, FIRST, get_simulator(_EditedDecay.name))   # resumed, with a warning
  assert ("the prior of simulator 'test_edited_decay' changed since workdir" in caplog.text
          and "(low=[-1.0], high=[2.0]; now low=[-1.0], high=[3.0])" in caplog.text)
  monkeypatch.setattr(_EditedDecay, "names", ("log_lifetime", "offset"))
  with pytest.raises(ValueError, match=CHANGED + r"parameter_names was \['log_lifetime'\], is now "
                                       r"\['log_lifetime', 'offset'\]; restore the simulator"):
    workdir.claim(config, FIRST, get_simulator(_EditedDecay.name))
  monkeypatch.setattr(_EditedDecay, "names", ("rate",))
  monkeypatch.setattr(_EditedDecay, "dim", 2)
  with pytest.raises(ValueError, match=CHANGED + r"parameter_names was \['log_lifetime'\], is now "
                                       r"\['rate'\]; observation_dim was 1, is now 2; restore"):
    workdir.claim(config, FIRST, get_simulator(_EditedDecay.name))


def test_loading_a_run_refuses_a_changed_simulator_before_its_checkpoints(edited_run,
                                                                         monkeypatch):
  workdir, _ = edited_run
  monkeypatch.setattr(_EditedDecay, "names", ("rate",))
  with pytest.raises(ValueError, match=CHANGED + r"parameter_names was \['log_lifetime'\]"):
    load_machine(workdir.path)
  # A run from before the record loads unchecked (here: up to its missing checkpoint) ...
  os.remove(workdir.file("simulator.json"))
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    load_machine(workdir.path)
  # ... and a resume records the simulator from then on.
  workdir.claim(MachineConfig(simulator=_EditedDecay.name), FIRST,
                get_simulator(_EditedDecay.name))
  assert json.loads(open(workdir.file("simulator.json")).read())["parameter_names"] == ["rate"]


class _RescaledBox(tfp.bijectors.Chain):
  """`low + (high - low) sigmoid(u / scale)` onto `_EditedDecay`'s box, named like the default's
  whatever its scale: only its values tell two scales apart."""

  def __init__(self, scale: float):
    super().__init__([tfp.bijectors.Shift(-1.0), tfp.bijectors.Scale(3.0),
                      tfp.bijectors.Sigmoid(), tfp.bijectors.Scale(1.0 / scale)], name="box")


def test_a_run_in_unconstrained_parameters_refuses_a_changed_parameter_bijector(edited_run,
                                                                               monkeypatch):
  """The machine's weights and standardisation live in `u = b^-1(theta)`: answering through
  another `b` would be silently wrong, so a resume and a load both refuse it."""
  workdir, _ = edited_run
  os.remove(workdir.file("training_summary.json"))
  config = MachineConfig(simulator=_EditedDecay.name, unconstrained_parameters=True)
  workdir.claim(config, FIRST, get_simulator(_EditedDecay.name))
  with open(workdir.file("training_summary.json"), "w") as summary:   # progress: a resume checks
    summary.write("{}")
  recorded = json.loads(open(workdir.file("simulator.json")).read())["parameter_bijector"]
  assert recorded["bijector"] == "Sigmoid/sigmoid"   # TFP's default for a box: its logit
  np.testing.assert_allclose(np.ravel(recorded["inverse_at_box_fractions"]),
                             np.log([1 / 7, 3 / 5, 5 / 3, 7]), rtol=1e-5)
  monkeypatch.setattr(_EditedDecay, "parameter_bijector", property(lambda self: _RescaledBox(1.0)))
  with pytest.raises(ValueError, match=CHANGED + r"parameter_bijector was Sigmoid/sigmoid, is now "
                                       r"_RescaledBox/box; restore"):
    workdir.claim(config, FIRST, get_simulator(_EditedDecay.name))
  workdir.record_simulator(get_simulator(_EditedDecay.name), config)   # trained with the scale 1
  workdir.claim(config, FIRST, get_simulator(_EditedDecay.name))   # the same map: resumed
  monkeypatch.setattr(_EditedDecay, "parameter_bijector", property(lambda self: _RescaledBox(2.0)))
  with pytest.raises(ValueError, match=CHANGED + r"parameter_bijector was _RescaledBox/box with b\^-1 = "
                                       r"\[\[-1.94.*is now \[\[-3.89"):
    load_machine(workdir.path)


def test_an_attempt_without_progress_records_the_edited_simulator(edited_run, monkeypatch):
  workdir, config = edited_run
  os.remove(workdir.file("training_summary.json"))   # the attempt failed before any progress
  monkeypatch.setattr(_EditedDecay, "names", ("rate",))
  workdir.claim(config, FIRST, get_simulator(_EditedDecay.name))
  assert json.loads(open(workdir.file("simulator.json")).read())["parameter_names"] == ["rate"]
