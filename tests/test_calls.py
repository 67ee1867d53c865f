"""The registry of running numpy simulator calls (`alfi_tf.simulators.calls`)."""

import os
import threading
import time

import numpy as np
import tensorflow as tf

from alfi_tf import NumpySimulator, box_prior
from alfi_tf.simulators import ExternalSimulator, calls

EXAMPLE_COMMAND = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "examples", "oscillator", "oscillator.sh")


class _Observing(NumpySimulator):
  """Records, from inside its own call, what the registry says is running."""

  name = "observing"

  def __init__(self):
    super().__init__(["a"], 1, box_prior([0.0], [1.0]))
    self.seen = []

  def simulate_numpy(self, theta, num_obs, rng):
    self.seen.append(calls.oldest())
    return np.zeros((len(theta), num_obs, 1))


def test_a_numpy_simulator_call_is_registered_while_it_runs():
  simulator = _Observing()
  assert calls.oldest() is None
  before = time.monotonic()
  simulator.simulate(tf.constant([[0.5], [0.75]]), 3, tf.constant([1, 2]))
  tf.function(simulator.simulate)(tf.constant([[0.25]]), 3, tf.constant([1, 2]))
  eager, traced = simulator.seen
  assert (eager.simulator, eager.method, eager.parameter_names) == (
      "observing", "_Observing.simulate_numpy", ("a",))
  np.testing.assert_array_equal(eager.theta, [[0.5], [0.75]])
  np.testing.assert_array_equal(traced.theta, [[0.25]])
  assert before <= eager.started <= traced.started and eager.seconds() >= 0
  assert calls.oldest() is None   # both ended


def test_the_oldest_of_several_running_calls_is_named():
  with calls.in_flight("first", "A.simulate_numpy", np.zeros((1, 1)), ["a"]) as first:
    with calls.in_flight("second", "B.simulate_numpy", np.zeros((1, 1)), ["a"]):
      assert calls.oldest() is first
    assert calls.oldest() is first
  assert calls.oldest() is None


def test_an_external_programs_calls_end_at_their_own_timeout_and_are_not_registered(tmp_path):
  script = tmp_path / "slow.sh"   # sleeps, then runs the example oscillator
  script.write_text(f"#!/bin/sh\nsleep 1\nexec sh {EXAMPLE_COMMAND} \"$@\"\n")
  simulator = ExternalSimulator(f"sh {script}", ["damping", "frequency"], [0.1, 0.5], [1.0, 3.0],
                                observation_dim=8)
  seen = []
  watcher = threading.Thread(target=lambda: [seen.append(calls.oldest()) or time.sleep(0.05)
                                             for _ in range(20)])
  watcher.start()
  simulated = simulator.simulate(tf.constant([[0.4, 2.0]]), 3, tf.constant([1, 2]))
  watcher.join()
  assert simulated.shape == (1, 3, 8) and seen == [None] * 20
