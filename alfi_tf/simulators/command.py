"""Simulators outside Python: an executable run once per step, talking through CSV files.

Protocol (one call per machine step), for a command `CMD`:

    CMD PARAMETERS_CSV OUTPUT_CSV NUM_OBS SEED

* `PARAMETERS_CSV`: a header line with the parameter names, then one row per parameter vector
  (`K = batch * num_samples` rows, raw units, `%.9g`).
* The command writes `OUTPUT_CSV`: `K * NUM_OBS` rows of `observation_dim` comma-separated numbers, all
  `NUM_OBS` observations of the first parameter vector first, then those of the second, and so on.
  Lines starting with `#` are ignored.
* `SEED`: an integer the simulator may use to be reproducible.
* Exit status 0 on success; anything else is reported with the command's stderr.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import tempfile
from typing import Sequence

import numpy as np


class CommandSimulator:
  """A `simulate(parameters [K, d], num_obs, seed [2]) -> [K, num_obs, d_x]` running `command`.

  Args:
    command: the executable and its leading arguments, as a shell-like string.
    parameter_names: written as the CSV header.
    observation_dim: `d_x`, checked against what the command returns.
    timeout: seconds allowed per call.
  """

  def __init__(self, command: str, parameter_names: Sequence[str], observation_dim: int,
               timeout: float = 600.0):
    self.argv = shlex.split(command)
    if not self.argv:
      raise ValueError("the simulator command is empty")
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
      raise ValueError("the simulator timeout must be a positive number of seconds, got "
                       f"{timeout!r}")
    self.command = command
    self.parameter_names = list(parameter_names)
    self.observation_dim = observation_dim
    self.timeout = timeout
    self.calls = 0

  def __call__(self, parameters: np.ndarray, num_obs: int, seed: np.ndarray) -> np.ndarray:
    self.calls += 1
    where = f"simulator command {self.command!r} (step {self.calls})"
    with tempfile.TemporaryDirectory(prefix="alfi-sim-") as scratch:
      inputs = os.path.join(scratch, "parameters.csv")
      outputs = os.path.join(scratch, "simulations.csv")
      np.savetxt(inputs, parameters, delimiter=",", fmt="%.9g",
                 header=",".join(self.parameter_names), comments="")
      # A non-negative integer seed derived from the machine's stateless seed.
      integer_seed = int(np.asarray(seed, np.int64)[0] & 0x7FFFFFFF) * 65536 + int(
          np.asarray(seed, np.int64)[1] & 0xFFFF)
      completed = self._run(self.argv + [inputs, outputs, str(num_obs), str(integer_seed)], where)
      if completed.returncode != 0:
        raise RuntimeError(f"{where} failed with exit status {completed.returncode}: "
                           f"{completed.stderr.strip()[-2000:]}")
      if not os.path.exists(outputs):
        raise RuntimeError(f"{where} exited 0 but wrote no {os.path.basename(outputs)}")
      try:
        values = np.loadtxt(outputs, delimiter=",", comments="#", ndmin=2, dtype=np.float64)
      except ValueError as error:
        raise RuntimeError(f"{where} wrote unreadable output: {error}") from error
    return self._reshaped(values, parameters.shape[0], num_obs, where)

  def _run(self, argv, where: str) -> subprocess.CompletedProcess:
    """Runs the command in a session of its own, so that a timeout kills it with its children."""
    try:
      process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
    except OSError as error:
      raise RuntimeError(f"{where} could not be started: {error}") from error
    try:
      stdout, stderr = process.communicate(timeout=self.timeout)
    except subprocess.TimeoutExpired as error:
      os.killpg(process.pid, signal.SIGKILL)
      process.communicate()
      raise RuntimeError(f"{where} timed out after {self.timeout:g}s (killed with its child "
                         "processes)") from error
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)

  def _reshaped(self, values: np.ndarray, count: int, num_obs: int, where: str) -> np.ndarray:
    """`[count * num_obs, d_x]` rows -> `[count, num_obs, d_x]` float32, or a clear error."""
    expected = (count * num_obs, self.observation_dim)
    if values.shape != expected:
      raise RuntimeError(f"{where} returned {values.shape[0]} rows of {values.shape[1]} values; "
                         f"expected {expected[0]} rows ({count} parameter vectors x "
                         f"{num_obs} observations) of {expected[1]}")
    return values.reshape(count, num_obs, self.observation_dim).astype(np.float32)
