"""Using a trained machine from any TF program: `infer`, or ask/tell with your own simulator.

    machine = DeployedMachine.load("exports/weinberg")      # an export, or a training workdir
    result = machine.infer(observations)                    # TF-native simulators
    result = machine.run(observations, my_simulate)         # any simulator: numpy, TF, external

    session = machine.start(observations)                   # or drive it step by step
    while not session.done:
      parameters = session.ask()                            # [B, M, d] raw parameters
      session.tell(simulate_somehow(parameters))            # [B, M, N, d_x] observations
    result = session.result()

A machine that simulates at the real data's design (`design_dim > 0`: a regression's covariates)
asks for simulations at `session.design()` `[B, N, design_dim]` too, and `run` calls
`simulate(parameters, design, seed)` (a simulator's `simulate_at_design`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from alfi_tf.serving.export import (EXPORT_FORMAT_VERSION, METADATA_ASSET, STATE_KEYS,
                                    ExportModule)
from alfi_tf.checks import check_observation_sets, numeric_array, require_memory
from alfi_tf.model.arguments import check_seed
from alfi_tf.model.calibration import PooledStdScales, check_pooled_std_scales
from alfi_tf.model.inference import (InferenceResult, check_failed_simulations, pool_starts,
                                     extrapolations, flag_extrapolations, repeat_for_starts,
                                     resolve_starts, standardized_set_means)
from alfi_tf.model.machine import usable_sets
from alfi_tf.simulators.base import Simulator, observations_as_float32
from alfi_tf.workdir import describe_simulator, load_machine, require_same_simulator

#: `simulate(parameters [K, d], num_obs, seed [2]) -> [K, num_obs, d_x]`, the `Simulator.simulate`
#: convention: a simulator's bound `simulate` method can be passed directly. For a machine with a
#: design: `simulate(parameters [K, d], design [K, N, design_dim], seed [2])`, the
#: `Simulator.simulate_at_design` convention.
SimulateFn = Callable[[np.ndarray, int, np.ndarray], Any]


#: The metadata this module (and `alfi-infer`) reads, with their types (`machine_metadata` writes
#: them all).
_METADATA_FIELDS = {"format_version": int, "simulator": str, "parameter_names": list,
                    "observation_dim": int, "num_steps": int, "num_samples": int,
                    "num_simulated_obs": int, "design_dim": int, "tf_native_simulator": bool,
                    "machine_config": dict}
_MACHINE_CONFIG_FIELDS = {"observation_transform": str, "encoder_hidden": int, "encoder_out": int}
_JSON_TYPE_NAMES = {str: "a string", list: "an array", int: "an integer", bool: "true or false",
                    dict: "an object"}


def _check_metadata_fields(metadata: Dict[str, Any], damaged: str) -> None:
  """Raises a ValueError, `damaged` followed by the first missing or mistyped field, unless the
  metadata hold every field the deployed machine reads."""
  _check_fields(metadata, _METADATA_FIELDS, "", damaged)
  _check_fields(metadata["machine_config"], _MACHINE_CONFIG_FIELDS, "machine_config.", damaged)


def _check_fields(values: Dict[str, Any], fields: Dict[str, type], prefix: str,
                  damaged: str) -> None:
  """`_check_metadata_fields` for one level: `fields` of `values`, named with `prefix`."""
  for name, kind in fields.items():
    value = values.get(name)
    # A bool is an int in Python, but a count of True is damage, not a number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
      raise ValueError(f"{damaged}: {prefix}{name} must be {_JSON_TYPE_NAMES[kind]}, got "
                       f"{repr(value)[:80]}); export it again")


class AskTellSession:
  """One inference run driven from outside the graph, one simulator call per step."""

  def __init__(self, machine: "DeployedMachine", outputs: Dict[str, tf.Tensor]):
    self._machine = machine
    self._outputs = outputs
    # Counted here, not in the graph: the export's step state predates the count.
    self._failed_sets = np.zeros(int(outputs["parameters"].shape[0]), np.int64)

  @property
  def step(self) -> int:
    """Steps completed so far (0 after `start`)."""
    return int(self._outputs["step"])

  @property
  def done(self) -> bool:
    """Whether all `T` steps have been told."""
    return bool(self._outputs["done"])

  def ask(self) -> np.ndarray:
    """The parameters to simulate next, `[B, M, d]` (raw units, inside the prior's box).

    Raises:
      RuntimeError: all `T` steps are done (nothing more will be told).
    """
    self._require_steps_left()
    return self._outputs["parameters"].numpy()

  def _require_steps_left(self) -> None:
    if self.done:
      raise RuntimeError(f"all {self._machine.num_steps} steps are done; call result()")

  def design(self) -> np.ndarray:
    """The design to simulate the asked parameters at, `[B, N, design_dim]`: row `b` for all `M`
    parameter vectors of data set `b` (machines with `design_dim > 0` only)."""
    if not self._machine.design_dim:
      raise ValueError("this machine does not simulate at the observed design (design_dim is 0): "
                       "simulate the asked parameters with num_obs observations each")
    rows = self._outputs["design_rows"].numpy()                                  # [B, N]
    design = self._outputs["observations"].numpy()[..., :self._machine.design_dim]
    return np.take_along_axis(design, rows[..., np.newaxis], axis=1)

  @property
  def simulation_seed(self) -> np.ndarray:
    """The seed the in-graph simulator would use for these parameters (int32 `[2]`)."""
    return self._outputs["simulation_seed"].numpy()

  def tell(self, simulations) -> None:
    """Feeds back `N` observations per asked parameter vector, `[B, M, N, d_x]` or `[B*M, N, d_x]`."""
    parameters = self.ask()
    batch, samples = parameters.shape[:2]
    expected = (batch, samples, self._machine.num_simulated_obs, self._machine.observation_dim)
    flat = (batch * samples,) + expected[2:]
    array = numeric_array(simulations, f"step {self.step + 1}: simulations")
    if array.shape not in (expected, flat):
      raise ValueError(f"step {self.step + 1}: simulations must have shape {expected} "
                       f"[batch, num_samples, num_simulated_obs, observation_dim] (or {flat}), "
                       f"got {array.shape}")
    # NaN/inf, values beyond float32's range (named in a warning) and values outside the
    # observation transform's domain are allowed: such a simulated set is left out of the step
    # (a failed simulation).
    array = observations_as_float32(
        array.reshape(flat), parameters.reshape(batch * samples, -1),
        self._machine.parameter_names, f"step {self.step + 1}: the simulations told",
        source="the simulations told")
    array = array.reshape(expected)
    transform = self._machine.metadata["machine_config"]["observation_transform"]
    usable = usable_sets(tf.constant(array), transform).numpy()                  # [B, M]
    self._check_design(array, usable)
    # Failed sets reach the graph as NaN, which every export leaves out (an export written before
    # out-of-domain sets were masked would clamp them), so the count and the step agree.
    array[~usable] = np.nan
    state = [self._outputs[key] for key in STATE_KEYS]
    self._outputs = self._machine.module.step(*state, tf.constant(array))
    self._failed_sets += np.sum(~usable, axis=1)

  def _check_design(self, simulations: np.ndarray, usable: np.ndarray) -> None:
    """Raises a ValueError unless every usable set told `[B, M, N, d_x]` was simulated at
    `design()` (a set simulated elsewhere would be compared with the real data as if it were)."""
    if not self._machine.design_dim:
      return
    design = np.broadcast_to(self.design()[:, np.newaxis], simulations.shape[:3] + (
        self._machine.design_dim,))
    told = simulations[..., :self._machine.design_dim]
    if not np.array_equal(told[usable], design.astype(np.float32)[usable]):
      raise ValueError(f"step {self.step + 1}: simulations must be simulated at design(): their "
                       f"first {self._machine.design_dim} column(s) must equal its rows, for "
                       "every sample of a data set")

  def result(self) -> InferenceResult:
    """The current answer (final once `done`), with the failed simulated sets told so far."""
    return InferenceResult.from_outputs(self._outputs)._replace(
        failed_sets=self._failed_sets.copy())


class DeployedMachine:
  """A trained machine behind the export's functions, loaded or built in-process.

  Use `DeployedMachine.load(path)`; `path` is an export directory (SavedModel) or a training workdir.
  """

  def __init__(self, module: Any, metadata: Dict[str, Any]):
    self.module = module
    self.metadata = metadata

  @classmethod
  def load(cls, path: str, num_steps: Optional[int] = None) -> "DeployedMachine":
    """Loads an export, or builds the same functions from a training workdir's checkpoint.

    Raises:
      FileNotFoundError: `path` is neither.
      ValueError: the export was written by an incompatible version of alfi-tf.
    """
    if not isinstance(path, (str, os.PathLike)):
      raise TypeError(f"path must be the path of an export or a training workdir, got "
                      f"{type(path).__name__}")
    if os.path.exists(os.path.join(path, "saved_model.pb")):
      if num_steps is not None:
        raise ValueError("num_steps is fixed when exporting; re-export to change it")
      return cls._from_export(path)
    if os.path.exists(os.path.join(path, "config.json")):
      module = ExportModule(load_machine(path), num_steps)
      return cls(module, json.loads(module.metadata_json))
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist; expected an alfi-tf export or a training "
                              "workdir")
    if not os.path.isdir(path):
      raise NotADirectoryError(f"{path} is a file; expected an alfi-tf export or a training "
                               "workdir (a directory)")
    raise FileNotFoundError(f"{path} is neither an alfi-tf export (no saved_model.pb) nor a "
                            "training workdir (no config.json)")

  @classmethod
  def _from_export(cls, path: str) -> "DeployedMachine":
    asset = os.path.join(path, "assets", METADATA_ASSET)
    if not os.path.exists(asset):
      raise ValueError(f"{path} is a SavedModel but not an alfi-tf export (no "
                       f"assets/{METADATA_ASSET})")
    try:
      with open(asset) as stream:
        metadata = json.load(stream)
    except (OSError, ValueError) as error:
      raise ValueError(f"{path} is a damaged alfi-tf export ({asset} is not readable JSON: "
                       f"{error})") from None
    if not isinstance(metadata, dict):
      raise ValueError(f"{path} is a damaged alfi-tf export ({asset} holds a JSON "
                       f"{type(metadata).__name__}, expected an object); export it again")
    if metadata.get("format_version", EXPORT_FORMAT_VERSION) != EXPORT_FORMAT_VERSION:
      raise ValueError(f"{path} was exported by alfi-tf {metadata.get('alfi_tf_version')} in "
                       f"export format {metadata.get('format_version')}; this alfi-tf reads format "
                       f"{EXPORT_FORMAT_VERSION}: re-export it with this version")
    _check_metadata_fields(metadata, f"{path} is a damaged alfi-tf export ({asset}")
    try:
      module = tf.saved_model.load(path)
    # The files passed the checks above, so whatever the loader raises is their damage: a
    # truncated variables file, say, is an IndexError ("Read less bytes than requested").
    except Exception as error:   # pylint: disable=broad-except
      reason = getattr(error, "message", None) or str(error)
      raise ValueError(f"{path} is a damaged alfi-tf export (the SavedModel cannot be read: "
                       f"{reason.strip().splitlines()[0][:300]}); export it again") from None
    return cls(module, metadata)

  @property
  def parameter_names(self):
    return tuple(self.metadata["parameter_names"])

  @property
  def num_steps(self) -> int:
    return int(self.metadata["num_steps"])

  @property
  def num_samples(self) -> int:
    return int(self.metadata["num_samples"])

  @property
  def num_simulated_obs(self) -> int:
    return int(self.metadata["num_simulated_obs"])

  @property
  def observation_dim(self) -> int:
    return int(self.metadata["observation_dim"])

  @property
  def design_dim(self) -> int:
    """The design columns simulated at the real data's (0: none); see the module docstring."""
    return int(self.metadata["design_dim"])

  @property
  def answer_starts(self) -> int:
    """The runs per data set `infer` and `run` pool by default (`MachineConfig.answer_starts`;
    1 for exports written before it existed)."""
    return int(self.metadata["machine_config"].get("answer_starts", 1))

  @functools.cached_property
  def pooled_std_scales(self) -> Optional[PooledStdScales]:
    """The factors of answers pooled over `answer_starts` runs (`pool_starts`), or None; read
    from the metadata (and checked) once."""
    return check_pooled_std_scales(self.metadata.get("pooled_std_scales"),
                                   len(self.parameter_names))

  @property
  def can_infer(self) -> bool:
    """Whether the simulator runs inside the graph (`infer` available)."""
    return bool(self.metadata["tf_native_simulator"])

  def check_simulator(self, simulator: Simulator, machine: str = "this machine") -> None:
    """Refuses `simulator` (rebuilt from the machine's spec, say, to `run` it) unless it has the
    parameter names and observation_dim the machine was trained with, which an edited simulator
    file may have changed; warns if only the prior's box changed (`require_same_simulator`).
    `machine` names the machine in messages (`export exports/p`).

    Raises:
      ValueError: naming the simulator, the machine and each change.
    """
    recorded = {"parameter_names": list(self.parameter_names),
                "observation_dim": self.observation_dim, "prior_box": self._prior_box}
    require_same_simulator(recorded, describe_simulator(simulator), simulator.spec, machine)

  @property
  def _prior_box(self) -> Optional[Dict[str, List[float]]]:
    """The prior's box as the metadata record it, `{"low": [d], "high": [d]}` (what
    `describe_simulator` records as `prior_box`); None for other priors and where none is
    recorded. What `check_simulator` and the extrapolation check compare with."""
    prior = self.metadata.get("prior") or {}
    return ({"low": prior.get("low"), "high": prior.get("high")}
            if prior.get("type") == "box" else None)

  def _observations(self, observations) -> tf.Tensor:
    transform = self.metadata["machine_config"]["observation_transform"]
    return tf.constant(check_observation_sets(observations, self.observation_dim,
                                              transform=transform))

  def infer(self, observations, seed: int = 0,
            num_starts: Optional[int] = None) -> InferenceResult:
    """Runs all `T` steps in one graph call, simulator included (TF-native simulators only).

    With `num_starts = R > 1` (None: `answer_starts`), each data set is run `R` times from its
    own starts, in the same call, and the runs are combined by
    `alfi_tf.model.inference.pool_starts` (with the export's pooled std factors).
    """
    if not self.can_infer:
      raise ValueError(f"simulator {self.metadata['simulator']!r} is not TF-native, so the export "
                       "has no infer(); drive it with run(observations, simulate) or start()")
    num_starts = resolve_starts(num_starts, self.answer_starts)
    observations = self._observations(observations).numpy()
    self.require_memory_for_starts(observations, num_starts)
    outputs = self.module.infer(tf.constant(repeat_for_starts(observations, num_starts)),
                                tf.constant([check_seed(seed), 0]))
    return self._pooled(InferenceResult.from_outputs(outputs), num_starts, observations)

  def start(self, observations, seed: int = 0) -> AskTellSession:
    """Begins an ask/tell run on `observations [B, n, d_x]` (or one data set, `[n, d_x]`)."""
    seed = tf.constant([check_seed(seed), 0])
    return AskTellSession(self, self.module.start(self._observations(observations), seed))

  def run(self, observations, simulate: SimulateFn, seed: int = 0,
          num_starts: Optional[int] = None) -> InferenceResult:
    """Runs all steps with `simulate(parameters [B*M, d], num_obs, seed [2])` as the simulator
    (for a machine with a design, `simulate(parameters, design [B*M, N, design_dim], seed)`).

    With the same simulator and seed this equals `infer` (the simulator gets the very seeds the
    in-graph loop would have used), `num_starts` (None: `answer_starts`) included.
    """
    if not callable(simulate):   # found before the first step, not after
      raise TypeError(f"simulate must be callable (parameters, num_obs or design, seed) -> "
                      f"simulations, got {type(simulate).__name__}")
    num_starts = resolve_starts(num_starts, self.answer_starts)
    observations = self._observations(observations).numpy()
    self.require_memory_for_starts(observations, num_starts)
    session = self.start(repeat_for_starts(observations, num_starts), seed)
    while not session.done:
      parameters = session.ask()
      flat = parameters.reshape(-1, parameters.shape[-1])
      if self.design_dim:   # every sample of a data set at that set's design rows
        design = np.repeat(session.design(), parameters.shape[1], axis=0)
        simulated = simulate(flat, design, session.simulation_seed)
      else:
        simulated = simulate(flat, self.num_simulated_obs, session.simulation_seed)
      session.tell(np.asarray(simulated))
    return self._pooled(session.result(), num_starts, observations)

  def require_memory_for_starts(self, observations: np.ndarray, num_starts: int,
                                name: str = "num_starts") -> None:
    """Refuses `num_starts` runs per data set of `observations [B, n, d_x]` that cannot fit in
    memory, before anything is allocated (`infer` and `run` check; a binary checks first to name
    its flag, `name`).

    At every step each of the `B R` runs passes its `n` observed and `M N` simulated observations
    through the set encoder, which holds `d_x + encoder_hidden + encoder_out` floats for each of
    them (a lower bound: the step holds more).
    """
    config = self.metadata["machine_config"]
    runs = observations.shape[0] * num_starts
    per_observation = self.observation_dim + config["encoder_hidden"] + config["encoder_out"]
    observations_per_run = observations.shape[1] + self.num_samples * self.num_simulated_obs
    require_memory(4 * runs * observations_per_run * per_observation,
                   f"{name}={num_starts} runs of each of {observations.shape[0]} data set(s)",
                   f"use fewer {name}, or split the data sets over several calls")

  def extrapolations(self, observations, result: InferenceResult) -> List[List[str]]:
    """Per data set of `observations [B, n, d_x]`, why `result`'s answer to it is an
    extrapolation (`alfi_tf.model.inference.extrapolations`; an empty list: no sign of one).

    `infer` and `run` return them already (`InferenceResult.extrapolations`); this checks the
    answers they do not (ask/tell's `session.result()`)."""
    return self._extrapolations(self._observations(observations).numpy(), result)

  def _extrapolations(self, observations: np.ndarray,
                      result: InferenceResult) -> List[List[str]]:
    """`extrapolations` of observations `_observations` has checked already."""
    standardization, box = self.metadata["standardization"], self._prior_box
    set_means = standardized_set_means(
        observations, self.metadata["machine_config"]["observation_transform"],
        np.asarray(standardization["observation_mean"]),
        np.asarray(standardization["observation_std"]))
    bounds = None if box is None else (box["low"], box["high"])
    return extrapolations(result, set_means, bounds, self.parameter_names)

  def _pooled(self, result: InferenceResult, num_starts: int,
              observations: np.ndarray) -> InferenceResult:
    """The runs `result` of a complete run of `num_starts` starts on each data set of
    `observations [B, n, d_x]`, pooled (`pool_starts`, with the export's pooled factors) and
    checked: `check_failed_simulations`, and the answers' `extrapolations` (carried, and warned
    about)."""
    result = pool_starts(result, num_starts, self.pooled_std_scales)
    check_failed_simulations(result, num_starts * self.num_steps * self.num_samples)
    return flag_extrapolations(result, self._extrapolations(observations, result))
