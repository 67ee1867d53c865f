"""Shared pytest configuration."""

import os

# Before the test modules first import TensorFlow: its C++ logging is configured at import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
