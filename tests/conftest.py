"""Shared pytest configuration."""

import os

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
