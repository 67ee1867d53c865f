"""Reading observation sets from `.npy`, `.npz` and `.csv` files."""

from __future__ import annotations

import os

import numpy as np

from alfi_tf.checks import check_observations

SUPPORTED_SUFFIXES = (".npy", ".npz", ".csv")


def load_observations(path: str, observation_dim: int) -> np.ndarray:
  """Loads observations as float32 `[B, n, d_x]`.

  * `.npy`: an array `[n, d_x]` (one data set), `[n]` (one data set with `d_x = 1`) or `[B, n, d_x]`.
  * `.npz`: the same, under the key `observations` (or the file's only array).
  * `.csv`: one observation per row, `d_x` comma-separated columns; one data set. Lines starting
    with `#`, and a header line of names, are skipped.

  Raises:
    FileNotFoundError / ValueError: with the file name and what was expected.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"observations file {path} does not exist")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".npy":
    array = np.load(path, allow_pickle=False)
  elif suffix == ".npz":
    with np.load(path, allow_pickle=False) as archive:
      keys = list(archive.keys())
      if "observations" in keys:
        array = archive["observations"]
      elif len(keys) == 1:
        array = archive[keys[0]]
      else:
        raise ValueError(f"{path}: expected an array named 'observations' (or a single array), "
                         f"found {keys}")
  elif suffix == ".csv":
    array = _read_csv(path)
  else:
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {SUPPORTED_SUFFIXES}")
  array = np.asarray(array)
  if array.ndim == 1 and observation_dim == 1:
    array = array[:, np.newaxis]
  if array.ndim == 2:
    array = array[np.newaxis]
  return check_observations(array, observation_dim, name=f"observations in {path}")


def _read_csv(path: str) -> np.ndarray:
  with open(path) as stream:
    lines = [line for line in stream if line.strip() and not line.lstrip().startswith("#")]
  if lines:
    try:
      [float(value) for value in lines[0].split(",")]
    except ValueError:
      lines = lines[1:]   # a header of column names
  try:
    return np.loadtxt(lines, delimiter=",", ndmin=2, dtype=np.float64)
  except ValueError as error:
    raise ValueError(f"{path}: not a comma-separated table of numbers: {error}") from error
