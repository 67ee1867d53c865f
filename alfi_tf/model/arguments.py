"""Checks of the arguments handed to the model layer's public methods (the machine, the Inferrer,
the NPE baseline): a bad argument fails here, naming it and what was expected, instead of deep
inside a TensorFlow graph."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from alfi_tf.checks import check_observations, require_real_numbers
from alfi_tf.simulators import NumpySimulator, Simulator

#: The values an int32 seed tensor can hold.
INT32_RANGE = (-2 ** 31, 2 ** 31 - 1)


def is_integer(value) -> bool:
  """Whether `value` is a Python or numpy integer (a bool, 1.0 or "5" is not)."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def require_positive_integer(name: str, value) -> int:
  """Returns `value` as an int; a ValueError naming `name` unless it is an integer >= 1."""
  if not is_integer(value) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def scalar_value(value):
  """A scalar tensor whose value is known (eager, or a constant) as a Python number, anything else
  unchanged: Keras hands numpy scalars to a model's `call` as tensors, so `num_steps=np.int64(5)`
  arrives as one."""
  if tf.is_tensor(value) and value.shape.rank == 0:
    known = tf.get_static_value(value)
    if known is not None:
      return known.item()
  return value


def check_step(step):
  """The step an answer was read after (0: the start), as an int, or an integer scalar tensor in a
  graph; a ValueError unless it is an integer >= 0."""
  step = scalar_value(step)
  if tf.is_tensor(step) and step.dtype.is_integer and step.shape.rank == 0:
    return tf.cast(step, tf.int32)
  if not is_integer(step) or step < 0:
    raise ValueError(f"step must be a non-negative integer (the steps run before the answer: 0 "
                     f"for the start, T for the final answer), got {step!r}")
  return int(step)


def check_answer_psi(psi, psi_size: int) -> tf.Tensor:
  """An answer's parameters `psi [batch, P]` as float32, or one ValueError saying what they must
  be (a pooled result has none)."""
  if psi is None:
    raise ValueError("psi is None: runs pooled over several starts (num_starts > 1) have no single "
                     "answer proposal; use a result of one start per data set")
  return check_float_tensor(psi, "psi", [None, psi_size],
                            f"[batch, {psi_size}] (the answer's parameters: InferenceResult.psi, "
                            "or infer's answer_psi)")


def check_seed(seed) -> int:
  """Returns `seed` as an int; a ValueError unless it is an int32 (it becomes the int32 seed tensor
  `[seed, 0]`, so anything else would fail deep inside TensorFlow).

  The whole int32 range, not the configurations' `SEED_RANGE`: the seeds handed here are often
  derived ones, `seed + k` of a configuration's or a flag's seed at the top of `SEED_RANGE`, and
  the functions checking them derive no further seeds by addition.
  """
  if not is_integer(seed) or not INT32_RANGE[0] <= seed <= INT32_RANGE[1]:
    raise ValueError(f"seed must be an integer in [{INT32_RANGE[0]}, {INT32_RANGE[1]}] (an int32 "
                     f"seed), got {seed!r}")
  return int(seed)


def check_seed_tensor(seed) -> tf.Tensor:
  """A stateless seed as int32 `[2]`; a ValueError unless `seed` is an integer tensor or array of
  that shape (a plain int would fail inside the first random op, far from the call)."""
  if is_integer(seed):
    raise ValueError(f"seed must be an int32 tensor of shape [2] (a stateless seed, e.g. "
                     f"tf.constant([{seed}, 0])), got the integer {seed!r}")
  seed = tf.convert_to_tensor(seed)
  if not seed.dtype.is_integer or not seed.shape.is_compatible_with([2]):
    raise ValueError(f"seed must be an int32 tensor of shape [2] (a stateless seed), got "
                     f"{seed.dtype.name} of shape {seed.shape}")
  values = tf.get_static_value(seed)
  # A wider integer would wrap around when cast: [2**32 + 1, 0] would be the seed [1, 0].
  if values is not None and np.any((values < INT32_RANGE[0]) | (values > INT32_RANGE[1])):
    raise ValueError(f"seed must be an int32 tensor of shape [2] (a stateless seed), got "
                     f"{values.tolist()}, outside int32's range")
  return tf.cast(seed, tf.int32)


def check_float_tensor(value, name: str, shape: list, expected: str) -> tf.Tensor:
  """`value` as float32 (float64 data welcome); a ValueError naming `name` unless its shape is
  compatible with `shape` (None: any size), described to the user as `expected`.

  In eager mode the values are checked too: NaN/inf would only come back as a NaN answer. (In a
  graph the values are unknown; `Inferrer` checks them before, and `fit`'s batches are checked in
  its graph by `InferenceMachine._unpack_batch`.)
  """
  if tf.is_tensor(value) or isinstance(value, tf.Variable):
    value = tf.cast(value, tf.float32)
  else:
    value = tf.constant(_numeric_array(value, name), tf.float32)
  if not value.shape.is_compatible_with(shape):
    raise ValueError(f"{name} must have shape {expected}, got shape {value.shape}")
  if tf.executing_eagerly() and not np.all(np.isfinite(value.numpy())):
    raise ValueError(f"{name} contains NaN/inf values")
  return value


def _numeric_array(value, name: str) -> np.ndarray:
  """`value` as a real-valued numpy array; a ValueError naming `name` otherwise."""
  array = np.asarray(value)
  if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
    raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
  return array


def optional_float_tensor(value, name: str, shape: list,
                          expected: str) -> Optional[tf.Tensor]:
  """`check_float_tensor`, passing None through."""
  return None if value is None else check_float_tensor(value, name, shape, expected)


def check_jit_compile(jit_compile, simulator: Simulator) -> None:
  """A ValueError when XLA is asked for (`jit_compile=True`) with a simulator that runs numpy
  code, which XLA cannot compile (it would fail at the first call, deep inside TensorFlow)."""
  if jit_compile is True and isinstance(simulator, NumpySimulator):
    raise ValueError(f"jit_compile needs a TF-native simulator; {simulator.name!r} runs numpy code "
                     "(tf.numpy_function), which XLA cannot compile")


def check_model_arguments(simulator, config, config_type: type) -> None:
  """A TypeError unless `simulator` is a `Simulator` (not its name) and `config` a `config_type`,
  and a ValueError unless the config names that simulator."""
  if not isinstance(simulator, Simulator):
    raise TypeError(f"simulator must be a Simulator (e.g. alfi_tf.get_simulator({simulator!r}) "
                    f"for a name), got {type(simulator).__name__}")
  if not isinstance(config, config_type):
    raise TypeError(f"config must be a {config_type.__name__}, got {type(config).__name__}")
  if config.simulator != simulator.spec:
    raise ValueError(f"config.simulator is {config.simulator!r} but the simulator is "
                     f"{simulator.spec!r}")


def check_problems(theta, observations, simulator: Simulator) -> Tuple[np.ndarray, np.ndarray]:
  """Training problems `theta [K, d]` and `observations [K, n, d_x]` (made float32) as arrays; a
  ValueError naming the argument otherwise (statistics of a wrongly shaped array would be computed
  over its flattened values without complaint)."""
  observations = check_observations(np.asarray(observations), simulator.observation_dim)
  d = simulator.parameter_dim
  theta = np.asarray(theta)
  require_real_numbers(theta, "theta")
  if theta.shape != (observations.shape[0], d):
    raise ValueError(f"theta must have shape {(observations.shape[0], d)} (one row of {d} "
                     f"parameters per observation set), got shape {theta.shape}")
  return theta, observations
