"""A run's directory: its configuration, checkpoints and summaries, all written atomically; and
loading the machine it trained (below both training, which resumes it, and serving, which exports
it), through one checkpoint-restoring path that falls back from a corrupted latest checkpoint."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import numbers
import os
import socket
import time
import uuid
from typing import IO, Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf
from absl import logging

from alfi_tf.config import (ANSWER_FIELDS, MachineConfig, TrainConfig, answer_settings,
                            recorded_answer_settings, to_dict)
from alfi_tf.model.calibration import (check_mean_shifts, check_std_scales,
                                      recorded_pooled_std_scales)
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.model.parameter_space import bijector_changes, describe_bijector, parameter_bijector
from alfi_tf.simulators import Simulator, get_simulator

CONFIG_FILE = "config.json"
SUMMARY_FILE = "training_summary.json"
CALIBRATION_FILE = "calibration.json"
METRICS_FILE = "metrics.json"
SIMULATOR_FILE = "simulator.json"
LOCK_FILE = "lock"
#: The start of `atomic_output`'s temporary files' names.
TEMPORARY_PREFIX = ".tmp-"
#: The settings (`config.ANSWER_FIELDS`) that a run with progress may change (`Workdir.claim`).
ANSWER_SETTINGS = tuple(f"machine.{name}" for name in ANSWER_FIELDS)
#: The fields of `training_summary.json` that readers compute with, and their types.
SUMMARY_FIELD_TYPES = {"steps": numbers.Integral, "final_loss": numbers.Real,
                       "validation_rmse": dict, "train_seconds": numbers.Real,
                       "data_seconds": numbers.Real, "redrawn_problems": numbers.Integral,
                       "online_redrawn_problems": numbers.Integral,
                       "masked_samples": numbers.Integral, "replicas": numbers.Integral}


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = "") -> Iterator[str]:
  """Yields a temporary path beside `path` (ending in `suffix`) to write; renames it over `path`
  when the block succeeds and removes it when the block fails.

  A reader (or a killed writer) never sees a half-written file.
  """
  directory = os.path.dirname(os.path.abspath(path))
  temporary = os.path.join(directory, f"{TEMPORARY_PREFIX}{os.getpid()}-{uuid.uuid4().hex}{suffix}")
  try:
    os.makedirs(directory, exist_ok=True)
    # Created like any file of the user's (0666 less the umask), not private as a mkstemp file
    # is: the file it becomes must be as readable as the checkpoints beside it.
    with open(temporary, "x"):
      pass
  except OSError as error:   # named by the file the user asked for, not the temporary one
    raise type(error)(error.errno, f"cannot write {path}: {error.strerror}") from None
  try:
    yield temporary
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def write_text_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through `atomic_output`."""
  with atomic_output(path) as temporary, open(temporary, "w") as stream:
    stream.write(text)


