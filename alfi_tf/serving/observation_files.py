"""Reading observation sets from `.npy`, `.npz` and `.csv` files."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from alfi_tf.checks import check_observation_sets

SUPPORTED_SUFFIXES = (".npy", ".npz", ".csv")


def load_observations(path: str, observation_dim: int, transform: str = "none") -> np.ndarray:
  """Loads observations as float32 `[B, n, d_x]`.

  * `.npy`: an array `[n, d_x]` (one data set), `[n]` (one data set with `d_x = 1`) or `[B, n, d_x]`.
  * `.npz`: the same, under the key `observations` (or the file's only array).
  * `.csv`: one observation per row, `d_x` comma-separated columns; one data set. Lines starting
    with `#`, and a header line of names, are skipped.

  `transform` is the machine's `observation_transform`, whose domain the values must respect.

  Raises:
    FileNotFoundError / ValueError: with the file name and what was expected.
  """
  _check_readable(path)
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in SUPPORTED_SUFFIXES:
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {SUPPORTED_SUFFIXES}")
  try:
    array = _read_csv(path) if suffix == ".csv" else _read_numpy(path)
  except (OSError, EOFError, ValueError, UnicodeDecodeError, zipfile.BadZipFile) as error:
    if isinstance(error, ValueError) and str(error).startswith(path):
      raise
    reason = str(error) or type(error).__name__
    raise ValueError(f"{path}: not a readable {suffix} file of observations ({reason})") from None
  return check_observation_sets(array, observation_dim, name=f"observations in {path}",
                                transform=transform)


def _check_readable(path: str) -> None:
  """A clear error for a missing file, a dangling symlink or loop, or a directory."""
  if os.path.islink(path) and not os.path.exists(path):
    raise FileNotFoundError(f"observations file {path} is a symbolic link to nothing (its target "
                            "is missing, or the links form a loop)")
  if not os.path.exists(path):
    raise FileNotFoundError(f"observations file {path} does not exist")
  if not os.path.isfile(path):
    raise ValueError(f"observations file {path} is a directory, not a file")


def _read_numpy(path: str) -> np.ndarray:
  """The array of a `.npy` file, or of a `.npz` archive's `observations` (or only) array."""
  if not path.lower().endswith(".npz"):
    return np.load(path, allow_pickle=False)
  with np.load(path, allow_pickle=False) as archive:
    keys = list(archive.keys())
    if "observations" in keys:
      return archive["observations"]
    if len(keys) == 1:
      return archive[keys[0]]
  raise ValueError(f"{path}: expected an array named 'observations' (or a single array), "
                   f"found {keys}")


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
