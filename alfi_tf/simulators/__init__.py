"""Simulators, selectable by name (`--simulator=NAME`).

Bring your own by subclassing `Simulator` (TF/TFP ops) or `NumpySimulator` (numpy code) and, to make
it available to the binaries, `register_simulator(MySimulator)`.
"""

from __future__ import annotations

from typing import Callable, Dict, List

from alfi_tf.simulators.base import NumpySimulator, Simulator, SimulatorError, box_prior
from alfi_tf.simulators.gaussian import GaussianSimulator
from alfi_tf.simulators.linear_regression import LinearRegressionSimulator
from alfi_tf.simulators.lotka_volterra import LotkaVolterraSimulator
from alfi_tf.simulators.multi_distribution import MultiDistributionSimulator
from alfi_tf.simulators.poisson import PoissonSimulator
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


def get_simulator(name: str) -> Simulator:
  """Instantiates the simulator registered under `name`."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown simulator {name!r}; valid names are: "
                     f"{', '.join(available_simulators())}")
  return _REGISTRY[name]()


for _factory in (PoissonSimulator, WeinbergSimulator, GaussianSimulator, LinearRegressionSimulator,
                 MultiDistributionSimulator, LotkaVolterraSimulator):
  register_simulator(_factory)

__all__ = [
    "Simulator", "NumpySimulator", "SimulatorError", "box_prior", "register_simulator",
    "available_simulators",
    "get_simulator", "PoissonSimulator", "WeinbergSimulator", "GaussianSimulator",
    "LinearRegressionSimulator", "MultiDistributionSimulator", "LotkaVolterraSimulator",
]