def write_json_atomically(path: str, payload: Any) -> None:
  """`write_text_atomically` for a JSON document."""
  write_text_atomically(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def describe_simulator(simulator: Simulator, unconstrained_parameters: bool = False
                       ) -> Dict[str, Any]:
  """What a run's checkpoints assume of its simulator (`simulator.json`): the parameter names, the
  observation_dim, the prior's box (`{"low": [d], "high": [d]}`, None for other priors) and, for a
  run with `unconstrained_parameters`, its `parameter_bijector` (`describe_bijector`; else None)."""
  bounds = simulator.parameter_bounds
  bijector = None
  if unconstrained_parameters:
    bijector = describe_bijector(parameter_bijector(simulator), bounds)
  return {"parameter_names": list(simulator.parameter_names),
          "observation_dim": simulator.observation_dim,
          "prior_box": None if bounds is None else {"low": bounds[0].tolist(),
                                                    "high": bounds[1].tolist()},
          "parameter_bijector": bijector}


def require_same_simulator(recorded: Dict[str, Any], current: Dict[str, Any], spec: str,
                           machine: str, changed: Sequence[str] = ()) -> None:
  """Refuses a simulator that is no longer the one a machine was trained on; warns if only its
  prior's box changed.

  Args:
    recorded: what the machine assumes (`describe_simulator` at training time: its
      `parameter_names`, `observation_dim` and `prior_box`).
    current: `describe_simulator` of the simulator `spec` builds now.
    spec: the simulator's spec, for messages.
    machine: the trained machine, for messages (`workdir runs/p`, `export exports/p`).
    changed: further changes found by the caller (a bijector's), each a phrase.

  Raises:
    ValueError: naming each change of the parameter names, the observation_dim or in `changed`.
  """
  changed = [f"{key} was {recorded[key]!r}, is now {current[key]!r}"
             for key in ("parameter_names", "observation_dim")
             if recorded[key] != current[key]] + list(changed)
  if changed:
    raise ValueError(f"simulator {spec!r} changed since {machine} was trained on it: "
                     f"{'; '.join(changed)}; restore the simulator the run was trained on, or "
                     "train a new run")
  if recorded["prior_box"] != current["prior_box"]:
    logging.warning("the prior of simulator %r changed since %s was trained on it (%s; now %s): "
                    "the machine's answers assume the prior it was trained on", spec, machine,
                    _box_text(recorded["prior_box"]), _box_text(current["prior_box"]))


def _box_text(box: Optional[Dict[str, List[float]]]) -> str:
  """`low=[...], high=[...]` of a recorded prior box, for messages."""
  return "not a box" if box is None else f"low={box['low']}, high={box['high']}"


class SettingDifference(NamedTuple):
  """A setting in which a workdir's recorded run differs from the configuration requested.

  Attributes:
    setting: its name, `section.field` (e.g. `train.batch_size`).
    recorded: its value in the workdir's `config.json` (its default where the run predates it).
    requested: its value in the configuration given now.
  """

  setting: str
  recorded: Any
  requested: Any

  def __str__(self) -> str:
    return f"{self.setting}: workdir has {self.recorded!r}, requested {self.requested!r}"


def _listed(differences: List[SettingDifference]) -> str:
  """The differences one per line, indented, for a message that ends in `Differences:`."""
  return "\n  ".join(map(str, differences))


def read_json_object(path: str) -> Optional[Dict[str, Any]]:
  """The JSON object in file `path`, or None when there is no such file.

  Raises:
    ValueError: naming the file, when it holds no JSON object (this program writes them
      atomically, so something else damaged it).
  """
  if not os.path.exists(path):
    return None
  try:
    with open(path) as stream:
      content = json.load(stream)
  except ValueError as error:   # also a UnicodeDecodeError
    raise ValueError(f"{path} is damaged: not valid JSON ({error})") from None
  if not isinstance(content, dict):
    raise ValueError(f"{path} is damaged: expected a JSON object, got {type(content).__name__}")
  return content


class Workdir:
  """Layout of a run directory.

  `config.json` (machine + training configuration), `simulator.json` (`describe_simulator`, as
  training started), `checkpoints/` (`tf.train.CheckpointManager`),
  `tb/` (TensorBoard), `data/` (meta-training sets streamed from disk), `workers/` (scratch space of
  non-chief workers in multi-worker runs), `training_summary.json`, and the evaluation outputs
  (`metrics.json`, `*.png`).
  """

  def __init__(self, path: str):
    if not path:
      raise ValueError("a workdir path is required")
    self.path = path

  @property
  def checkpoints(self) -> str:
    return os.path.join(self.path, "checkpoints")

  @property
  def tensorboard(self) -> str:
    """TensorBoard event files: `tensorboard --logdir DIR/tb`."""
    return os.path.join(self.path, "tb")

  @property
  def data(self) -> str:
    """Default location of `ProblemStore`s (`--data_source=disk`)."""
    return os.path.join(self.path, "data")

  def worker_scratch(self, worker: str) -> str:
    """Where a non-chief worker writes what only the chief keeps (its checkpoint copies)."""
    return os.path.join(self.path, "workers", worker)

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  @contextlib.contextmanager
  def lock(self) -> Iterator[None]:
    """Holds an advisory lock on the run for as long as the context lasts.

    The operating system releases it when the holder exits, killed or not, so a stale lock never
    blocks a resume. The lock file names its holder for the error a second process gets. A lock
    file this call created is removed again when the block fails (a refused workdir keeps nothing
    of this program's); one that was there before stays.

    Raises:
      RuntimeError: another process holds the lock (named by host, process id and start time).
    """
    os.makedirs(self.path, exist_ok=True)
    stream, created = self._take_lock()
    with stream:
      try:
        stream.write(f"process {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        stream.flush()
        yield
      except BaseException:
        if created:
          # Removed while still held: whoever opened it meanwhile finds it gone once it gets the
          # lock, and takes a new one (`_take_lock`).
          os.remove(self.file(LOCK_FILE))
        raise
      finally:
        stream.seek(0)
        stream.truncate()
        fcntl.flock(stream, fcntl.LOCK_UN)

  def _take_lock(self) -> Tuple[IO[str], bool]:
    """The lock file, locked (by this process) and emptied, and whether this call created it.

    Raises:
      RuntimeError: another process holds the lock.
    """
    path = self.file(LOCK_FILE)
    while True:
      stream, created = _open_or_create(path)
      try:
        fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = stream.read().strip() or "another process"
        stream.close()
        raise RuntimeError(f"workdir {self.path} is in use by {holder}; wait for it to finish, or "
                           "use another --workdir") from None
      if _still_named(path, stream):
        stream.truncate()
        return stream, created
      # Its creator removed it (`lock`) before this process got it: lock the file there now.
      stream.close()

  def claim(self, machine_config: MachineConfig, train_config: TrainConfig,
            simulator: Optional[Simulator] = None) -> None:
    """Records the configuration of a new run (and, given, its `simulator`'s description), or checks
    that an existing run has the same ones (`check_simulator`).

    A recorded configuration that differs is replaced (with a warning naming the differences) when
    the run it records made no progress: an attempt that failed before its first checkpoint (a
    simulator outside the observation transform's domain, say) has nothing to resume, and the
    rerun with the fix belongs in the same workdir. So is one that differs only in
    `ANSWER_SETTINGS`, which the weights do not depend on: the run goes on with them, and its std
    calibration is refitted to the new answer.

    Raises:
      ValueError: the workdir belongs to a run with a different configuration (or simulator) and
        progress (checkpoints, summaries: names each setting that differs), so resuming into it
        would mix two experiments; or it is not empty and records no run.
      RuntimeError: another process holds the run's lock (the first attempt may still be running).
    """
    self.require_writable()
    if not os.path.exists(self.file(CONFIG_FILE)) and not all(
        name == LOCK_FILE or name.startswith(TEMPORARY_PREFIX) for name in os.listdir(self.path)):
      # The lock and a temporary file are what a first attempt killed before it wrote its
      # config.json leaves; anything else may be the user's.
      raise ValueError(f"workdir {self.path} exists, is not empty and has no {CONFIG_FILE}: "
                       "refusing to write a run into it")
    # Compared and written under the run's lock: a run another process is training (its first
    # attempt may still be drawing data, before any checkpoint) is never given another config.
    with self.lock():
      differences = self._differences(machine_config, train_config, simulator)
      answer_only = bool(differences) and all(
          difference.setting in ANSWER_SETTINGS for difference in differences)
      if differences is not None and self.has_progress():
        if differences and not answer_only:
          raise self._configuration_mismatch(differences)
        if simulator is not None and not self.check_simulator(simulator, machine_config):
          # A run from before the record: from now on.
          self.record_simulator(simulator, machine_config)
        if answer_only:
          stale = (f"; its {METRICS_FILE} holds the previous answer's evaluation: rerun "
                   "alfi-evaluate" if os.path.exists(self.file(METRICS_FILE)) else "")
          logging.warning("workdir %s: changing only how the answer is read off the trained "
                          "machine (the weights stay; the std calibration is refitted%s):\n  %s",
                          self.path, stale, _listed(differences))
          self._write_config(machine_config, train_config)
        return
      if differences:
        logging.warning("workdir %s holds the configuration of an attempt that saved no "
                        "checkpoint; replacing it with this run's. Differences:\n  %s", self.path,
                        _listed(differences))
      self._write_config(machine_config, train_config)
      if simulator is not None:
        self.record_simulator(simulator, machine_config)

  def _write_config(self, machine_config: MachineConfig, train_config: TrainConfig) -> None:
    write_json_atomically(self.file(CONFIG_FILE), {"machine": to_dict(machine_config),
                                                   "train": to_dict(train_config)})

  def record_simulator(self, simulator: Simulator, machine_config: MachineConfig) -> None:
    """Writes `simulator.json`: what the checkpoints of the run configured by `machine_config`
    assume of `simulator`."""
    write_json_atomically(self.file(SIMULATOR_FILE),
                          describe_simulator(simulator, machine_config.unconstrained_parameters))

  def check_simulator(self, simulator: Simulator, machine_config: MachineConfig) -> bool:
    """Whether the run records its simulator; refuses `simulator` if it differs from the record in
    what the checkpoints of the run (configured by `machine_config`, the recorded configuration)
    depend on, and warns if only the prior's box changed.

    Raises:
      ValueError: the parameter names, the observation_dim or the parameter_bijector (of a run
        with `unconstrained_parameters`) changed (each change is named), or `simulator.json` is
        damaged.
    """
    recorded = self._read_json(SIMULATOR_FILE)
    if recorded is None:
      return False
    current = describe_simulator(simulator, machine_config.unconstrained_parameters)
    required = ("parameter_names", "observation_dim", "prior_box")   # records older than bijectors
    if not set(required) <= recorded.keys():
      raise ValueError(f"{self.file(SIMULATOR_FILE)} is damaged: it lacks "
                       f"{', '.join(sorted(set(required) - recorded.keys()))}")
    changed = []
    # A run from before bijectors were recorded has none to compare.
    recorded_bijector, current_bijector = (recorded.get("parameter_bijector"),
                                           current["parameter_bijector"])
    if recorded_bijector is not None and current_bijector is not None:
      if not isinstance(recorded_bijector, dict) or set(recorded_bijector) != set(current_bijector):
        raise ValueError(f"{self.file(SIMULATOR_FILE)} is damaged: its parameter_bijector is "
                         f"{recorded_bijector!r}, expected keys {sorted(current_bijector)}")
      bijector_change = bijector_changes(recorded_bijector, current_bijector)
      if bijector_change:
        changed.append(f"parameter_bijector was {bijector_change}")
    require_same_simulator(recorded, current, simulator.spec, f"workdir {self.path}", changed)
    return True

  def has_progress(self) -> bool:
    """Whether the run saved anything worth resuming or reading: a checkpoint, a summary, a
    calibration or an evaluation."""
    saved = any(os.path.exists(self.file(name)) for name in (SUMMARY_FILE, CALIBRATION_FILE,
                                                              METRICS_FILE))
    return saved or (os.path.isdir(self.checkpoints) and bool(os.listdir(self.checkpoints)))

  def require_writable(self) -> None:
    """Creates the directory if needed; raises a clear error when it cannot hold a run.

    Raises:
      ValueError: the path exists but is not a directory, or lies below a file.
      PermissionError: the directory (or its parent) is not writable.
    """
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise ValueError(f"workdir {self.path} exists and is not a directory")
    try:
      os.makedirs(self.path, exist_ok=True)
    except PermissionError as error:
      raise PermissionError(f"workdir {self.path} cannot be created: {error.strerror}") from None
    except OSError as error:
      blocker = nearest_existing(self.path)
      reason = (f"{blocker} is a file, not a directory" if not os.path.isdir(blocker)
                else error.strerror or str(error))   # a read-only file system, say
      raise ValueError(f"workdir {self.path} cannot be created: {reason}") from None
    if not os.access(self.path, os.W_OK | os.X_OK):
      raise PermissionError(f"workdir {self.path} is not writable")

  def check(self, machine_config: MachineConfig, train_config: TrainConfig) -> bool:
    """Whether the workdir records a run; raises if that run has a different configuration.

    Read-only, for processes that join a run another one records (multi-worker training).
    """
    differences = self._differences(machine_config, train_config)
    if differences:
      raise self._configuration_mismatch(differences)
    return differences is not None

  def _differences(self, machine_config: MachineConfig, train_config: TrainConfig,
                   simulator: Optional[Simulator] = None) -> Optional[List[SettingDifference]]:
    """Each setting in which the recorded run differs from the given configuration (`[]`: none),
    or None when the workdir records no run. `observed_design` is left out for a `simulator`
    without a design, where it changes nothing (runs from before the setting recorded none)."""
    existing = self._read_json(CONFIG_FILE)
    if existing is None:
      return None
    self._parse_config(existing)   # a damaged file is named, not compared
    # A setting the recorded run predates had its default value in that run.
    defaults = {"machine": to_dict(MachineConfig(simulator=machine_config.simulator)),
                "train": to_dict(TrainConfig())}
    wanted = {"machine": to_dict(machine_config), "train": to_dict(train_config)}
    differences = []
    for section, values in wanted.items():
      recorded = {**defaults[section], **existing.get(section, {})}
      differences.extend(SettingDifference(f"{section}.{key}", recorded.get(key), value)
                         for key, value in values.items() if recorded.get(key) != value
                         and not (key == "observed_design" and simulator is not None
                                  and not simulator.design_dim))
    return differences

  def _configuration_mismatch(self, differences: List[SettingDifference]) -> ValueError:
    return ValueError(f"workdir {self.path} holds a run with a different configuration; use a new "
                      "--workdir or the same settings. Differences:\n  " + _listed(differences))

  def read_config(self) -> Tuple[MachineConfig, TrainConfig]:
    raw = self._read_json(CONFIG_FILE)
    if raw is None:
      raise FileNotFoundError(f"{self.file(CONFIG_FILE)} not found: {self.path} is not a training "
                              f"workdir")
    return self._parse_config(raw)

  def _parse_config(self, raw: Dict[str, Any]) -> Tuple[MachineConfig, TrainConfig]:
    """The configurations in `config.json`'s content `raw`; a ValueError naming the file if not."""
    try:
      return MachineConfig(**raw["machine"]), TrainConfig(**raw["train"])
    except (KeyError, TypeError) as error:   # a missing section, an unknown or mistyped setting
      raise ValueError(f"{self.file(CONFIG_FILE)} is damaged or was written by another alfi-tf "
                       f"version: {type(error).__name__}: {error}") from None
    except ValueError as error:   # a setting of the wrong type or out of range, named by the config
      raise ValueError(f"{self.file(CONFIG_FILE)} is damaged or was written by another alfi-tf "
                       f"version: {error}") from None

  def _read_json(self, name: str) -> Optional[Dict[str, Any]]:
    """The run's JSON object in file `name`, or None when it has not been written.

    Raises:
      ValueError: naming the file, when it holds no JSON object (this program writes them
        atomically, so something else damaged it).
    """
    return read_json_object(self.file(name))

  def read_summary(self) -> Dict[str, Any]:
    """The run's `training_summary.json` (`{}` before the first checkpoint).

    Raises:
      ValueError: naming the file and the field, when a field readers compute with
        (`SUMMARY_FIELD_TYPES`) has the wrong type.
    """
    summary = self._read_json(SUMMARY_FILE) or {}
    for field, kind in SUMMARY_FIELD_TYPES.items():
      value = summary.get(field)
      if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ValueError(f"{self.file(SUMMARY_FILE)} is damaged: {field} must be "
                         f"{'an object' if kind is dict else 'a number'}, got {value!r}")
    return summary

  def write_summary(self, summary: Dict[str, Any]) -> None:
    write_json_atomically(self.file(SUMMARY_FILE), summary)

  def read_calibration(self) -> Optional[Dict[str, Any]]:
    """The run's `calibration.json` (`alfi_tf.training.calibration`), or None."""
    return self._read_json(CALIBRATION_FILE)

  def write_calibration(self, calibration: Dict[str, Any]) -> None:
    write_json_atomically(self.file(CALIBRATION_FILE), calibration)


def _open_or_create(path: str) -> Tuple[IO[str], bool]:
  """`path` opened for reading and writing from its start, created if missing, and whether this
  call created it."""
  while True:
    try:
      return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), "r+"), True
    except FileExistsError:
      pass
    try:
      return open(path, "r+"), False
    except FileNotFoundError:   # removed in between (`Workdir.lock`): create it after all
      pass


