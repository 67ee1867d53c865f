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

import numpy as np
import tensorflow as tf

from alfi_tf.simulators.base import NumpySimulator, Simulator, require_design_kept

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
  return build_simulator(spec, factory)


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
  except SystemExit as error:   # sys.exit() at import would otherwise end the binary silently
    raise ValueError(f"simulator spec {spec!r} could not be imported: {location} called "
                     f"sys.exit({error.code!r}) (SystemExit) while being imported; keep "
                     "script code under `if __name__ == '__main__':`") from error
  except Exception as error:   # any failure of the user's module: named, with the spec
    raise ValueError(f"simulator spec {spec!r} could not be imported: {type(error).__name__}: "
                     f"{error}{_file_hint(error, location)}") from error


def _file_hint(error: Exception, module: str) -> str:
  """For a module that is a file here but not importable (an installed command such as
  `alfi-train` does not search the current directory, as `python -m` does), how to name it."""
  path = module.replace(".", os.sep) + ".py"
  if not isinstance(error, ModuleNotFoundError) or not os.path.isfile(path):
    return ""
  return (f" ({path} is here, but the current directory is not on the import path: name the "
          f"file, path/to/file.py:Attr, e.g. {os.path.join('.', path)}:...)")


def _import_file(path: str):
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isfile(path):   # reading a named pipe would wait
    raise ValueError(f"{path} is not a regular file (a directory, device or named pipe); "
                     "expected a Python file")
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


def build_simulator(spec: str, factory: Callable[[], Simulator]) -> Simulator:
  """Calls `factory` (a `Simulator` subclass or a function returning one), found by `spec`, and
  checks what it made: a `Simulator` whose prior can be sampled and, for a TF-native one, whose
  `simulate` runs and returns floating-point observations of the declared shape.

  Raises:
    ValueError: naming `spec` and what failed.
  """
  if not callable(factory):
    raise ValueError(f"simulator spec {spec!r} names a {type(factory).__name__}, not a Simulator "
                     "subclass or a function returning one")
  try:
    simulator = factory()
  except (Exception, SystemExit) as error:   # the user's constructor (sys.exit() included)
    raise ValueError(f"simulator spec {spec!r}: building the simulator raised "
                     f"{type(error).__name__}: {error}") from error
  if not isinstance(simulator, Simulator):
    raise ValueError(f"simulator spec {spec!r} made a {type(simulator).__name__}, not an "
                     "alfi_tf Simulator")
  _check_prior_draws(spec, simulator)
  if not isinstance(simulator, NumpySimulator):   # numpy ones are checked on every call
    _check_trial_call(spec, simulator)
  return simulator


def _check_prior_draws(spec: str, simulator: Simulator, count: int = 16) -> None:
  """Draws `count` parameter vectors from the simulator's prior, which every problem starts
  from, so that a prior that cannot be sampled (a TFP distribution with NaN parameters, say) is
  named here rather than as a simulator returning NaN. (`Simulator` checks its event shape.)

  Raises:
    ValueError: the draw raised, or gave NaN/inf.
  """
  where = f"simulator spec {spec!r}: its prior"
  try:
    draws = tf.convert_to_tensor(simulator.prior.sample(count, seed=tf.constant([0, 1])))
  except Exception as error:   # the user's distribution
    raise ValueError(f"{where} could not be sampled: {type(error).__name__}: {error}") from error
  if not np.all(np.isfinite(draws.numpy())):
    raise ValueError(f"{where} drew NaN/inf values (e.g. {draws.numpy()[0].tolist()}); check the "
                     "parameters of its distribution")


def _error_detail(error: Exception) -> str:
  """The line that names `error`: TF adds its trace above the error's own (last) line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  detail = lines[-1] if lines else ""
  name = type(error).__name__
  # TF's StagingError wraps the error, whose own name its last line gives; a traced error's last
  # line may also start with its name already.
  if name != "StagingError" and not detail.startswith(f"{name}:"):
    detail = f"{name}: {detail}"
  return detail


def _check_trial_call(spec: str, simulator: Simulator, count: int = 2, num_obs: int = 3) -> None:
  """Calls a TF-native simulator once, traced as training traces it, on `count` draws from its
  prior, so that a failing or malformed `simulate` is named here in one line rather than deep
  inside the machine's graph.

  Raises:
    ValueError: the call raised, or returned something other than floating-point observations
      of shape `[count, num_obs, observation_dim]`.
  """
  where = (f"simulator spec {spec!r}: a trial call ({count} parameter vectors drawn from its "
           f"prior, num_obs={num_obs})")
  try:
    theta = simulator.prior.sample(count, seed=tf.constant([0, 1]))
    simulated = tf.function(simulator.simulate)(theta, num_obs, tf.constant([2, 3]))
    simulated = tf.convert_to_tensor(simulated)
  except Exception as error:   # the user's code
    raise ValueError(f"{where} raised {_error_detail(error)}") from error
  expected = (count, num_obs, simulator.observation_dim)
  if tuple(simulated.shape) != expected:
    raise ValueError(f"{where} returned shape {tuple(simulated.shape)}, expected {expected} "
                     f"[parameter vectors, num_obs, observation_dim]")
  if simulated.dtype != tf.float32:   # the machine's graph is float32 throughout
    raise ValueError(f"{where} returned {simulated.dtype.name} observations; expected float32 "
                     "(end simulate with tf.cast(..., tf.float32))")
  if simulator.design_dim:
    _check_trial_design_call(spec, simulator, theta, simulated[..., :simulator.design_dim])


def _check_trial_design_call(spec: str, simulator: Simulator, theta: tf.Tensor,
                             design: tf.Tensor) -> None:
  """`_check_trial_call` for `simulate_at_design`, at the design of the trial's own observations.

  Raises:
    ValueError: the call raised, returned another shape, or changed the design columns.
  """
  where = (f"simulator spec {spec!r}: a trial call of simulate_at_design "
           f"(design_dim={simulator.design_dim})")
  try:
    simulated = tf.convert_to_tensor(tf.function(simulator.simulate_at_design)(
        theta, tf.cast(design, tf.float32), tf.constant([4, 5])))
  except Exception as error:   # the user's code
    raise ValueError(f"{where} raised {_error_detail(error)}") from error
  expected = tuple(design.shape[:2]) + (simulator.observation_dim,)
  if tuple(simulated.shape) != expected:
    raise ValueError(f"{where} returned shape {tuple(simulated.shape)}, expected {expected}")
  require_design_kept(simulated.numpy(), design.numpy(), simulator.design_dim, where)
