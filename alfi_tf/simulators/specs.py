"""Finding a user's simulator from a spec string: `package.module:Attr` or `path/to/file.py:Attr`.

`Attr` is a `Simulator` subclass or a function returning a `Simulator`. The spec is recorded in a
run's `config.json` and in its export's metadata, so evaluation, export and inference re-import the
same simulator without extra flags. A file is imported under a module name derived from its absolute
path, so worker processes (`--data_workers`), which import it again by the same spec, unpickle its
classes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Callable

from alfi_tf.simulators.base import Simulator

#: The forms a spec takes, for error messages.
SPEC_FORMS = "a registered name, package.module:Attr or path/to/file.py:Attr"


def is_import_spec(spec: str) -> bool:
  """Whether `spec` names an importable attribute (rather than a registered name)."""
  return ":" in spec


def normalize_spec(spec: str) -> str:
  """The spec with a file path made absolute, so that it resolves from any working directory."""
  if not is_import_spec(spec):
    return spec
  location, attribute = spec.rsplit(":", 1)
  if location.endswith(".py"):
    location = os.path.abspath(os.path.expanduser(location))
  return f"{location}:{attribute}"


def import_simulator(spec: str) -> Simulator:
  """Imports `spec`'s attribute and builds the simulator.

  Raises:
    ValueError: the module or file cannot be imported (the import error is named), the attribute
      is missing, or it does not make a `Simulator`.
  """
  location, attribute = spec.rsplit(":", 1)
  if not location or not attribute:
    raise ValueError(f"simulator spec {spec!r} is malformed: expected {SPEC_FORMS}")
  module = _import_module(spec, location)
  factory = getattr(module, attribute, None)
  if factory is None:
    raise ValueError(f"simulator spec {spec!r}: {location} has no attribute {attribute!r}")
  return _build(spec, factory)


def import_spec_module(spec: str) -> None:
  """Imports the module (or file) of an import spec, e.g. in a worker process before it unpickles
  the simulator's classes; a registered name needs nothing."""
  if is_import_spec(spec):
    _import_module(spec, spec.rsplit(":", 1)[0])


def _import_module(spec: str, location: str):
  try:
    if location.endswith(".py"):
      return _import_file(location)
    return importlib.import_module(location)
  except Exception as error:   # any failure of the user's module: named, with the spec
    raise ValueError(f"simulator spec {spec!r} could not be imported: {type(error).__name__}: "
                     f"{error}") from error


def _import_file(path: str):
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no file {path} (was it moved or deleted?)")
  name = "alfi_user_simulator_" + hashlib.sha1(path.encode()).hexdigest()[:12]
  if name in sys.modules:
    return sys.modules[name]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[name] = module   # before running it: its classes must be findable by name (pickle)
  try:
    module_spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def _build(spec: str, factory: Callable[[], Simulator]) -> Simulator:
  if not callable(factory):
    raise ValueError(f"simulator spec {spec!r} names a {type(factory).__name__}, not a Simulator "
                     "subclass or a function returning one")
  try:
    simulator = factory()
  except Exception as error:   # the user's constructor
    raise ValueError(f"simulator spec {spec!r}: building the simulator raised "
                     f"{type(error).__name__}: {error}") from error
  if not isinstance(simulator, Simulator):
    raise ValueError(f"simulator spec {spec!r} made a {type(simulator).__name__}, not an "
                     "alfi_tf Simulator")
  return simulator