def _still_named(path: str, stream: IO[str]) -> bool:
  """Whether `path` still names the file open in `stream`."""
  try:
    return os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
  except FileNotFoundError:
    return False


def nearest_existing(path: str) -> str:
  """`path`, or its nearest ancestor that exists (a directory, or the file in the way)."""
  path = os.path.abspath(path)
  while not os.path.lexists(path):
    path = os.path.dirname(path)
  return path


def leftovers_of_dead_processes(prefix: str) -> List[str]:
  """The paths `PREFIX<pid>` or `PREFIX<pid>-<anything>` whose writer, process `<pid>` of this
  host, no longer runs: what a killed writer left behind, told apart from a live writer's work."""
  found = []
  for path in sorted(glob.glob(glob.escape(prefix) + "*")):
    pid = path[len(prefix):].split("-")[0]
    if pid.isdigit() and not _process_is_alive(int(pid)):
      found.append(path)
  return found


def _process_is_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def restore_checkpoint(checkpoint: tf.train.Checkpoint, directory: str,
                       partial: bool = False) -> Optional[str]:
  """Restores the newest readable checkpoint of `directory` into `checkpoint`.

  A corrupted or partial checkpoint (say from a process killed while saving) is reported and skipped
  in favour of the one before it.

  Args:
    checkpoint: what to restore into.
    directory: a `tf.train.CheckpointManager` directory.
    partial: `checkpoint` holds only part of what was saved (e.g. the machine without the
      optimizer), so unmatched saved values are expected.

  Returns:
    The restored checkpoint's path, or None when `directory` holds no checkpoint.

  Raises:
    RuntimeError: checkpoints exist but none of them is readable.
  """
  state = tf.train.get_checkpoint_state(directory)
  paths = list(state.all_model_checkpoint_paths) if state else []
  for path in reversed(paths):
    try:
      status = checkpoint.restore(path)
      if partial:
        status.expect_partial()
      status.assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, IndexError, KeyError, ValueError) as error:
      logging.error("checkpoint %s is corrupted or partial (%s: %s); trying an older one", path,
                    type(error).__name__, str(error).splitlines()[0][:200])
      continue
    return path
  if paths:
    raise RuntimeError(f"no readable checkpoint in {directory}; move the directory away to start "
                       "over")
  return None


