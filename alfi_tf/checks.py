"""Checks at the library's boundaries: bad input fails here, with a message, not deep inside TF."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from alfi_tf.config import OBSERVATION_TRANSFORM_MINIMUM


def require_real_numbers(array: np.ndarray, name: str) -> None:
  """Raises a ValueError unless `array` holds real numbers (no strings, objects or complex values,
  which a cast to float would reject or silently truncate)."""
  if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
    raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
  if np.issubdtype(array.dtype, np.complexfloating):
    raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")


def numeric_array(value, name: str) -> np.ndarray:
  """`value` as a numpy array of real numbers, or a ValueError naming `name`: nested lists of
  unequal lengths (ragged sets), strings, objects or complex values."""
  try:
    array = np.asarray(value)
  except (ValueError, TypeError) as error:   # numpy's own words name neither the argument nor why
    raise ValueError(f"{name} must be a regular numeric array (every set and observation of "
                     f"the same size), got a ragged {type(value).__name__}") from error
  require_real_numbers(array, name)
  return array


def check_observations(observations, observation_dim: int, name: str = "observations") -> np.ndarray:
  """Validates a batch of observation sets and returns it as float32 `[K, n, d_x]`.

  Raises:
    ValueError: wrong rank, wrong `d_x`, an empty set, or non-finite values (with their location).

  See `check_observation_sets` for the forms a user may hand over for one data set.
  """
  array = numeric_array(observations, name)
  if array.ndim != 3:
    raise ValueError(f"{name} must have shape [num_problems, num_obs, {observation_dim}], "
                     f"got shape {array.shape}")
  if array.shape[2] != observation_dim:
    raise ValueError(f"{name} must have {observation_dim} values per observation (last axis), "
                     f"got shape {array.shape}")
  if array.shape[0] == 0 or array.shape[1] == 0:
    raise ValueError(f"{name} is empty: shape {array.shape}")
  bad = ~np.isfinite(array)
  if bad.any():
    problem, obs, dim = np.argwhere(bad)[0]
    raise ValueError(f"{name} contains {int(bad.sum())} NaN/inf value(s), the first at "
                     f"[{problem}, {obs}, {dim}] = {array[problem, obs, dim]}")
  # Checked before the cast, which would turn them into inf.
  too_large = np.abs(array.astype(np.float64)) > np.finfo(np.float32).max
  if too_large.any():
    problem, obs, dim = np.argwhere(too_large)[0]
    raise ValueError(f"{name} contains {int(too_large.sum())} value(s) beyond float32's range "
                     f"(±{np.finfo(np.float32).max:.4g}), the first at [{problem}, {obs}, {dim}] = "
                     f"{array[problem, obs, dim]:.6g}")
  return array.astype(np.float32)


def check_observation_sets(observations, observation_dim: int, name: str = "observations",
                           transform: str = "none") -> np.ndarray:
  """`check_observations` that also takes one data set on its own: `[n, d_x]`, or `[n]` when
  `d_x = 1`, becomes `[1, n, d_x]`. What users hand to the deployed machine and the CLI.

  `transform` is the machine's `observation_transform`: observations outside its domain (negative
  counts for `log1p`) are refused rather than silently clamped.
  """
  array = numeric_array(observations, name)
  if array.ndim == 1 and observation_dim == 1:
    array = array[:, np.newaxis]
  if array.ndim == 2:
    if array.shape[1] != observation_dim:   # named by the user's shape, not the batched one
      raise ValueError(f"{name} must have {observation_dim} values per observation, got "
                       f"{array.shape[1]} (one data set of shape {array.shape}, an observation "
                       "per row)")
    array = array[np.newaxis]
  return check_transform_domain(check_observations(array, observation_dim, name), transform, name)


def check_transform_domain(observations: np.ndarray, transform: str,
                           name: str = "observations") -> np.ndarray:
  """Raises a ValueError when `observations [K, n, d_x]` leave the domain of `transform`."""
  minimum = OBSERVATION_TRANSFORM_MINIMUM.get(transform)
  if minimum is not None:
    below = observations < minimum
    if below.any():
      problem, obs, dim = np.argwhere(below)[0]
      raise ValueError(f"{name} must be >= {minimum:g} for this machine (it reads them through "
                       f"{transform}); {int(below.sum())} value(s) are not, the first at "
                       f"[{problem}, {obs}, {dim}] = {observations[problem, obs, dim]:g}")
  return observations


def require_file_destination(path: str, what: str) -> None:
  """Raises an IsADirectoryError unless `what` can be written to `path` as a file: a directory
  there would only fail the final rename of an atomic write, after all the work that produced
  it, with the temporary file's name in the message instead of `path`."""
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path} is a directory, where {what} would be written as a file: "
                            "move that directory away and run again (nothing was written)")


def available_memory() -> Optional[int]:
  """Bytes of memory available to a new allocation on this host (Linux), or None if unknown."""
  try:
    with open("/proc/meminfo") as stream:
      for line in stream:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def require_memory(needed: int, what: str, advice: str) -> None:
  """Refuses, before allocating, what cannot fit in the memory available now.

  Raises:
    ValueError: naming `what`, the estimate, what is available and the `advice`.
  """
  available = available_memory()
  if available is not None and needed > available:
    raise ValueError(f"{what} needs about {needed / 2 ** 30:.3g} GiB of memory, but this machine "
                     f"has {available / 2 ** 30:.3g} GiB available: {advice}")
