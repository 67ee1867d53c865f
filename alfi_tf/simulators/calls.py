"""The numpy simulator calls running in this process, so that one that never returns can be named.

A Python simulator that hangs (a loop that never ends, a lock never released, a solver that stalls
on some parameters) leaves TensorFlow waiting inside `tf.numpy_function` for ever, and nothing in
the library can interrupt it there. What can be done from outside the call is to notice it: every
`NumpySimulator` call through TensorFlow is registered here while it runs (`in_flight`), and a
watchdog (the binaries' `--simulator_timeout`, `experiments.cli`) asks for the `oldest` one and
stops the program with a message naming the simulator, the method and the parameters it was
called with.

The registry is process-wide and thread-safe: tf.data and the unrolled loop call simulators from
TensorFlow's threads.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from typing import Dict, Iterator, NamedTuple, Optional, Sequence

import numpy as np


class SimulatorCall(NamedTuple):
  """One running call.

  Attributes:
    simulator: the simulator's name, as messages name it.
    method: e.g. `MySimulator.simulate_numpy`.
    theta: `[K, d]` the parameters it was called with.
    parameter_names: the simulator's `d` parameter names.
    started: `time.monotonic()` at its start.
  """

  simulator: str
  method: str
  theta: np.ndarray
  parameter_names: Sequence[str]
  started: float

  def seconds(self) -> float:
    """How long it has been running."""
    return time.monotonic() - self.started


_LOCK = threading.Lock()
_RUNNING: Dict[int, SimulatorCall] = {}
_KEYS = itertools.count()


@contextlib.contextmanager
def in_flight(simulator: str, method: str, theta: np.ndarray,
              parameter_names: Sequence[str]) -> Iterator[SimulatorCall]:
  """Registers the call made inside the `with` block for as long as it runs."""
  call = SimulatorCall(simulator, method, theta, tuple(parameter_names), time.monotonic())
  with _LOCK:
    key = next(_KEYS)
    _RUNNING[key] = call
  try:
    yield call
  finally:
    with _LOCK:
      del _RUNNING[key]


def oldest() -> Optional[SimulatorCall]:
  """The call running longest, or None when none runs."""
  with _LOCK:
    return min(_RUNNING.values(), key=lambda call: call.started, default=None)