def load_machine(workdir: str, checkpoint: Optional[str] = None) -> InferenceMachine:
  """Rebuilds the machine of a workdir and restores its newest readable (or the given) checkpoint.

  Raises:
    FileNotFoundError: `workdir` is not a training workdir, or holds no checkpoint yet.
    RuntimeError: none of its checkpoints is readable.
    ValueError: its simulator's parameters or observation_dim changed since training
      (`Workdir.check_simulator`).
  """
  run = Workdir(workdir)
  machine_config, _ = run.read_config()
  simulator = get_simulator(machine_config.simulator)
  # Before its checkpoints are read into a machine they may not fit.
  run.check_simulator(simulator, machine_config)
  machine = InferenceMachine(simulator, machine_config)
  restorer = tf.train.Checkpoint(machine=machine)
  if checkpoint is not None:
    restorer.restore(checkpoint).expect_partial()
  else:
    checkpoint = restore_checkpoint(restorer, run.checkpoints, partial=True)
    if checkpoint is None:
      raise FileNotFoundError(f"no checkpoint in {run.checkpoints}: train first")
  apply_calibration(machine, run.read_calibration(), checkpoint, run.file(CALIBRATION_FILE))
  return machine


#: How a user mends a damaged calibration record (the training command refits it by itself).
REFIT_ADVICE = "; rerun the training command to refit it"


