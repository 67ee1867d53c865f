"""Code-shape rules that review alone would let slip: short functions, and a public API whose every
name has a docstring."""

import ast
import os

import pytest

import alfi_tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Longest function allowed, from its `def` line to its last line (docstring included).
MAX_FUNCTION_LINES = 60


def _long_functions(path: str):
  with open(path) as stream:
    tree = ast.parse(stream.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      length = node.end_lineno - node.lineno + 1
      if length > MAX_FUNCTION_LINES:
        yield f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({length} lines)"


def _python_files(*packages: str):
  for package in packages:
    for directory, _, files in os.walk(os.path.join(ROOT, package)):
      yield from (os.path.join(directory, name) for name in sorted(files) if name.endswith(".py"))


def test_no_function_is_longer_than_the_limit():
  long = [entry for path in _python_files("alfi_tf", "experiments", "benchmarks")
          for entry in _long_functions(path)]
  assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(long)


def test_the_length_check_can_fail(tmp_path):
  body = "\n".join(f"  x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
  path = tmp_path / "long.py"
  path.write_text(f"def too_long():\n{body}\n")
  assert list(_long_functions(str(path))) == [
      f"{os.path.relpath(str(path), ROOT)}:1 too_long ({MAX_FUNCTION_LINES + 1} lines)"]


@pytest.mark.parametrize("name", sorted(alfi_tf.__all__))
def test_every_public_name_is_documented(name):
  value = getattr(alfi_tf, name)
  if name == "__version__":
    return
  assert (getattr(value, "__doc__", None) or "").strip(), f"alfi_tf.{name} has no docstring"
