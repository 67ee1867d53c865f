"""Reading observation sets from `.npy`, `.npz` and `.csv` files."""

from __future__ import annotations

import os
import zipfile
from typing import List

import numpy as np

from alfi_tf.checks import check_observation_sets

SUPPORTED_SUFFIXES = (".npy", ".npz", ".csv")
#: The first bytes of every `.npy` file (`numpy.lib.format.MAGIC_PREFIX`).
NPY_MAGIC = b"\x93NUMPY"


def load_observations(path: str, observation_dim: int, transform: str = "none") -> np.ndarray:
  """Loads observations as float32 `[B, n, d_x]`.

  * `.npy`: an array `[n, d_x]` (one data set), `[n]` (one data set with `d_x = 1`) or `[B, n, d_x]`.
  * `.npz`: the same, under the key `observations` (or the file's only array).
  * `.csv`: one observation per row, `d_x` comma-separated columns; one data set. Lines starting
    with `#`, a UTF-8 byte-order mark, and a first row whose every field is a name, are skipped.

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
  """A clear error for a missing file, a dangling symlink or loop, a directory, or anything else
  that is not a regular file (a device such as /dev/zero, which never ends; a named pipe, whose
  reading would wait for a writer)."""
  if os.path.islink(path) and not os.path.exists(path):
    raise FileNotFoundError(f"observations file {path} is a symbolic link to nothing (its target "
                            "is missing, or the links form a loop)")
  if not os.path.exists(path):
    raise FileNotFoundError(f"observations file {path} does not exist")
  if os.path.isdir(path):
    raise ValueError(f"observations file {path} is a directory, not a file")
  if not os.path.isfile(path):
    raise ValueError(f"observations file {path} is not a regular file (a device or a named "
                     "pipe?); expected a .npy, .npz or .csv file")


def _read_numpy(path: str) -> np.ndarray:
  """The array of a `.npy` file, or of a `.npz` archive's `observations` (or only) array."""
  if not path.lower().endswith(".npz"):
    # numpy reads a file without its header as a pickle, and refuses that in words about
    # trusting pickled data: not what a garbled or mis-named file is.
    with open(path, "rb") as stream:
      if stream.read(len(NPY_MAGIC)) != NPY_MAGIC:
        raise ValueError(f"{path}: not a .npy file (it does not start with the NumPy header); "
                         "expected an array written by numpy.save")
      _check_npy_size(path, stream)
    return np.load(path, allow_pickle=False)
  with np.load(path, allow_pickle=False) as archive:
    keys = list(archive.keys())
    if "observations" in keys:
      return archive["observations"]
    if len(keys) == 1:
      return archive[keys[0]]
  raise ValueError(f"{path}: expected an array named 'observations' (or a single array), "
                   f"found {keys}")


def _check_npy_size(path: str, stream) -> None:
  """Refuses a `.npy` file whose header declares more data than the file holds (cut short while
  copied, or corrupt), before numpy allocates what the header declares: possibly far more memory
  than the machine has, which was reported as running out of memory."""
  stream.seek(0)
  version = np.lib.format.read_magic(stream)
  read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                 else np.lib.format.read_array_header_2_0)
  shape, _, dtype = read_header(stream)
  declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
  held = os.fstat(stream.fileno()).st_size - stream.tell()
  if not dtype.hasobject and declared > held:
    raise ValueError(f"{path}: truncated .npy file: its header declares shape {tuple(shape)} of "
                     f"{dtype} ({declared:,} bytes), but only {held:,} bytes follow it")


def _read_csv(path: str) -> np.ndarray:
  """The rows of numbers of a CSV file `[n, d_x]`, its header and `#` comment lines skipped.

  A first row is a header only if every field is a name (`_is_name`): a row of numbers that fails
  to parse (`0x10`, `1;2`) must be an error, not a silently dropped observation.
  """
  # utf-8-sig: a byte-order mark (spreadsheets write one) is not part of the first value.
  with open(path, encoding="utf-8-sig") as stream:
    rows = [(number, line.strip()) for number, line in enumerate(stream, start=1)
            if line.strip() and not line.lstrip().startswith("#")]
  first_row = rows[0][0] if rows else None
  header = None
  if rows and all(_is_name(field) for field in rows[0][1].split(",")):
    header, rows = rows[0], rows[1:]
  if not rows:
    raise ValueError(f"{path}: no rows of numbers; expected one observation per row, its values "
                     "separated by commas")
  values = [_parse_csv_row(path, number, line, number == first_row) for number, line in rows]
  for (number, _), row in zip(rows, values):
    if len(row) != len(values[0]):
      raise ValueError(f"{path}, line {number}: {len(row)} values, but line {rows[0][0]} has "
                       f"{len(values[0])}; every row must hold one observation's values")
  names = header[1].split(",") if header else None
  if names and len(names) != len(values[0]):
    raise ValueError(f"{path}, line {header[0]}: the header names {len(names)} columns, but the "
                     f"rows hold {len(values[0])} values; every column needs one name")
  return np.array(values, dtype=np.float64)


def _is_name(field: str) -> bool:
  """Whether a CSV field is a column name: it starts with a letter or `_` and is not a number
  (`nan`, `inf`, which are values)."""
  name = field.strip().strip('"').strip("'")
  try:
    float(name)
    return False
  except ValueError:
    return bool(name) and (name[0].isalpha() or name[0] == "_")


def _parse_csv_row(path: str, number: int, line: str, first: bool) -> List[float]:
  """The values of line `number` (the file's `first` row?); a ValueError naming the file, the line
  and the bad field if they are not numbers."""
  values = []
  for field in line.split(","):
    if not field.strip():
      raise ValueError(f"{path}, line {number}: an empty value (a trailing or doubled comma?); "
                       "expected one observation per row, its values separated by commas")
    try:
      values.append(float(field))
    except ValueError:
      separators = [separator for separator in (";", "\t", "|", " ") if separator in field.strip()]
      hint = f", not {separators[0]!r}" if separators else ""
      header = " (a header row must name every column)" if first and not separators else ""
      raise ValueError(f"{path}, line {number}: {field.strip()!r} is not a number{header}; "
                       f"expected one observation per row, its values separated by "
                       f"commas{hint}") from None
  return values