def calibration_fits(machine: InferenceMachine, calibration: Dict[str, Any],
                     checkpoint: str) -> bool:
  """Whether the `calibration.json` record `calibration` was fitted to `checkpoint` (a path) and
  to `machine`'s answer (`config.ANSWER_FIELDS`)."""
  return ((calibration.get("checkpoint"), recorded_answer_settings(calibration))
          == (os.path.basename(checkpoint), answer_settings(machine.config)))


def apply_calibration(machine: InferenceMachine, calibration: Optional[Dict[str, Any]],
                      checkpoint: str, source: str = CALIBRATION_FILE) -> None:
  """Gives `machine` the std factors of `calibration` (read from the file `source`) when they were
  fitted to `checkpoint`.

  Factors fitted to another checkpoint (training went on after the calibration, or an older
  checkpoint was restored) or to another answer (`config.ANSWER_FIELDS` changed since) would
  misstate the widths, so they are left off, with a warning.

  Raises:
    ValueError: naming `source`, when its factors are missing or not `[C, d]` positive numbers
      (and for `answer_starts > 1`, its pooled factors: `recorded_pooled_std_scales`).
  """
  if calibration is None:
    return
  if not calibration_fits(machine, calibration, checkpoint):
    logging.warning("%s was fitted to checkpoint %s with %s, not to %s with %s: the answers' std "
                    "are not recalibrated (rerun the training command to refit them)",
                    CALIBRATION_FILE, calibration.get("checkpoint"),
                    recorded_answer_settings(calibration), os.path.basename(checkpoint),
                    answer_settings(machine.config))
    return
  dim = machine.simulator.parameter_dim
  damaged = f"{source} is damaged: {{}}{REFIT_ADVICE}"
  try:
    scales = check_std_scales(calibration.get("std_scales"), dim)
  except (TypeError, ValueError) as error:
    raise ValueError(damaged.format(
        f"{error} (std_scales: {str(calibration.get('std_scales'))[:80]})")) from None
  try:   # absent from records of before the shifts: the answer's mean as it is
    shifts = calibration.get("mean_shifts")
    shifts = None if shifts is None else check_mean_shifts(shifts, dim)
  except (TypeError, ValueError) as error:
    raise ValueError(damaged.format(f"{error} (mean_shifts: {str(shifts)[:80]})")) from None
  try:   # its message quotes the pooled record itself
    pooled = recorded_pooled_std_scales(calibration, machine.config.answer_starts, dim)
  except (TypeError, ValueError) as error:
    raise ValueError(damaged.format(error)) from None
  machine.set_std_scales(scales)
  machine.set_mean_shifts(shifts)
  machine.set_pooled_std_scales(pooled)
