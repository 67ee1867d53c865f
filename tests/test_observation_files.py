"""Reading observation files and checking observation arrays: every bad input gets one clear
`ValueError` / `FileNotFoundError` naming the file and what was expected, never another exception."""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest

from alfi_tf.checks import check_observation_sets, check_observations
from alfi_tf.serving.observation_files import load_observations


NOT_NPY = r"not a \.npy file \(it does not start with the NumPy header\)"


@pytest.mark.parametrize("name, content, message", [
    ("empty.npy", b"", NOT_NPY), ("text.npy", b"1, 2, 3\n", NOT_NPY),
    # numpy took it for a pickle and spoke of loading it "unsafely" with allow_pickle.
    ("garbage.npy", bytes(range(7, 200)), NOT_NPY),
    ("cut.npy", b"\x93NUMPY\x01\x00", r"not a readable \.npy file of observations"),
    ("broken.npz", b"PK\x03\x04 not really a zip", r"not a readable \.npz file of observations"),
])
def test_unreadable_numpy_files_are_named(tmp_path, name, content, message):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(ValueError, match=rf"{path}: {message}"):
    load_observations(str(path), 1)


def test_a_truncated_npy_file_is_named_before_its_declared_size_is_allocated(tmp_path):
  path = tmp_path / "cut.npy"
  np.save(path, np.arange(40.0).reshape(40, 1))
  path.write_bytes(path.read_bytes()[:-8])   # one value short
  with pytest.raises(ValueError, match=rf"{path}: truncated \.npy file: its header declares shape "
                                       r"\(40, 1\) of float64 \(320 bytes\), but only 312 bytes "
                                       r"follow it"):
    load_observations(str(path), 1)
  huge = tmp_path / "huge.npy"   # 745 GiB declared: refused, not an attempt to allocate it
  with open(huge, "wb") as stream:
    np.lib.format.write_array_header_1_0(stream, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (10**6, 10**5, 1)})
    stream.write(bytes(64))
  with pytest.raises(ValueError, match="800,000,000,000 bytes"):
    load_observations(str(huge), 1)


def test_directory_named_npy(tmp_path):
  path = tmp_path / "x.npy"
  path.mkdir()
  with pytest.raises(ValueError, match=rf"observations file {path} is a directory, not a file"):
    load_observations(str(path), 1)


@pytest.mark.skipif(not os.path.exists("/dev/zero") or not hasattr(os, "mkfifo"),
                    reason="POSIX devices and named pipes")
def test_devices_and_named_pipes_are_refused_not_read(tmp_path):
  fifo = tmp_path / "pipe.npy"
  os.mkfifo(fifo)   # opening it to read would wait for a writer for ever
  for path in ("/dev/zero", str(fifo)):
    with pytest.raises(ValueError, match=rf"observations file {path} is not a regular file \(a "
                                         r"device or a named pipe\?\); expected a \.npy, \.npz or "
                                         r"\.csv file"):
      load_observations(path, 1)


def test_symlink_loop_and_dangling_link(tmp_path):
  loop_a, loop_b, dangling = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "c.npy"
  os.symlink(loop_b, loop_a)
  os.symlink(loop_a, loop_b)
  os.symlink(tmp_path / "gone.npy", dangling)
  for path in (loop_a, dangling):
    with pytest.raises(FileNotFoundError, match="is a symbolic link to nothing"):
      load_observations(str(path), 1)


def test_values_beyond_float32_are_not_reported_as_inf():
  observations = np.zeros((1, 3, 1))
  observations[0, 1, 0] = 1e39
  with pytest.raises(ValueError, match=r"beyond float32's range .* the first at \[0, 1, 0\] = 1e\+39"):
    check_observations(observations, 1)


def test_complex_input_is_refused_not_cast():
  with pytest.raises(ValueError, match="must be real numbers, got dtype complex128"):
    check_observations(np.ones((1, 3, 1), np.complex128), 1)


