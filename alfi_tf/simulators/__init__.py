"""Simulators, selectable by spec (`--simulator=SPEC`): a registered name, `package.module:Attr` or
`path/to/file.py:Attr`.

Bring your own by subclassing `Simulator` (TF/TFP ops) or `NumpySimulator` (numpy code) in a file
of your own and pass its spec to the binaries (`--simulator=my_sims.py:Decay`), or register it by
name from Python (`register_simulator(Decay)`).
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List

from alfi_tf.simulators.base import NumpySimulator, Simulator, SimulatorError, box_prior
from alfi_tf.simulators.command import COMMAND_SPEC_PREFIX, CommandSimulator, ExternalSimulator
from alfi_tf.simulators.gaussian import GaussianSimulator
from alfi_tf.simulators.linear_gaussian import SCALING_DIMENSIONS, LinearGaussianSimulator
from alfi_tf.simulators.linear_regression import LinearRegressionSimulator
from alfi_tf.simulators.lotka_volterra import LotkaVolterraSimulator
from alfi_tf.simulators.multi_distribution import MultiDistributionSimulator
from alfi_tf.simulators.poisson import PoissonSimulator
from alfi_tf.simulators.specs import (SPEC_FORMS, build_simulator, import_simulator,
                                     is_import_spec, normalize_spec)
from alfi_tf.simulators.weinberg import WeinbergSimulator

_REGISTRY: Dict[str, Callable[[], Simulator]] = {}


def register_simulator(factory: Callable[[], Simulator], name: str = "") -> None:
  """Makes `factory` (a `Simulator` subclass or a function returning one) available by `name`.

  `name` defaults to the class attribute `factory.name`.
  """
  name = name or getattr(factory, "name", "")
  if not name:
    raise ValueError("register_simulator needs a name: pass name=... or set the class's `name`")
  _REGISTRY[name] = factory


def available_simulators() -> List[str]:
  """Names accepted by `get_simulator`, sorted."""
  return sorted(_REGISTRY)


def get_simulator(spec: str) -> Simulator:
  """Instantiates the simulator `spec` names: a registered name, an attribute to import
  (`package.module:Attr`, `path/to/file.py:Attr`; see `alfi_tf.simulators.specs`), or an external
  program (`command:{...}`, see `ExternalSimulator`).

  The simulator remembers its spec (`Simulator.spec`), which machines record.

  Raises:
    ValueError: an unknown name (the valid ones are listed), a spec that cannot be imported, or
      a simulator of the user's (imported or registered) that fails `build_simulator`'s checks.
  """
  if spec.startswith(COMMAND_SPEC_PREFIX):
    return ExternalSimulator.from_spec(spec)
  if is_import_spec(spec):
    simulator = import_simulator(spec)
  elif spec in _REGISTRY:
    factory = _REGISTRY[spec]
    # A factory registered by a user is checked as an imported one is (a wrong shape or dtype
    # would otherwise surface deep inside training); the built-in ones are tested.
    simulator = factory() if _BUILT_IN.get(spec) is factory else build_simulator(spec, factory)
  else:
    # A machine saved with a simulator its user registered in that session names it by name
    # alone: loading it elsewhere needs the registration again.
    raise ValueError(f"unknown simulator {spec!r}; valid names are: "
                     f"{', '.join(available_simulators())} (or {SPEC_FORMS}); a simulator of your "
                     f"own named {spec!r} must be registered first "
                     f"(alfi_tf.register_simulator) in the process that loads it")
  simulator.spec = spec
  return simulator


for _factory in (PoissonSimulator, WeinbergSimulator, GaussianSimulator, LinearRegressionSimulator,
                 MultiDistributionSimulator, LotkaVolterraSimulator):
  register_simulator(_factory)
for _dim in SCALING_DIMENSIONS:
  register_simulator(functools.partial(LinearGaussianSimulator, _dim),
                     name=f"linear_gaussian_{_dim}")
#: The library's own factories, by name (a user may register another under one of the names).
_BUILT_IN = dict(_REGISTRY)

__all__ = [
    "Simulator", "NumpySimulator", "SimulatorError", "box_prior", "register_simulator",
    "available_simulators", "normalize_spec", "CommandSimulator", "ExternalSimulator",
    "get_simulator", "PoissonSimulator", "WeinbergSimulator", "GaussianSimulator",
    "LinearRegressionSimulator", "MultiDistributionSimulator", "LotkaVolterraSimulator",
    "LinearGaussianSimulator",
]
