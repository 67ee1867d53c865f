"""SavedModel export of a trained machine: `infer`, ask/tell `start` / `step`, and metadata.

The export needs only TensorFlow to load and run. Its signatures:

* `infer(observations [B, n, d_x], seed [2])` (TF-native simulators only: the simulator is traced
  into the graph) -> final `mean`, `std` (raw units, `[B, d]`), `trajectory_mean`,
  `trajectory_std` (`[B, T, d]`), `initial_mean` and `proposal_mean` (`[B, d]`): the fields of
  `alfi_tf.model.inference.InferenceResult`.
* `start(observations, seed)` -> the loop state, plus `parameters [B, M, d]` to simulate (raw units)
  and the `simulation_seed [2]` that the in-graph simulator would have used for them. A machine
  that simulates at the observed design (metadata `design_dim > 0`) also returns `design_rows
  [B, N]`: the rows of each data set whose first `design_dim` columns the step's `N` simulated
  observations must use, for all `M` samples (`InferenceMachine.design_rows`).
* `step(<state>, simulations [B, M, N, d_x])` -> the next state and parameters. After `T` calls
  `done` is true and `mean` / `std` are the answer (`answer_psi` its parameters: the average of
  the last iterates `psi`, `InferenceMachine.average_iterates`). Driving start/step with the same simulator and
  seeds gives exactly what `infer` gives.
* `metadata()` -> `{"metadata": JSON string}` (also stored as the asset `alfi_metadata.json`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Dict, Optional

import tensorflow as tf
from absl import logging

from alfi_tf import __version__
from alfi_tf.config import (OBSERVATION_TRANSFORM_MINIMUM, default_test_horizon,
                            require_horizon, to_dict)
from alfi_tf.model.arguments import require_positive_integer
from alfi_tf.model.machine import InferenceMachine, LoopState
from alfi_tf.simulators import NumpySimulator
from alfi_tf.workdir import leftovers_of_dead_processes

#: Bumped whenever the signatures or the state layout change; loaders refuse other versions.
EXPORT_FORMAT_VERSION = 3
METADATA_ASSET = "alfi_metadata.json"
STATE_KEYS = ("psi", "lstm_h", "lstm_c", "real_encoding", "samples", "loop_seed", "step",
              "trajectory", "initial_psi", "observations")


def machine_metadata(machine: InferenceMachine, num_steps: int) -> Dict[str, Any]:
  """Everything a user of an export needs to know, as plain JSON-able values."""
  simulator = machine.simulator
  bounds = simulator.parameter_bounds
  prior: Dict[str, Any] = {"repr": repr(simulator.prior)}
  if bounds is not None:
    prior.update(type="box", low=bounds[0].tolist(), high=bounds[1].tolist())
  config = machine.config
  return {
      "format": "alfi-tf export",
      "format_version": EXPORT_FORMAT_VERSION,
      "alfi_tf_version": __version__,
      "tensorflow_version": tf.__version__,
      "simulator": simulator.name,
      "simulator_spec": simulator.spec,
      "tf_native_simulator": not isinstance(simulator, NumpySimulator),
      "parameter_names": list(simulator.parameter_names),
      "observation_dim": simulator.observation_dim,
      "prior": prior,
      "num_steps": num_steps,
      "num_samples": config.num_samples,
      # What a step simulates per sample when the machine answers (`answer_simulated_obs`).
      "num_simulated_obs": config.simulated_obs(),
      # The design columns simulated at the real data's (0: none, or the simulator draws its own).
      "design_dim": simulator.design_dim if machine.simulates_at_observed_design else 0,
      "machine_config": to_dict(config),
      # The answer's calibration (in the graph already; recorded to be read).
      "std_scales": machine.get_config()["std_scales"],
      "mean_shifts": machine.get_config()["mean_shifts"],
      # The factors of answers pooled over `machine_config.answer_starts` runs
      # (`PooledStdScales.to_json`), applied by `DeployedMachine.infer` and `run`; None: none.
      "pooled_std_scales": machine.get_config()["pooled_std_scales"],
      # `theta_mean` / `theta_std` standardise `u = b^-1(theta)` where this names a bijector `b`
      # (`MachineConfig.unconstrained_parameters`), else `theta` itself.
      "parameter_bijector": (None if machine.parameter_space.bijector is None
                             else machine.parameter_space.bijector.name),
      "standardization": {
          "theta_mean": machine.theta_standardizer.mean.numpy().tolist(),
          "theta_std": machine.theta_standardizer.std.numpy().tolist(),
          "observation_mean": machine.observation_standardizer.mean.numpy().tolist(),
          "observation_std": machine.observation_standardizer.std.numpy().tolist(),
      },
  }


class ExportModule(tf.Module):
  """The machine wrapped in signature-ready `tf.function`s; also usable in-process, unsaved."""

  def __init__(self, machine: InferenceMachine, num_steps: Optional[int] = None):
    super().__init__(name="alfi_export")
    # The Keras model is deliberately left untracked: Keras 3 variables are saved as a wrapper
    # variable that TF1-style loaders (`saved_model_cli run`, TF Serving's C++ loader) never
    # restore ("Could not find variable ..."; keras-team/keras#19274). The plain tf.Variables under
    # them, which the traced functions actually read, are tracked instead.
    object.__setattr__(self, "machine", machine)
    self.machine_variables = [variable.value for variable in machine.weights]
    # 0, 2.5 or True would otherwise become the default horizon, 2 or 1 steps without a word.
    self.num_steps = (default_test_horizon(machine.config) if num_steps is None else
                      require_positive_integer("num_steps", num_steps))
    require_horizon("num_steps", self.num_steps)
    simulator = machine.simulator
    d, dx = simulator.parameter_dim, simulator.observation_dim
    m, n = machine.config.num_samples, machine.config.simulated_obs()
    e, units = machine.encoding_size, machine.config.lstm_units
    psi_size = machine.proposal.psi_size
    self.metadata_json = json.dumps(machine_metadata(machine, self.num_steps), sort_keys=True)
    observations = tf.TensorSpec([None, None, dx], tf.float32, name="observations")
    seed = tf.TensorSpec([2], tf.int32, name="seed")
    self.start = tf.function(self._start, input_signature=[observations, seed])
    self.step = tf.function(self._step, input_signature=[
        tf.TensorSpec([None, psi_size], tf.float32, name="psi"),
        tf.TensorSpec([None, units], tf.float32, name="lstm_h"),
        tf.TensorSpec([None, units], tf.float32, name="lstm_c"),
        tf.TensorSpec([None, e], tf.float32, name="real_encoding"),
        tf.TensorSpec([None, m, d], tf.float32, name="samples"),
        tf.TensorSpec([2], tf.int32, name="loop_seed"),
        tf.TensorSpec([], tf.int32, name="step"),
        tf.TensorSpec([None, None, psi_size], tf.float32, name="trajectory"),
        tf.TensorSpec([None, psi_size], tf.float32, name="initial_psi"),
        tf.TensorSpec([None, None, dx], tf.float32, name="observations"),
        tf.TensorSpec([None, m, n, dx], tf.float32, name="simulations"),
    ])
    self.metadata = tf.function(lambda: {"metadata": tf.constant(self.metadata_json)},
                                input_signature=[])
    self.infer = None
    if not isinstance(simulator, NumpySimulator):
      self.infer = tf.function(self._infer, input_signature=[observations, seed])

  def signatures(self) -> Dict[str, Any]:
    """The SavedModel signatures: the `tf.function`s themselves, which `tf.saved_model.save`
    traces once, in its save context (concrete functions traced before it are traced again
    there, doubling the export's time)."""
    signatures = {"start": self.start, "step": self.step, "metadata": self.metadata}
    if self.infer is not None:
      signatures["infer"] = self.infer
    return signatures

  def _outputs(self, state: LoopState, loop_seed: tf.Tensor, step: tf.Tensor,
               trajectory: tf.Tensor, initial_psi: tf.Tensor,
               observations: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The next samples to simulate plus every state tensor, as one flat dict."""
    proposal_seed, simulation_seed = self.machine.step_seeds(loop_seed, step)
    samples = self.machine.propose(state, proposal_seed)
    answers = self.machine.average_iterates(trajectory)
    # After `start` (a trajectory of static length 0) the answer is the starting proposal; after
    # a step, the average of the last iterates.
    answer_psi = state.psi if trajectory.shape[1] == 0 else answers[:, -1]
    mean, std = self.machine.answer(answer_psi, step)
    trajectory_mean, trajectory_std = self.machine.answer(
        answers, tf.range(1, tf.shape(trajectory)[1] + 1))
    initial_mean, _ = self.machine.to_raw(initial_psi)
    outputs = {
        "psi": state.psi, "lstm_h": state.lstm_h, "lstm_c": state.lstm_c,
        "real_encoding": state.real_encoding, "samples": samples, "loop_seed": loop_seed,
        "step": step, "trajectory": trajectory, "initial_psi": initial_psi,
        "parameters": self.machine.simulation_parameters(samples),
        "simulation_seed": simulation_seed,
        "done": step >= self.num_steps,
        "mean": mean, "std": std, "answer_psi": answer_psi,
        "proposal_mean": self.machine.parameter_space.proposal_mean(self.machine.proposal,
                                                                    answer_psi),
        "trajectory_mean": trajectory_mean, "trajectory_std": trajectory_std,
        "initial_mean": initial_mean, "observations": observations,
    }
    if self.machine.simulates_at_observed_design:
      outputs["design_rows"] = self.machine.design_rows(
          simulation_seed, tf.shape(observations)[0], tf.shape(observations)[1])
    return outputs

  def _checked(self, observations: tf.Tensor) -> tf.Tensor:
    """`observations [B, n, d_x]`, checked in the graph as `DeployedMachine` checks them before
    calling it, for callers of the bare SavedModel: an InvalidArgumentError naming the problem
    where they hold NaN/inf, values outside the observation transform's domain or no observation
    per set (the graph would clamp NaN and negative counts to 0 and answer as if they were)."""
    # NaN first: it would fail the domain's comparison too, and be misnamed there.
    observations = tf.debugging.assert_all_finite(observations,
                                                  "observations contain NaN/inf values")
    checks = [tf.debugging.assert_positive(tf.shape(observations)[1], message=(
        "observations must hold at least one observation per set (num_obs > 0)"))]
    minimum = OBSERVATION_TRANSFORM_MINIMUM.get(self.machine.config.observation_transform)
    if minimum is not None:
      checks.append(tf.debugging.assert_greater_equal(observations, minimum, message=(
          f"observations must be >= {minimum:g} for this machine (it reads them through "
          f"{self.machine.config.observation_transform})")))
    with tf.control_dependencies(checks):
      return tf.identity(observations)

  def _start(self, observations: tf.Tensor, seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    observations = self._checked(observations)
    state, loop_seed = self.machine.begin(observations, seed)
    batch = tf.shape(observations)[0]
    empty = tf.zeros(tf.stack([batch, 0, tf.shape(state.psi)[1]]))
    return self._outputs(state, loop_seed, tf.constant(0), empty, state.psi, observations)

  def _step(self, psi, lstm_h, lstm_c, real_encoding, samples, loop_seed, step, trajectory,
            initial_psi, observations, simulations) -> Dict[str, tf.Tensor]:
    # A caller of the bare SavedModel that passes back a stale trajectory would get answers
    # averaged over the wrong iterates.
    consistent = tf.debugging.assert_equal(tf.shape(trajectory)[1], step, message=(
        "the trajectory in the state must hold psi_1 .. psi_step: pass every state output of the "
        "previous start/step call back"))
    with tf.control_dependencies([consistent]):
      psi = tf.identity(psi)
    _, simulation_seed = self.machine.step_seeds(loop_seed, step)
    state = self.machine.update(LoopState(psi, lstm_h, lstm_c, real_encoding), samples,
                                simulations, real_at_design=self.machine.observations_at_design(
                                    observations, simulation_seed))
    trajectory = tf.concat([trajectory, state.psi[:, tf.newaxis]], axis=1)
    return self._outputs(state, loop_seed, step + 1, trajectory, initial_psi, observations)

  def _infer(self, observations: tf.Tensor, seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    return self.machine.infer(self._checked(observations), seed, self.num_steps)


def is_export(path: str) -> bool:
  """Whether `path` is a directory written by `export_machine`."""
  return (os.path.isfile(os.path.join(path, "saved_model.pb"))
          and os.path.isfile(os.path.join(path, "assets", METADATA_ASSET)))


def export_machine(machine: InferenceMachine, export_dir: str, num_steps: Optional[int] = None,
                   overwrite: bool = False) -> str:
  """Writes a SavedModel of `machine` to `export_dir`, atomically.

  The model is saved into a temporary sibling directory and renamed into place at the end, so
  `export_dir` is either absent, the previous export, or the complete new one.

  Args:
    machine: a trained machine.
    export_dir: destination; refused if it exists unless `overwrite`.
    num_steps: the horizon `T` baked into `infer` and ask/tell, a positive integer up to
      `MAX_STEPS` (None: `default_test_horizon`).
    overwrite: replace an existing `export_dir` (for a symbolic link, the directory it points
      to), which must itself be an alfi-tf export (anything else, a training workdir say, is
      refused and left untouched). Only what an export writes (`saved_model.pb`,
      `fingerprint.pb`, `variables/`, `assets/`) is replaced; any other file in it (a result of
      `alfi-infer`, the user's data) is moved into the new export.

  Returns:
    `export_dir`, absolute, symbolic links resolved.
  """
  # Through a symbolic link, the export it points to is replaced and the link kept.
  export_dir = os.path.realpath(export_dir)
  if os.path.exists(export_dir) and not os.path.isdir(export_dir):
    raise FileExistsError(f"{export_dir} is a file, not an export directory; nothing was "
                          "overwritten: choose another export directory")
  if os.path.exists(export_dir) and not overwrite:
    raise FileExistsError(f"export directory {export_dir} already exists; pass overwrite=True "
                          "(--overwrite) to replace it")
  if os.path.exists(export_dir) and not is_export(export_dir):
    raise FileExistsError(f"{export_dir} exists and is not an alfi-tf export (no saved_model.pb "
                          f"with assets/{METADATA_ASSET}); overwrite only replaces an export, so "
                          "nothing was deleted: choose another export directory")
  module = ExportModule(machine, num_steps)
  parent = os.path.dirname(export_dir)
  os.makedirs(parent, exist_ok=True)
  _recover_interrupted_exports(export_dir)
  # The process id in the names lets a later export tell a killed export's leftovers from a
  # concurrent one's.
  prefix = f".{os.path.basename(export_dir)}.%s-{os.getpid()}-"
  staging = tempfile.mkdtemp(dir=parent, prefix=prefix % "tmp")
  try:
    model_dir = _save_staged(module, staging)
    if os.path.exists(export_dir):
      retired = tempfile.mkdtemp(dir=parent, prefix=prefix % "old")
      os.rename(export_dir, os.path.join(retired, "model"))
      os.rename(model_dir, export_dir)
      # Killed from here on, the user's files left in `retired` are moved over by the next export
      # (`_recover_interrupted_exports`): at every moment each of them is in one of the two.
      _move_foreign_entries(os.path.join(retired, "model"), export_dir)
      shutil.rmtree(retired)
    else:
      os.rename(model_dir, export_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return export_dir


def _move_foreign_entries(old_export: str, new_export: str) -> None:
  """Moves every entry of `old_export` that `new_export` lacks into it: the files an export does
  not write itself (the export's own, `saved_model.pb` and the rest, are in both)."""
  for name in sorted(set(os.listdir(old_export)) - set(os.listdir(new_export))):
    os.rename(os.path.join(old_export, name), os.path.join(new_export, name))


def _save_staged(module: ExportModule, staging: str) -> str:
  """Saves `module` with its metadata asset under `staging`; returns the SavedModel's directory."""
  asset_source = os.path.join(staging, "source")
  os.makedirs(asset_source)
  asset_path = os.path.join(asset_source, METADATA_ASSET)
  with open(asset_path, "w") as stream:
    stream.write(module.metadata_json)
  module.metadata_asset = tf.saved_model.Asset(asset_path)
  model_dir = os.path.join(staging, "model")
  tf.saved_model.save(module, model_dir, signatures=module.signatures())
  return model_dir


def _recover_interrupted_exports(export_dir: str) -> None:
  """Cleans up after exports to `export_dir` that were killed midway (by processes now dead).

  A staging directory (`.NAME.tmp-PID-*`) is deleted. A retired previous export (`.NAME.old-PID-*`,
  moved aside just before the new one was renamed into place) is moved back if `export_dir` is
  missing, so the previous export is never lost; otherwise the files in it that an export does not
  write are moved into `export_dir`, and the rest is deleted.
  """
  parent, name = os.path.split(export_dir)
  for kind in ("tmp", "old"):
    for leftover in leftovers_of_dead_processes(os.path.join(parent, f".{name}.{kind}-")):
      retired_model = os.path.join(leftover, "model")
      if kind == "old" and not os.path.exists(export_dir) and is_export(retired_model):
        logging.warning("restoring the previous export %s, left aside by a killed export",
                        export_dir)
        os.rename(retired_model, export_dir)
      elif kind == "old" and os.path.isdir(retired_model) and os.path.isdir(export_dir):
        _move_foreign_entries(retired_model, export_dir)
      shutil.rmtree(leftover, ignore_errors=True)
