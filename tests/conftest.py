"""Shared pytest configuration."""

import os
import signal

# Before the test modules first import TensorFlow: its C++ logging is configured at import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

# Two logical CPU devices, so that data-parallel (MirroredStrategy) training runs in-process on any
# machine. Must happen before TensorFlow runs its first operation; the default strategy still
# places everything on CPU:0.
NUM_CPU_DEVICES = 2
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration() for _ in range(NUM_CPU_DEVICES)])

# The binaries' tests send Ctrl-C (SIGINT) to subprocesses as a terminal does. A test run started
# in the background by a script (`pytest ... &`) ignores SIGINT, and its subprocesses would inherit
# that and never see the Ctrl-C (failing those tests); with a handler here instead, they start with
# the default disposition after exec, as a terminal's foreground job does.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)
