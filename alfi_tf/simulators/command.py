"""Simulators outside Python: an executable run once per step, talking through CSV files.

Protocol (one call per machine step), for a command `CMD`:

    CMD PARAMETERS_CSV OUTPUT_CSV NUM_OBS SEED

* `PARAMETERS_CSV`: a header line with the parameter names, then one row per parameter vector
  (`K = batch * num_samples` rows, raw units, `%.9g`).
* The command writes `OUTPUT_CSV`: `K * NUM_OBS` rows of `observation_dim` comma-separated numbers, all
  `NUM_OBS` observations of the first parameter vector first, then those of the second, and so on.
  Lines starting with `#` are ignored.
* `SEED`: an integer the simulator may use to be reproducible.
* Exit status 0 on success; anything else is reported with the command's stderr (after
  `retries` further attempts, for transient failures).
* The call ends when the command exits: processes it leaves running in the background are killed
  then, and its stdout is discarded.

`CommandSimulator` is this protocol as a plain `simulate` function (ask/tell, the infer binary);
`ExternalSimulator` makes a command a full `Simulator` with a box prior, so that a machine can be
trained on it (`--simulator=command`).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import time
import json
from typing import Any, Dict, List, Sequence

import numpy as np
from absl import logging

from alfi_tf.simulators.base import (NumpySimulator, box_prior, check_box,
                                     observations_as_float32)

#: Specs of external simulators: the prefix, then their settings as JSON.
COMMAND_SPEC_PREFIX = "command:"


#: The longest a call may be allowed to run, about 11.6 days: a longer timeout is a typo (or
#: beyond what the clock functions can represent, from about 9.2e9 s).
MAX_TIMEOUT_SECONDS = 1e6
#: What `is_valid_timeout` requires, for messages.
TIMEOUT_RULE = f"must be a positive number of seconds, at most {MAX_TIMEOUT_SECONDS:g}"


def split_command(command: str) -> List[str]:
  """The words of `command` (the executable, then its leading arguments), split as a POSIX shell
  splits them (`shlex.split`).

  Raises:
    ValueError: naming the command, when its quotes do not pair up or it ends in a backslash.
  """
  try:
    return shlex.split(command)
  except ValueError as error:   # shlex says only "No closing quotation" / "No escaped character"
    raise ValueError(f"the simulator command {command!r} cannot be split into a program and its "
                     f"arguments as a shell would ({error}): check its quotes and "
                     "backslashes") from None


def is_valid_timeout(seconds) -> bool:
  """Whether `seconds` is a usable timeout for one command call (see `TIMEOUT_RULE`)."""
  return (isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
          and 0 < seconds <= MAX_TIMEOUT_SECONDS)


class CommandSimulator:
  """A `simulate(parameters [K, d], num_obs, seed [2]) -> [K, num_obs, d_x]` running `command`.

  Args:
    command: the executable and its leading arguments, as a shell-like string.
    parameter_names: written as the CSV header.
    observation_dim: `d_x`, checked against what the command returns.
    timeout: seconds allowed per call.
    retries: further attempts after a failed call (exit status, timeout, missing or malformed
      output) before the failure is reported.
  """

  def __init__(self, command: str, parameter_names: Sequence[str], observation_dim: int,
               timeout: float = 600.0, retries: int = 0):
    self.argv = split_command(command)
    if not self.argv:
      raise ValueError("the simulator command is empty")
    if not is_valid_timeout(timeout):
      raise ValueError(f"the simulator timeout {TIMEOUT_RULE}, got {timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
      raise ValueError(f"the simulator retries must be an integer >= 0, got {retries!r}")
    # The names are the CSV header's columns: a comma, quote or line break would add columns.
    unusable = [name for name in parameter_names if any(c in str(name) for c in ',"\n\r')]
    if unusable:
      raise ValueError(f"parameter names of a simulator command become CSV columns and may not "
                       f"hold commas, quotes or line breaks, got {unusable}")
    self.retries = retries
    self.command = command
    self.parameter_names = list(parameter_names)
    self.observation_dim = observation_dim
    self.timeout = timeout
    self.calls = 0
    #: How a call is named in errors: one call per inference step (ask/tell), by default.
    self.call_label = "step"

  def __call__(self, parameters: np.ndarray, num_obs: int, seed: np.ndarray) -> np.ndarray:
    self.calls += 1
    where = f"simulator command {self.command!r} ({self.call_label} {self.calls})"
    for attempt in range(self.retries + 1):
      try:
        return self._call_once(parameters, num_obs, seed, where)
      except RuntimeError as error:
        if attempt == self.retries:
          tries = f" (tried {attempt + 1} times)" if attempt else ""
          raise RuntimeError(f"{error}{tries}") from None
        logging.warning("%s; retrying (%d of %d)", error, attempt + 1, self.retries)
    raise AssertionError("unreachable")

  def _call_once(self, parameters: np.ndarray, num_obs: int, seed: np.ndarray,
                 where: str) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="alfi-sim-") as scratch:
      inputs = os.path.join(scratch, "parameters.csv")
      outputs = os.path.join(scratch, "simulations.csv")
      np.savetxt(inputs, parameters, delimiter=",", fmt="%.9g",
                 header=",".join(self.parameter_names), comments="")
      # A non-negative integer seed derived from the machine's stateless seed.
      integer_seed = int(np.asarray(seed, np.int64)[0] & 0x7FFFFFFF) * 65536 + int(
          np.asarray(seed, np.int64)[1] & 0xFFFF)
      self._run(self.argv + [inputs, outputs, str(num_obs), str(integer_seed)], scratch, where)
      if not os.path.exists(outputs):
        raise RuntimeError(f"{where} exited 0 but wrote no {os.path.basename(outputs)}")
      if not os.path.isfile(outputs):
        raise RuntimeError(f"{where} exited 0 but its {os.path.basename(outputs)} is not a "
                           "regular file (a directory?); the simulations must be written to it as "
                           "CSV")
      try:
        values = np.loadtxt(outputs, delimiter=",", comments="#", ndmin=2, dtype=np.float64)
      except (ValueError, OSError) as error:
        raise RuntimeError(f"{where} wrote unreadable output: {error}") from error
    return self._reshaped(values, parameters, num_obs, where)

  def _run(self, argv: Sequence[str], scratch: str, where: str) -> None:
    """Runs the command in a session of its own and waits for it to exit.

    Its stderr goes to a file in `scratch` (and its stdout nowhere) rather than to pipes: waiting
    for pipes to close would also wait for any background process the command left holding them.
    The command's whole process group is killed when it exits or times out: nothing a call started
    outlives it.

    Raises:
      RuntimeError: the command could not be started, timed out or exited with a non-zero status;
        the message ends with the tail of its stderr.
    """
    stderr_path = os.path.join(scratch, "stderr.txt")
    try:
      with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=stderr, start_new_session=True)
    except OSError as error:
      raise RuntimeError(f"{where} could not be started: {error}") from error
    exited = _wait_without_reaping(process.pid, self.timeout)
    # Killed while its zombie still holds the group's id, which no other process can then take.
    _kill_process_group(process.pid)
    returncode = process.wait()
    if not exited:
      raise RuntimeError(f"{where} timed out after {self.timeout:g}s (killed with its child "
                         f"processes){_tail(stderr_path, ': ')}")
    if returncode != 0:
      raise RuntimeError(f"{where} failed with exit status {returncode}"
                         f"{_tail(stderr_path, ': ')}")

  def _reshaped(self, values: np.ndarray, parameters: np.ndarray, num_obs: int,
                where: str) -> np.ndarray:
    """`[K * num_obs, d_x]` rows -> `[K, num_obs, d_x]` float32 for `parameters [K, d]`, or a
    clear error."""
    count = parameters.shape[0]
    expected = (count * num_obs, self.observation_dim)
    if values.shape != expected:
      raise RuntimeError(f"{where} returned {values.shape[0]} rows of {values.shape[1]} values; "
                         f"expected {expected[0]} rows ({count} parameter vectors x "
                         f"{num_obs} observations) of {expected[1]}")
    return observations_as_float32(values.reshape(count, num_obs, self.observation_dim),
                                   parameters, self.parameter_names, where,
                                   source=f"simulator command {self.command!r}")


def _wait_without_reaping(pid: int, timeout: float) -> bool:
  """Whether the child `pid` exited within `timeout` seconds; it is left unreaped (a zombie)."""
  deadline = time.monotonic() + timeout
  delay = 0.0005
  while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
    if time.monotonic() >= deadline:
      return False
    time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
    delay = min(2 * delay, 0.05)   # as subprocess's own wait: quick calls return quickly
  return True


def _kill_process_group(group: int) -> None:
  """SIGKILLs every process left in `group` (none left is fine)."""
  try:
    os.killpg(group, signal.SIGKILL)
  except ProcessLookupError:
    pass


def _tail(path: str, prefix: str, limit: int = 2000) -> str:
  """`prefix` and the last `limit` characters of the text file `path`, stripped; "" if it has none.
  Only the tail is read: a command may write any amount to its stderr."""
  with open(path, "rb") as stream:
    stream.seek(max(0, os.path.getsize(path) - limit))
    text = stream.read().decode(errors="replace").strip()
  return f"{prefix}{text}" if text else ""


class ExternalSimulator(NumpySimulator):
  """An external program (the protocol above) as a trainable simulator with a box prior.

  Args:
    command: the executable and its leading arguments.
    parameter_names: the `d` parameter names.
    prior_low, prior_high: the uniform prior's box, `d` numbers each.
    observation_dim: `d_x`.
    timeout, retries: as for `CommandSimulator`.
  """

  name = "command"
  limits_its_own_calls = True   # each call ends at its timeout, retried, or fails

  def __init__(self, command: str, parameter_names: Sequence[str], prior_low: Sequence[float],
               prior_high: Sequence[float], observation_dim: int, timeout: float = 600.0,
               retries: int = 2):
    low, high = np.asarray(prior_low, np.float64), np.asarray(prior_high, np.float64)
    if low.shape != (len(parameter_names),) or high.shape != low.shape:
      raise ValueError(f"the prior's low and high need one value per parameter "
                       f"({len(parameter_names)}: {', '.join(parameter_names)}), got "
                       f"{low.tolist()} and {high.tolist()}")
    check_box(low, high, f"simulator command {command!r}")
    super().__init__(parameter_names, observation_dim, box_prior(low.tolist(), high.tolist()))
    self.run_command = CommandSimulator(command, parameter_names, observation_dim, timeout, retries)
    self.run_command.call_label = "call"   # training calls it per data chunk and per step
    self._settings = {"command": command, "parameter_names": list(parameter_names),
                      "prior_low": low.tolist(), "prior_high": high.tolist(),
                      "observation_dim": int(observation_dim), "timeout": timeout,
                      "retries": retries}
    self.spec = COMMAND_SPEC_PREFIX + json.dumps(self._settings, sort_keys=True)

  @classmethod
  def from_spec(cls, spec: str) -> "ExternalSimulator":
    """The simulator a `command:{...}` spec describes."""
    try:
      settings: Dict[str, Any] = json.loads(spec[len(COMMAND_SPEC_PREFIX):])
      return cls(**settings)
    except (ValueError, TypeError) as error:
      raise ValueError(f"simulator spec {spec!r} is not a valid command simulator: {error}") from None

  def simulate_numpy(self, theta: np.ndarray, num_obs: int, rng: np.random.Generator) -> np.ndarray:
    # The command's seed is drawn from the stateless generator: runs stay reproducible as far as
    # the command honours its seed.
    return self.run_command(theta, num_obs, rng.integers(0, 2 ** 31 - 1, size=2))
