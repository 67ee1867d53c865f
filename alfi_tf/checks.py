"""Checks at the library's boundaries: bad input fails here, with a message, not deep inside TF."""

from __future__ import annotations

import numpy as np


def check_observations(observations, observation_dim: int, name: str = "observations") -> np.ndarray:
  """Validates a batch of observation sets and returns it as float32 `[K, n, d_x]`.

  Raises:
    ValueError: wrong rank, wrong `d_x`, an empty set, or non-finite values (with their location).
  """
  array = np.asarray(observations)
  if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
    raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
  if array.ndim != 3:
    raise ValueError(f"{name} must have shape [num_problems, num_obs, {observation_dim}], "
                     f"got shape {array.shape}")
  if array.shape[2] != observation_dim:
    raise ValueError(f"{name} must have {observation_dim} values per observation (last axis), "
                     f"got shape {array.shape}")
  if array.shape[0] == 0 or array.shape[1] == 0:
    raise ValueError(f"{name} is empty: shape {array.shape}")
  array = array.astype(np.float32)
  bad = ~np.isfinite(array)
  if bad.any():
    problem, obs, dim = np.argwhere(bad)[0]
    raise ValueError(f"{name} contains {int(bad.sum())} NaN/inf value(s), the first at "
                     f"[{problem}, {obs}, {dim}] = {array[problem, obs, dim]}")
  return array
