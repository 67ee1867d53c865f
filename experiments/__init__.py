"""absl binaries, installed as commands: `alfi-train`, `alfi-evaluate`, `alfi-export`, `alfi-infer`
and `alfi-report` (or `python -m experiments.train`, ...).

On a machine without an NVIDIA GPU, TensorFlow's start-up complaints about missing CUDA libraries
and drivers are noise: the binaries hide them (set `TF_CPP_MIN_LOG_LEVEL=0` to see everything).
"""

import glob
import os


def _import_tensorflow_quietly() -> None:
  """Imports TensorFlow with its C++ start-up messages (CUDA plug-in registration) silenced."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if os.environ["TF_CPP_MIN_LOG_LEVEL"] != "3":
    return   # the user asked for TensorFlow's messages
  saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)
  try:
    import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
  finally:
    os.dup2(saved, 2)
    os.close(null)
    os.close(saved)


if not glob.glob("/dev/nvidia[0-9]*"):
  _import_tensorflow_quietly()
