"""Ctrl-C stops a binary even while the main thread waits on a simulator call that never returns."""

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


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_a_second_ctrl_c_stops_a_binary_stuck_in_a_simulator_call(tmp_path):
  script = tmp_path / "hanging_binary.py"
  script.write_text(HANGING_BINARY)
  stderr_path = tmp_path / "stderr"
  with open(stderr_path, "w") as stderr:
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                               stderr=stderr, env={**os.environ, "PYTHONPATH": REPOSITORY})
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
