"""Ctrl-C and SIGTERM stop a binary, even while the main thread waits on a simulator call that
never returns."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from experiments import cli

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A binary's main whose simulator call hangs, as a numpy simulator stuck in a loop or on I/O does.
HANGING_BINARY = textwrap.dedent("""
    import sys, time
    import numpy as np
    import tensorflow as tf
    from experiments import cli

    def hang():
      print("simulating", flush=True)
      time.sleep(10**6)
      return np.float32(0)

    def main(argv):
      tf.function(lambda: tf.numpy_function(hang, [], tf.float32))()

    cli.run(main)
""")


def _wait_for(condition, seconds: float) -> bool:
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    if condition():
      return True
    time.sleep(0.1)
  return condition()


def _start(tmp_path, source: str):
  """Runs the binary `source` as a subprocess: `(process, path of its stderr)`."""
  script = tmp_path / "binary.py"
  script.write_text(source)
  stderr_path = tmp_path / "stderr"
  with open(stderr_path, "w") as stderr:
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                               stderr=stderr, env={**os.environ, "PYTHONPATH": REPOSITORY})
  return process, stderr_path


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_a_second_ctrl_c_stops_a_binary_stuck_in_a_simulator_call(tmp_path):
  process, stderr_path = _start(tmp_path, HANGING_BINARY)
  try:
    assert process.stdout.readline().strip() == "simulating"
    process.send_signal(signal.SIGINT)
    assert _wait_for(lambda: "press Ctrl-C again" in stderr_path.read_text(),
                     cli.INTERRUPT_GRACE_SECONDS + 10), stderr_path.read_text()
    assert process.poll() is None   # the first Ctrl-C waits for the call, as before
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 130
    assert "stopped at once" in stderr_path.read_text()
  finally:
    process.kill()
    process.wait()


# A binary's main busy in Python (a training loop between steps).
SLEEPING_BINARY = textwrap.dedent("""
    import time
    from experiments import cli

    def main(argv):
      print("working", flush=True)
      time.sleep(10**6)

    cli.run(main)
""")


@pytest.mark.skipif(os.name != "posix", reason="signals")
@pytest.mark.parametrize("source, first_line, message", [
    (SLEEPING_BINARY, "working", "terminated (SIGTERM; re-running the same command resumes"),
    (HANGING_BINARY, "simulating", "did not stop within 3 s (a simulator call still running): "
                                   "stopped at once"),
])
def test_sigterm_stops_a_binary_with_one_message(tmp_path, source, first_line, message):
  """A batch scheduler's SIGTERM ends a binary with status 143 and one line saying so, promptly
  even while a simulator call hangs (it does not wait for a second signal as Ctrl-C does)."""
  process, stderr_path = _start(tmp_path, source)
  try:
    assert process.stdout.readline().strip() == first_line
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=cli.INTERRUPT_GRACE_SECONDS + 20) == 143
    assert message in stderr_path.read_text()
    assert "Traceback" not in stderr_path.read_text()
  finally:
    process.kill()
    process.wait()


# A binary whose Python simulator never returns, with a worker process of its own that would
# outlive it.
STUCK_SIMULATOR_BINARY = textwrap.dedent("""
    import multiprocessing, time
    import tensorflow as tf
    from alfi_tf import NumpySimulator, box_prior
    from experiments import cli

    cli.define_simulator_timeout()

    class Stuck(NumpySimulator):
      name = "stuck"

      def __init__(self):
        super().__init__(["a", "b"], 1, box_prior([0.0, 0.0], [1.0, 1.0]))

      def simulate_numpy(self, theta, num_obs, rng):
        time.sleep(10**6)

    def main(argv):
      worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(10**6,))
      worker.start()
      print(worker.pid, flush=True)
      Stuck().simulate(tf.constant([[0.25, 0.5]]), 3, tf.constant([1, 2]))

    if __name__ == "__main__":
      cli.run(main)
""")


def _is_gone(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as stat:
      return stat.read().rsplit(")", 1)[1].split()[0] == "Z"   # a zombie has ended
  except FileNotFoundError:
    return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_simulator_call_past_the_timeout_stops_the_binary_and_its_workers(tmp_path):
  script = tmp_path / "binary.py"
  script.write_text(STUCK_SIMULATOR_BINARY)
  process = subprocess.Popen([sys.executable, str(script), "--simulator_timeout=2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": REPOSITORY})
  try:
    worker = int(process.stdout.readline())
    _, stderr = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 1, stderr
  assert ("error: simulator 'stuck': Stuck.simulate_numpy has not returned after 2 s "
          "(--simulator_timeout), called for 1 parameter vector(s): (a=0.25, b=0.5); stopped"
          ) in stderr
  assert "Traceback" not in stderr
  assert _wait_for(lambda: _is_gone(worker), 10)