def test_one_data_set_forms():
  expected = np.arange(3, dtype=np.float32).reshape(1, 3, 1)
  for form in (np.arange(3.0), np.arange(3.0).reshape(3, 1), np.arange(3.0).reshape(1, 3, 1)):
    np.testing.assert_array_equal(check_observation_sets(form, 1), expected)
  with pytest.raises(ValueError, match="must have shape"):
    check_observation_sets(np.arange(3.0), 2)   # [n] only means one set when d_x = 1
  # Named by the shape handed over, (2, 2), not the batched (1, 2, 2).
  with pytest.raises(ValueError, match=r"^observations must have 1 values per observation, got 2 "
                                       r"\(one data set of shape \(2, 2\), an observation per "
                                       r"row\)$"):
    check_observation_sets(np.ones((2, 2)), 1)


ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.float16]),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4),
    elements={"allow_nan": True, "allow_infinity": True})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=ARRAYS, observation_dim=st.integers(1, 3), suffix=st.sampled_from([".npy", ".npz"]))
def test_any_saved_array_loads_exactly_or_fails_naming_the_file(tmp_path, array, observation_dim,
                                                                 suffix):
  path = str(tmp_path / f"observations{suffix}")
  if suffix == ".npy":
    np.save(path, array)
  else:
    np.savez(path, observations=array)
  try:
    loaded = load_observations(path, observation_dim)
  except ValueError as error:
    assert str(error).startswith(f"observations in {path}") or str(error).startswith(path), error
    return
  assert loaded.dtype == np.float32 and loaded.ndim == 3 and loaded.shape[-1] == observation_dim
  assert np.all(np.isfinite(loaded))
  np.testing.assert_array_equal(loaded.ravel(), np.asarray(array, np.float32).ravel())


@settings(max_examples=150, deadline=None)
@given(array=ARRAYS)
def test_check_observations_returns_finite_float32_or_fails_with_a_value_error(array):
  try:
    checked = check_observations(array, 1)
  except ValueError as error:
    assert str(error).startswith("observations "), error
    return
  assert checked.dtype == np.float32 and np.all(np.isfinite(checked))


@pytest.mark.parametrize("content, expected", [
    (b"\xef\xbb\xbf1\n2\n3\n", [1, 2, 3]),                  # a byte-order mark is not a header
    (b"count\n1\n2\n", [1, 2]),                              # a header of names
    (b'# comment\n"x", _y\n1,2\n3,4\n', [[1, 2], [3, 4]]),   # quoted names after a comment
    (b"\xef\xbb\xbfx,y\n1,2\n", [[1, 2]]),
])
def test_csv_headers_and_byte_order_marks(tmp_path, content, expected):
  path = tmp_path / "obs.csv"
  path.write_bytes(content)
  dim = np.asarray(expected).reshape(len(expected), -1).shape[1]
  observations = load_observations(str(path), dim)
  np.testing.assert_array_equal(observations, np.reshape(expected, (1, len(expected), dim)))


@pytest.mark.parametrize("content, message", [
    ("0x10\n0x10\n", r"line 1: '0x10' is not a number \(a header row must name every column\)"),
    ("x,1\n2,3\n", r"line 1: 'x' is not a number \(a header row must name every column\)"),
    ("# c\nx,y\n1,2\n3,?\n", r"line 4: '\?' is not a number; expected one observation per row"),
    ("1;2;3\n", r"line 1: '1;2;3' is not a number; .*separated by commas, not ';'"),
    ("a;b\n1;2\n", r"line 2: '1;2' is not a number; .*separated by commas, not ';'"),
    ("1\t2\n", r"line 1: '1\\t2' is not a number; .*separated by commas, not '\\t'"),
    ("1,2\n3\n", r"line 2: 1 values, but line 1 has 2"),
    ("1,\n2,\n", r"line 1: an empty value \(a trailing or doubled comma\?\)"),
    ("x,y\n1\n", r"line 1: the header names 2 columns, but the rows hold 1 values"),
    ("x\n# only a header\n", r"no rows of numbers"),
])
def test_csv_rows_that_are_not_numbers_are_named(tmp_path, content, message):
  path = tmp_path / "obs.csv"
  path.write_text(content)
  with pytest.raises(ValueError, match=rf"{path}(, |: ){message}"):
    load_observations(str(path), 1)
