"""The SavedModel export and its users: `infer` in a TF-only process, ask/tell (in-graph, numpy and
external simulators), metadata, the `export` / `infer` binaries, `saved_model_cli`, and bad input.

Two tiny workdirs are trained once per module (2 Adam steps at learning rate 1e-2, so `psi` moves):
a TF-native `weinberg` machine and a numpy-bridged `lotka_volterra` one. Both are exported with a
horizon (T=3) other than the training one (T=2), and their std recalibrated for steps 1..2 only, so
the export's step 3 uses step 2's factors.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time
import types
import warnings

import numpy as np
import pytest
import tensorflow as tf

from alfi_tf.config import MAX_STEPS, MachineConfig, TrainConfig
from alfi_tf.evaluation.plots import plot_rmse_per_step, plot_trajectory
from alfi_tf.serving.deploy import DeployedMachine
from alfi_tf.model.inference import Inferrer
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.serving.export import (EXPORT_FORMAT_VERSION, METADATA_ASSET, STATE_KEYS,
                                    ExportModule, export_machine, machine_metadata)
from alfi_tf.simulators.command import CommandSimulator
from alfi_tf.serving.observation_files import load_observations
from alfi_tf.simulators import NumpySimulator, box_prior, get_simulator
from alfi_tf.training.calibration import warn_if_unfinished
from alfi_tf.training.trainer import Trainer, set_global_seed
from alfi_tf.workdir import describe_simulator, load_machine
from tests.binary_runs import ROOT, assert_refused, binary_env, run, run_many
TRAIN_STEPS = 2
EXPORT_STEPS = 3
NUM_SAMPLES = 4
NUM_SIMULATED_OBS = 8
NUM_OBS = 40
TINY = dict(num_steps=TRAIN_STEPS, num_samples=NUM_SAMPLES, num_simulated_obs=NUM_SIMULATED_OBS,
            encoder_hidden=8, encoder_out=4, aggregator_hidden=8, aggregator_out=4,
            updater_hidden=8, lstm_units=4, bound=1.0)
TINY_TRAIN = TrainConfig(num_problems=32, num_obs=NUM_OBS, epochs=1, batch_size=16,
                         learning_rate=1e-2, num_validation_problems=8, validate_every=100,
                         checkpoint_every=100, seed=4, calibration_problems=64,
                         calibration_horizon=TRAIN_STEPS)
TOLERANCE = dict(rtol=1e-5, atol=1e-5)
SIGNATURES = ("infer", "start", "step", "metadata")

# An external Weinberg simulator following the CSV protocol of alfi_tf/simulators/command.py: cos(theta) drawn
# from the density proportional to max(0, 1 + x^2 + A x) on [-1, 1] by rejection.
WEINBERG_SCRIPT = """\
import sys
import numpy as np

parameters_csv, output_csv, num_obs, seed = sys.argv[1:5]
num_obs = int(num_obs)
theta = np.loadtxt(parameters_csv, delimiter=",", skiprows=1, ndmin=2)
asymmetry = 2.0 * np.tanh(10.0 * (2.0 * theta[:, 0] - 90.0) / 90.0) * theta[:, 1]
rng = np.random.default_rng(int(seed))
rows = []
for a in asymmetry:
  accepted = np.empty(0)
  while accepted.size < num_obs:
    x = rng.uniform(-1.0, 1.0, 4 * num_obs)
    height = rng.uniform(0.0, 2.0 + abs(a), 4 * num_obs)
    accepted = np.concatenate([accepted, x[height < np.maximum(0.0, 1.0 + x * x + a * x)]])
  rows.append(accepted[:num_obs])
np.savetxt(output_csv, np.concatenate(rows)[:, None], delimiter=",", fmt="%.9g",
           header="cos_theta")
"""

FAILING_SCRIPT = """\
import sys
sys.stderr.write("detector calibration missing\\n")
sys.exit(3)
"""

# Returns one observation per parameter vector instead of NUM_OBS.
SHORT_SCRIPT = """\
import sys
import numpy as np
theta = np.loadtxt(sys.argv[1], delimiter=",", skiprows=1, ndmin=2)
np.savetxt(sys.argv[2], np.zeros((theta.shape[0], 1)), delimiter=",")
"""

# Runs in a process that imports nothing but TensorFlow and numpy.
TF_ONLY_SCRIPT = """\
import sys
import numpy as np
import tensorflow as tf

export_dir, observations_npy, seed, output_npz = sys.argv[1:5]
model = tf.saved_model.load(export_dir)
outputs = model.signatures["infer"](observations=tf.constant(np.load(observations_npy)),
                                    seed=tf.constant([int(seed), 0]))
np.savez(output_npz, **{key: value.numpy() for key, value in outputs.items()})
imported = sorted(name for name in sys.modules
                  if name.startswith(("alfi_tf", "tensorflow_probability")))
assert not imported, f"the export pulled in {imported}"
print("tf-only ok")
"""


def _observations(name: str, num_problems: int = 2, seed: int = 11) -> np.ndarray:
  _, observations = get_simulator(name).sample_problems(num_problems, NUM_OBS,
                                                        tf.constant([seed, 0]))
  return observations.numpy()


def _train_and_export(tmp_path_factory, name: str) -> types.SimpleNamespace:
  base = tmp_path_factory.mktemp(name)
  workdir, export_dir = str(base / "run"), str(base / "exports" / "model")
  set_global_seed(TINY_TRAIN.seed)
  result = Trainer(MachineConfig(simulator=name, **TINY), TINY_TRAIN, workdir,
                   log_every=1000).train()
  assert result.steps == 2
  export_machine(load_machine(workdir), export_dir, EXPORT_STEPS)
  # Loaded once: a loaded export is stateless (sessions carry their own state); tests share it.
  return types.SimpleNamespace(workdir=workdir, export_dir=export_dir,
                               deployed=DeployedMachine.load(export_dir),
                               simulator=get_simulator(name), observations=_observations(name))


@pytest.fixture(scope="module")
def weinberg(tmp_path_factory):
  return _train_and_export(tmp_path_factory, "weinberg")


@pytest.fixture(scope="module")
def lotka_volterra(tmp_path_factory):
  return _train_and_export(tmp_path_factory, "lotka_volterra")


def _assert_same(result, mean, std, trajectory_mean, trajectory_std):
  np.testing.assert_allclose(result.mean, mean, **TOLERANCE)
  np.testing.assert_allclose(result.std, std, **TOLERANCE)
  np.testing.assert_allclose(result.trajectory_mean, trajectory_mean, **TOLERANCE)
  np.testing.assert_allclose(result.trajectory_std, trajectory_std, **TOLERANCE)


def _assert_results_equal(actual, expected):
  _assert_same(actual, expected.mean, expected.std, expected.trajectory_mean,
               expected.trajectory_std)
  if expected.psi is None:   # pooled starts
    assert actual.psi is None
  else:
    np.testing.assert_allclose(actual.psi, expected.psi, **TOLERANCE)
  np.testing.assert_array_equal(actual.failed_sets, expected.failed_sets)


# 1. `infer` in a process with TensorFlow only.


def test_export_infers_in_a_tensorflow_only_process(weinberg, tmp_path):
  seed = 7
  observations_npy, output_npz = tmp_path / "observations.npy", tmp_path / "outputs.npz"
  np.save(observations_npy, weinberg.observations)
  (tmp_path / "tf_only.py").write_text(TF_ONLY_SCRIPT)
  env = binary_env()
  del env["PYTHONPATH"]
  process = subprocess.Popen(
      [sys.executable, "tf_only.py", weinberg.export_dir, str(observations_npy), str(seed),
       str(output_npz)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  # The in-library answer, from the training workdir, while the other process runs.
  expected = DeployedMachine.load(weinberg.workdir, num_steps=EXPORT_STEPS).infer(
      weinberg.observations, seed=seed)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  assert "tf-only ok" in stdout
  exported = np.load(output_npz)
  assert expected.trajectory_mean.shape == (2, EXPORT_STEPS, 2)
  _assert_same(expected, exported["mean"], exported["std"], exported["trajectory_mean"],
               exported["trajectory_std"])
  # The trained machine moves psi, so the comparison is not between constant trajectories.
  assert np.abs(np.diff(expected.trajectory_mean, axis=1)).min() > 1e-4


# 2. Ask/tell through the export with the in-graph simulator.


def test_ask_tell_equals_infer(weinberg):
  machine = weinberg.deployed
  assert machine.can_infer and machine.num_steps == EXPORT_STEPS
  inferred = machine.infer(weinberg.observations, seed=3)
  _assert_results_equal(machine.run(weinberg.observations, weinberg.simulator.simulate, seed=3),
                        inferred)
  other_seed = machine.infer(weinberg.observations, seed=4)
  assert np.abs(other_seed.trajectory_mean - inferred.trajectory_mean).max() > 1e-4


def test_session_steps_to_the_same_result_as_run(weinberg):
  machine = weinberg.deployed
  simulator = weinberg.simulator
  low, high = simulator.parameter_bounds
  session = machine.start(weinberg.observations, seed=5)
  for step in range(EXPORT_STEPS):
    assert session.step == step and not session.done
    parameters = session.ask()
    assert parameters.shape == (2, NUM_SAMPLES, 2)
    assert np.all(parameters >= low) and np.all(parameters <= high)
    simulated = simulator.simulate(parameters.reshape(-1, 2), NUM_SIMULATED_OBS,
                                   session.simulation_seed)
    session.tell(np.asarray(simulated).reshape(2, NUM_SAMPLES, NUM_SIMULATED_OBS, 1))
  assert session.step == EXPORT_STEPS and session.done
  result = session.result()
  assert result.trajectory_mean.shape == (2, EXPORT_STEPS, 2)
  _assert_results_equal(result, machine.run(weinberg.observations, simulator.simulate, seed=5))
  for told_too_late in (session.ask, lambda: session.tell(
      np.zeros((2, NUM_SAMPLES, NUM_SIMULATED_OBS, 1)))):
    # Parameters asked after the last step would never be told: asking is refused like telling.
    with pytest.raises(RuntimeError, match=f"all {EXPORT_STEPS} steps are done"):
      told_too_late()


def test_session_rejects_bad_simulations(weinberg):
  machine = weinberg.deployed
  session = machine.start(weinberg.observations, seed=5)
  with pytest.raises(ValueError, match=r"step 1: simulations must have shape \(2, 4, 8, 1\)"):
    session.tell(np.zeros((2, NUM_SAMPLES, NUM_SIMULATED_OBS + 1, 1)))
  session.tell(np.zeros((2 * NUM_SAMPLES, NUM_SIMULATED_OBS, 1)))   # [B*M, N, d_x] is accepted
  assert session.step == 1
  with pytest.raises(ValueError, match=r"step 2: simulations must have shape"):
    session.tell(np.zeros((NUM_SAMPLES, NUM_SIMULATED_OBS, 1)))
  assert session.step == 1, "a rejected tell must not advance the session"
  with pytest.raises(ValueError, match="step 2: simulations must be real numbers"):
    session.tell(np.zeros((2, NUM_SAMPLES, NUM_SIMULATED_OBS, 1), np.complex64))
  ragged = [[[0.0]] * NUM_SIMULATED_OBS] * (2 * NUM_SAMPLES - 1) + [[[0.0]]]
  with pytest.raises(ValueError, match="step 2: simulations must be a regular numeric array"):
    session.tell(ragged)
  with pytest.raises(ValueError, match="observations must be a regular numeric array"):
    machine.infer([[1.0, 2.0], [3.0]])
  # A failed simulation (NaN/inf) is left out of the step's mean over the samples, as in the graph.
  simulations = np.zeros((2, NUM_SAMPLES, NUM_SIMULATED_OBS, 1))
  simulations[1, 2, 3, 0] = np.nan
  session.tell(simulations)
  assert session.step == 2 and np.all(np.isfinite(session.result().mean))


def test_a_told_value_beyond_float32_fails_its_set_like_inf(weinberg):
  """A value beyond float32's range (an overflow in the user's float64 code) raised numpy's bare
  'overflow encountered in cast' RuntimeWarning; it now fails its set like inf, as a numpy
  simulator's does (named in a first-time warning), and nothing else changes."""
  results = []
  for value in (1e300, np.inf):
    session = weinberg.deployed.start(weinberg.observations, seed=5)
    simulations = np.zeros((2, NUM_SAMPLES, NUM_SIMULATED_OBS, 1))
    simulations[1, 2, 3, 0] = value
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      session.tell(simulations)
    results.append(session.result())
  np.testing.assert_array_equal(results[0].failed_sets, [0, 1])
  _assert_results_equal(*results)


@pytest.mark.parametrize("proposal, tail_averaging, start, unconstrained, features", [
    ("full_covariance_gaussian", 0.0, "prior_draw", False, {}),
    ("gaussian_mixture", 0.0, "prior_draw", False, {}),
    ("diagonal_gaussian", 0.5, "prior_mean", False, {"raw_mean_features": True}),
    ("full_covariance_gaussian", 0.9, "prior_draw", False,
     {"moment_features": True, "regression_features": True, "regression_shortcut": True}),
    ("gaussian_mixture", 0.5, "prior_mean", True, {})])
def test_other_proposal_families_export_and_step_alike(proposal, tail_averaging, start,
                                                       unconstrained, features, tmp_path):
  """... and so do answers that average the last iterates, at every step of a session,
  proposals in the unconstrained space of the prior's box (answers by quadrature), encodings
  with the sets' raw means (a wider real encoding in the session's state) and updates given the
  regression step (and adding it through the shortcut)."""
  from alfi_tf.model.machine import InferenceMachine
  simulator = get_simulator("weinberg")
  set_global_seed(1)
  machine = InferenceMachine(simulator, MachineConfig(simulator="weinberg", proposal=proposal,
                                                      mixture_components=2,
                                                      tail_averaging=tail_averaging, start=start,
                                                      unconstrained_parameters=unconstrained,
                                                      **features, **TINY))
  theta, observations = simulator.sample_problems(32, NUM_OBS, tf.constant([1, 2]))
  machine.adapt(theta.numpy(), observations.numpy())
  layer = machine.updater.output_net.layers[-1]   # so that psi moves
  layer.bias.assign(0.05 * np.arange(1, layer.bias.shape[0] + 1, dtype=np.float32)
                    / layer.bias.shape[0])
  if machine.updater.gate is not None:   # and the regression step is added directly
    machine.updater.gate.bias.assign(np.full(layer.bias.shape, 0.5, np.float32))
  export_machine(machine, str(tmp_path / "model"), EXPORT_STEPS)
  deployed = DeployedMachine.load(str(tmp_path / "model"))
  assert deployed.metadata["machine_config"]["proposal"] == proposal
  assert (deployed.metadata["parameter_bijector"] is not None) == unconstrained
  observations = _observations("weinberg")
  inferred = deployed.infer(observations, seed=3)
  _assert_results_equal(deployed.run(observations, simulator.simulate, seed=3), inferred)
  assert np.abs(np.diff(inferred.trajectory_mean, axis=1)).min() > 1e-5
  assert np.all(inferred.std > 0)
  session = deployed.start(observations, seed=3)
  np.testing.assert_allclose(session.result().mean, inferred.initial_mean, **TOLERANCE)
  for step in range(EXPORT_STEPS):   # the answer after each step, as `infer` gives it
    session.tell(simulator.simulate(session.ask().reshape(-1, 2), NUM_SIMULATED_OBS,
                                    session.simulation_seed))
    np.testing.assert_allclose(session.result().mean, inferred.trajectory_mean[:, step],
                               **TOLERANCE)
  if start == "prior_mean":   # the export starts where the machine does
    # (the mean of the initial proposal centred on the standardised origin: under a nonlinear
    # map, that of its push-forward)
    start_mean, _ = machine.to_raw(machine.proposal.initial_psi(tf.zeros([2, 2])))
    np.testing.assert_allclose(inferred.initial_mean, start_mean, **TOLERANCE)


# 3. A numpy simulator: no `infer`, ask/tell with the simulator outside the graph.


def test_numpy_simulator_export_has_no_infer(lotka_volterra):
  machine = lotka_volterra.deployed
  assert not machine.can_infer
  assert "infer" not in machine.module.signatures
  with pytest.raises(ValueError, match=r"no infer\(\); drive it with run\(observations"):
    machine.infer(lotka_volterra.observations)


class _EditedLotkaVolterra(NumpySimulator):
  """`lotka_volterra` as an edited simulator file may leave it: other names, observation_dim or
  prior box."""

  name = "lotka_volterra"

  def __init__(self, names, observation_dim, high):
    super().__init__(names, observation_dim, box_prior([np.log(0.5)] * 4, [high] * 4))

  def simulate_numpy(self, theta, num_obs, rng):
    raise AssertionError("refused before it simulates")


def test_a_simulator_changed_since_the_export_is_refused(lotka_volterra, caplog):
  machine, names = lotka_volterra.deployed, list(lotka_volterra.deployed.parameter_names)
  machine.check_simulator(get_simulator("lotka_volterra"))   # the one it was trained with
  assert "changed" not in caplog.text
  with pytest.raises(ValueError, match=re.escape(
      f"simulator 'lotka_volterra' changed since export E was trained on it: parameter_names was "
      f"{names!r}, is now {names[::-1]!r}")):
    machine.check_simulator(_EditedLotkaVolterra(names[::-1], 20, np.log(2.0)), "export E")
  with pytest.raises(ValueError, match="observation_dim was 20, is now 3"):
    machine.check_simulator(_EditedLotkaVolterra(names, 3, np.log(2.0)))
  machine.check_simulator(_EditedLotkaVolterra(names, 20, np.log(3.0)))   # only warned about
  assert "the prior of simulator 'lotka_volterra' changed since this machine" in caplog.text


def test_numpy_simulator_ask_tell_equals_in_graph_bridge(lotka_volterra):
  seed = 6
  result = lotka_volterra.deployed.run(
      lotka_volterra.observations, get_simulator("lotka_volterra").simulate, seed=seed)
  machine = load_machine(lotka_volterra.workdir)
  trajectory = machine(tf.constant(lotka_volterra.observations), seed=tf.constant([seed, 0]),
                       num_steps=EXPORT_STEPS)
  # The export's answer is recalibrated as the run's `calibration.json` says.
  mean, std = machine.answer(trajectory.psi, tf.range(1, EXPORT_STEPS + 1))
  assert machine.std_scales is not None
  assert result.trajectory_mean.shape == (2, EXPORT_STEPS, 4)
  np.testing.assert_allclose(result.trajectory_mean, mean.numpy(), **TOLERANCE)
  np.testing.assert_allclose(result.trajectory_std, std.numpy(), **TOLERANCE)
  np.testing.assert_allclose(result.mean, mean.numpy()[:, -1], **TOLERANCE)
  # The machine moves at every step, so the equalities above are not those of a standing start
  # (its proposals: an answer pinned to the box's edge by the restriction moves by little).
  assert np.abs(np.diff(trajectory.psi.numpy(), axis=1)).min() > 1e-4


# 4. External simulator commands.


def _command(tmp_path, name: str, source: str) -> str:
  script = tmp_path / name
  script.write_text(source)
  return shlex.join([sys.executable, str(script)])


def _weinberg_mean(asymmetry: float) -> float:
  """E[cos theta] under the density proportional to max(0, 1 + x^2 + A x), by quadrature."""
  x = np.linspace(-1.0, 1.0, 20001)
  density = np.maximum(0.0, 1.0 + x * x + asymmetry * x)
  return float(np.sum(x * density) / np.sum(density))


def test_command_simulator_follows_the_protocol(tmp_path):
  simulate = CommandSimulator(_command(tmp_path, "weinberg_sim.py", WEINBERG_SCRIPT),
                              ("beam_energy", "fermi_constant"), observation_dim=1)
  parameters = np.array([[40.0, 0.5], [45.0, 1.0], [50.0, 1.5]], np.float32)
  first = simulate(parameters, 400, np.array([1, 2], np.int32))
  assert first.shape == (3, 400, 1) and first.dtype == np.float32
  assert np.all(np.abs(first) <= 1.0)
  np.testing.assert_array_equal(first, simulate(parameters, 400, np.array([1, 2], np.int32)))
  assert not np.array_equal(first, simulate(parameters, 400, np.array([1, 3], np.int32)))
  assert simulate.calls == 3
  # The sample means match the model's (A = -0.80, 0 and 2.41; std of a mean of 400 is < 0.03).
  asymmetry = get_simulator("weinberg").asymmetry(parameters).numpy()
  np.testing.assert_allclose(first.mean(axis=(1, 2)), [_weinberg_mean(a) for a in asymmetry],
                             atol=0.1)


def test_a_timed_out_command_is_killed_with_its_children(tmp_path):
  child_pid = tmp_path / "child.pid"
  script = tmp_path / "slow.sh"
  script.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {child_pid}\nsleep 60\n")
  script.chmod(0o755)
  simulate = CommandSimulator(str(script), ["x"], 1, timeout=2)
  with pytest.raises(RuntimeError, match=r"timed out after 2s \(killed with its child processes\)"):
    simulate(np.zeros((1, 1)), 1, np.array([0, 0]))
  pid = int(child_pid.read_text())
  for _ in range(50):   # the kill is asynchronous; the zombie is reaped by init
    if not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]:
      break
    time.sleep(0.1)
  else:
    raise AssertionError(f"child process {pid} still runs")


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_command_timeout_must_be_positive(timeout):
  with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
    CommandSimulator("true", ["x"], 1, timeout=timeout)


@pytest.mark.parametrize("name", ["a,b", 'say "a"', "a\nb"])
def test_command_parameter_names_that_would_break_the_csv_header_are_refused(name):
  with pytest.raises(ValueError, match="may not hold commas, quotes or line breaks"):
    CommandSimulator("true", ["x", name], 1)


def test_infer_binary_with_simulator_command(weinberg, tmp_path):
  observations = tmp_path / "observations.npy"
  np.save(observations, weinberg.observations)
  output, plot = tmp_path / "out.json", tmp_path / "trajectory.png"
  # Results of an earlier run, which this one replaces.
  output.write_text(json.dumps({key: None for key in
                                ("model", "observations", "seed", "num_steps", "parameter_names",
                                 "datasets")}))
  plot_trajectory(str(plot), ["a"], np.zeros((1, 3, 1)), np.ones((1, 3, 1)))
  completed = run(
      "experiments.infer", f"--model={weinberg.export_dir}", f"--observations={observations}",
      f"--simulator_command={_command(tmp_path, 'weinberg_sim.py', WEINBERG_SCRIPT)}",
      f"--output={output}", f"--plot={plot}", "--seed=2", "--num_starts=2")
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert "data set 1 (40 observations)" in completed.stdout
  payload = json.loads(output.read_text())
  assert payload["num_steps"] == EXPORT_STEPS and payload["simulator"] == "weinberg"
  assert payload["num_starts"] == 2   # two pooled runs per data set, still one answer each
  assert payload["parameter_names"] == ["beam_energy", "fermi_constant"]
  assert len(payload["datasets"]) == 2
  for dataset in payload["datasets"]:
    assert set(dataset["parameters"]) == {"beam_energy", "fermi_constant"}
    assert dataset["failed_simulated_sets"] == 0 and dataset["extrapolation"] == []
    for entry in dataset["parameters"].values():
      estimate, std = entry["estimate"], entry["std"]
      assert std > 0
      low68, high68 = entry["interval_68"]
      low95, high95 = entry["interval_95"]
      assert low95 < low68 < estimate < high68 < high95
      np.testing.assert_allclose(high68 - estimate, 0.99446 * std, rtol=1e-4)
      np.testing.assert_allclose(high95 - estimate, 1.95996 * std, rtol=1e-4)
    assert np.shape(dataset["trajectory_mean"]) == (EXPORT_STEPS, 2)
    assert np.shape(dataset["trajectory_std"]) == (EXPORT_STEPS, 2)
    np.testing.assert_allclose(dataset["trajectory_mean"][-1],
                               [e["estimate"] for e in dataset["parameters"].values()])
  assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 1000


def test_infer_binary_overwrites_nothing_it_did_not_write(weinberg, tmp_path):
  observations, notes, user_figure = (tmp_path / "observations.npy", tmp_path / "notes.json",
                                      tmp_path / "figure.png")
  np.save(observations, weinberg.observations)
  notes.write_text('{"mine": 1}')
  user_figure.write_bytes(b"\x89PNG\r\n\x1a\n not written by alfi-tf")
  files = [observations, notes, user_figure, *pathlib.Path(weinberg.export_dir).rglob("*.pb")]
  before = {path: path.read_bytes() for path in files}
  model = [f"--model={weinberg.export_dir}", f"--observations={observations}"]
  new_output = f"--output={tmp_path / 'new.json'}"
  assert_refused("experiments.infer", [
      ([*model, f"--output={observations}"], "exists and is not an inference result (JSON)"),
      ([*model, f"--output={notes}"], "nothing was overwritten"),
      ([*model, f"--output={weinberg.export_dir}/saved_model.pb"], "nothing was overwritten"),
      ([*model, f"--output={tmp_path}"], f"--output={tmp_path} is a directory"),
      ([*model, new_output, f"--plot={user_figure}"], "is not a trajectory figure (PNG)"),
      ([*model, new_output, f"--plot={tmp_path / 'figure.pdf'}"], "--plot must name a .png"),
  ])
  assert {path: path.read_bytes() for path in files} == before
  assert not (tmp_path / "new.json").exists()


def test_failed_simulations_are_counted_and_an_answer_no_simulation_informed_is_refused(weinberg):
  machine, simulate = weinberg.deployed, weinberg.simulator.simulate
  sets = EXPORT_STEPS * machine.num_samples

  def failing_for_first_data_set(fraction):
    def simulated(parameters, num_obs, seed):
      result = np.array(simulate(parameters, num_obs, seed))          # [B * R * M, N, d_x]
      runs = result.reshape(-1, machine.num_samples, *result.shape[1:])
      runs[:len(runs) // 2, :round(fraction * machine.num_samples), 0, 0] = np.nan
      return result
    return simulated

  np.testing.assert_array_equal(machine.infer(weinberg.observations, seed=1).failed_sets, [0, 0])
  partly = machine.run(weinberg.observations, failing_for_first_data_set(0.5), seed=1,
                       num_starts=2)
  np.testing.assert_array_equal(partly.failed_sets, [2 * sets // 2, 0])   # R = 2 runs of T M / 2
  assert np.all(np.isfinite(partly.mean))
  with pytest.raises(RuntimeError, match=rf"NaN/inf \(or values outside the observation "
                                         rf"transform's domain\) in all {sets} simulated sets of "
                                         rf"data set\(s\) \[0\], so no simulation informed"):
    machine.run(weinberg.observations, failing_for_first_data_set(1.0), seed=1)


def test_multi_start_ask_tell_equals_multi_start_infer(weinberg):
  machine = weinberg.deployed
  pooled = machine.infer(weinberg.observations, seed=3, num_starts=3)
  assert pooled.mean.shape == (2, 2)
  _assert_results_equal(machine.run(weinberg.observations, weinberg.simulator.simulate, seed=3,
                                    num_starts=3), pooled)


def test_an_export_written_before_answer_starts_answers_with_single_runs(weinberg, tmp_path):
  """Metadata without `answer_starts` or `pooled_std_scales` (older exports): one run per data set
  unless told otherwise, no pooled factors."""
  copy = tmp_path / "older"
  shutil.copytree(weinberg.export_dir, copy)
  asset = copy / "assets" / METADATA_ASSET
  metadata = json.loads(asset.read_text())
  assert metadata["machine_config"].pop("answer_starts") == 1
  assert metadata.pop("pooled_std_scales") is None
  asset.write_text(json.dumps(metadata))
  older = DeployedMachine.load(str(copy))
  assert older.answer_starts == 1 and older.pooled_std_scales is None
  answer = older.infer(weinberg.observations, seed=3)
  assert answer.psi is not None                    # a single run's: not pooled
  _assert_results_equal(answer, weinberg.deployed.infer(weinberg.observations, seed=3,
                                                        num_starts=1))


def test_infer_binary_reports_a_failing_command(weinberg, tmp_path):
  observations = tmp_path / "observations.npy"
  np.save(observations, weinberg.observations)
  output = tmp_path / "out.json"
  command = _command(tmp_path, "broken_sim.py", FAILING_SCRIPT)
  completed = run("experiments.infer", f"--model={weinberg.export_dir}",
                         f"--observations={observations}", f"--simulator_command={command}",
                         f"--output={output}")
  assert completed.returncode != 0
  assert "step 1" in completed.stderr and command in completed.stderr
  assert "exit status 3" in completed.stderr and "detector calibration missing" in completed.stderr
  assert not output.exists()


def test_command_returning_too_few_rows_is_an_error(weinberg, tmp_path):
  command = _command(tmp_path, "short_sim.py", SHORT_SCRIPT)
  simulate = CommandSimulator(command, ("beam_energy", "fermi_constant"), observation_dim=1)
  machine = weinberg.deployed
  with pytest.raises(RuntimeError, match=r"\(step 1\) returned 8 rows of 1 values; expected 64 "
                                         r"rows \(8 parameter vectors x 8 observations\)") as info:
    machine.run(weinberg.observations, simulate, seed=1)
  assert command in str(info.value)


# 5. Metadata.


def test_an_export_warns_about_observations_unlike_its_training_data(weinberg, caplog):
  assert weinberg.deployed.infer(weinberg.observations, seed=1).extrapolations == ((), ())
  assert "far outside the observations" not in caplog.text
  result = weinberg.deployed.run(weinberg.observations * 1e6, weinberg.simulator.simulate, seed=1)
  assert "2 of 2 answer(s) are extrapolations, do not trust them" in caplog.text
  reasons = weinberg.deployed.extrapolations(weinberg.observations * 1e6, result)
  assert all(note[0].startswith("observations far outside the training data") for note in reasons)
  assert result.extrapolations == tuple(tuple(note) for note in reasons)   # what it warned about
  # Ask/tell does not warn (it answers at every step); the same check is one call away.
  session = weinberg.deployed.start(weinberg.observations * 1e6, seed=1)
  assert session.result().extrapolations is None
  assert [note[:1] for note in weinberg.deployed.extrapolations(
      weinberg.observations * 1e6, session.result())] == [note[:1] for note in reasons]



@pytest.mark.parametrize("repeats", [0.5, 2])
def test_extrapolations_refuses_observations_other_than_the_results(weinberg, repeats):
  """Checked against the observations of one data set, an answer to two came back with two lists
  of reasons, the second never checked; against four, an IndexError where a third was unfamiliar."""
  result = weinberg.deployed.infer(weinberg.observations, seed=1)
  observations = np.concatenate([weinberg.observations] * 2)[:int(2 * repeats)] * 1e6
  with pytest.raises(ValueError, match=rf"the observations hold {int(2 * repeats)} data set\(s\), "
                                       r"but the result answers 2: pass the observations"):
    weinberg.deployed.extrapolations(observations, result)


def test_more_starts_than_memory_holds_are_refused_by_name(weinberg):
  """`infer`, `run` and the Inferrer met a huge num_starts with numpy's bare MemoryError
  ("Unable to allocate 298 GiB"), naming neither the argument nor what to do."""
  too_many = 10 ** 13
  message = rf"num_starts={too_many} (runs|copies) of .*2 data set\(s\).* needs about .* GiB"
  with pytest.raises(ValueError, match=message):
    weinberg.deployed.infer(weinberg.observations, num_starts=too_many)
  with pytest.raises(ValueError, match=message):
    weinberg.deployed.run(weinberg.observations, weinberg.simulator.simulate,
                          num_starts=too_many)
  with pytest.raises(ValueError, match=message):
    Inferrer(load_machine(weinberg.workdir), num_steps=2)(weinberg.observations, seed=0,
                                                          num_starts=too_many)


def test_an_exports_prior_box_is_read_alike_by_its_checks(weinberg, caplog):
  """`check_simulator` and the extrapolation check read one box: the one `describe_simulator`
  records, and none where the metadata hold none."""
  deployed = weinberg.deployed
  assert deployed._prior_box == describe_simulator(weinberg.simulator)["prior_box"]
  unboxed = DeployedMachine(deployed.module, {key: value for key, value in deployed.metadata.items()
                                              if key != "prior"})
  assert unboxed._prior_box is None
  assert unboxed.infer(weinberg.observations, seed=1).extrapolations == ((), ())
  unboxed.check_simulator(weinberg.simulator)
  assert "the prior of simulator 'weinberg' changed since this machine" in caplog.text
  assert "(not a box; now low=" in caplog.text


def test_infer_binary_writes_the_extrapolations_its_answer_carries(weinberg, tmp_path):
  """alfi-infer writes the reasons its run found and warned about (`InferenceResult.extrapolations`)
  for each data set: here one set in the training data's units and one a million times off."""
  observations = weinberg.observations.copy()
  observations[1] *= 1e6
  np.save(tmp_path / "observations.npy", observations)
  output = tmp_path / "out.json"
  completed = run("experiments.infer", f"--model={weinberg.export_dir}",
                  f"--observations={tmp_path / 'observations.npy'}", f"--output={output}",
                  "--seed=1")
  assert completed.returncode == 0, completed.stderr[-3000:]
  expected = weinberg.deployed.infer(observations, seed=1).extrapolations
  assert expected[0] == () and expected[1], "the test needs one extrapolation and one answer"
  assert [tuple(dataset["extrapolation"]) for dataset in json.loads(output.read_text())[
      "datasets"]] == list(expected)


def test_metadata_round_trip(weinberg):
  loaded = weinberg.deployed.module   # what tf.saved_model.load returned
  assert set(loaded.signatures) == set(SIGNATURES)
  from_signature = json.loads(loaded.signatures["metadata"]()["metadata"].numpy().decode())
  with open(os.path.join(weinberg.export_dir, "assets", METADATA_ASSET)) as stream:
    from_asset = json.load(stream)
  expected = machine_metadata(load_machine(weinberg.workdir), EXPORT_STEPS)
  assert from_signature == from_asset == expected
  assert weinberg.deployed.metadata == expected

  machine = load_machine(weinberg.workdir)
  assert expected["format_version"] == EXPORT_FORMAT_VERSION
  assert expected["simulator"] == "weinberg" and expected["tf_native_simulator"]
  assert expected["parameter_names"] == ["beam_energy", "fermi_constant"]
  assert expected["prior"]["type"] == "box"
  assert expected["prior"]["low"] == [40.0, 0.5] and expected["prior"]["high"] == [50.0, 1.5]
  assert (expected["num_steps"], expected["num_samples"], expected["num_simulated_obs"]) == (
      EXPORT_STEPS, NUM_SAMPLES, NUM_SIMULATED_OBS)
  assert expected["machine_config"]["num_steps"] == TRAIN_STEPS
  assert expected["tensorflow_version"] == tf.__version__
  standardization = expected["standardization"]
  np.testing.assert_array_equal(standardization["theta_mean"],
                                machine.theta_standardizer.mean.numpy())
  np.testing.assert_array_equal(standardization["observation_std"],
                                machine.observation_standardizer.std.numpy())
  assert standardization["theta_std"][0] != 1.0, "the statistics come from adapt, not defaults"


# 6. Bad input: a clear error and no partial output.

BAD_OBSERVATIONS = [
    ("rank", lambda o: o[:, :, :, np.newaxis], r"must have shape \[num_problems, num_obs, 1\]"),
    ("rank0", lambda o: o[0, 0, 0], r"must have shape \[num_problems, num_obs, 1\], got shape \(\)"),
    ("dim", lambda o: np.concatenate([o, o], axis=-1), "must have 1 values per observation"),
    ("nan", lambda o: np.where(np.arange(NUM_OBS)[:, None] == 5, np.nan, o),
     r"contains 2 NaN/inf value\(s\), the first at \[0, 5, 0\]"),
    ("inf", lambda o: np.where(np.arange(NUM_OBS)[:, None] == 9, np.inf, o), "NaN/inf"),
    ("empty", lambda o: o[:, :0], r"is empty: shape \(2, 0, 1\)"),
]


@pytest.mark.parametrize("case, corrupt, message", BAD_OBSERVATIONS,
                         ids=[case[0] for case in BAD_OBSERVATIONS])
def test_deployed_machine_rejects_bad_observations(weinberg, case, corrupt, message):
  machine = weinberg.deployed
  with pytest.raises(ValueError, match=message):
    machine.infer(corrupt(weinberg.observations))
  with pytest.raises(ValueError, match=message):
    machine.start(corrupt(weinberg.observations))


def test_deployed_machine_takes_one_data_set_as_the_cli_does(weinberg):
  """`[n, d_x]` (and `[n]` for d_x = 1) is one data set, as in the infer binary's files."""
  machine = weinberg.deployed
  expected = machine.infer(weinberg.observations[:1], seed=2)
  for one_set in (weinberg.observations[0], weinberg.observations[0, :, 0]):
    _assert_results_equal(machine.infer(one_set, seed=2), expected)
    assert machine.start(one_set, seed=2).ask().shape[0] == 1


def _log1p_poisson_module() -> ExportModule:
  """The export's functions, unsaved, of a tiny untrained Poisson machine reading log1p(x)."""
  simulator = get_simulator("poisson")
  machine = InferenceMachine(simulator, MachineConfig(simulator="poisson",
                                                      observation_transform="log1p", **TINY))
  machine.adapt(*(array.numpy() for array in simulator.sample_problems(16, NUM_OBS,
                                                                       tf.constant([3, 0]))))
  return ExportModule(machine, EXPORT_STEPS)


def test_simulations_outside_the_transforms_domain_count_as_failed_sets():
  """ask/tell (and so run() and --simulator_command) under log1p: a negative simulated value
  fails its set as NaN does, instead of being clamped to 0."""
  simulator = get_simulator("poisson")
  module = _log1p_poisson_module()
  deployed = DeployedMachine(module, json.loads(module.metadata_json))
  observations = _observations("poisson")

  def failing_first_sample(value):
    def simulate(parameters, num_obs, seed):
      result = np.array(simulator.simulate(parameters, num_obs, seed))   # [B * M, N, 1]
      result[0, 3, 0] = value                # data set 0, sample 0: one failed set per step
      return result
    return simulate

  negative = deployed.run(observations, failing_first_sample(-2.0), seed=1)
  nan = deployed.run(observations, failing_first_sample(np.nan), seed=1)
  np.testing.assert_array_equal(negative.failed_sets, [EXPORT_STEPS, 0])
  _assert_results_equal(negative, nan)


def _corrupted(observations: np.ndarray, value: float) -> tf.Tensor:
  corrupted = observations.copy()
  corrupted[1, 3, 0] = value
  return tf.constant(corrupted)


def test_the_bare_saved_model_refuses_observations_it_cannot_read(weinberg):
  """Called without DeployedMachine's checks (plain tf.saved_model.load), the graph clamped NaN
  and negative counts to 0 and answered as if they were, and answered a set of no observations."""
  model = tf.saved_model.load(weinberg.export_dir)
  seed = tf.constant([1, 0])
  cases = [(_corrupted(weinberg.observations, np.nan), "observations contain NaN/inf values"),
           (tf.zeros([2, 0, 1]), r"at least one observation per set \(num_obs > 0\)")]
  for observations, message in cases:
    for begin in (model.infer, model.start, model.signatures["infer"]):
      with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        begin(observations=observations, seed=seed)
  module = _log1p_poisson_module()
  observations = _observations("poisson")
  for begin in (module.infer, module.start):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"observations must be >= 0 for this machine \(it reads them through "
                             r"log1p\)"):
      begin(_corrupted(observations, -2.0), seed)
    with pytest.raises(tf.errors.InvalidArgumentError, match="observations contain NaN/inf"):
      begin(_corrupted(observations, np.nan), seed)
  assert np.all(np.isfinite(module.infer(tf.constant(observations), seed)["mean"]))


def _told_simulations(weinberg, outputs):
  """The simulations a bare SavedModel's `start` or `step` `outputs` ask Weinberg for."""
  parameters = outputs["parameters"].numpy().reshape(-1, 2)
  simulated = weinberg.simulator.simulate(parameters, NUM_SIMULATED_OBS, outputs["simulation_seed"])
  return tf.reshape(simulated, [2, NUM_SAMPLES, NUM_SIMULATED_OBS, 1])


def test_the_bare_saved_model_refuses_a_stale_trajectory(weinberg):
  """A plain-TensorFlow ask/tell loop that passed back the start's (empty) trajectory with a later
  step got answers averaged over the wrong iterates without a word."""
  model = tf.saved_model.load(weinberg.export_dir)
  first = model.start(tf.constant(weinberg.observations), tf.constant([1, 0]))

  def step(outputs, **replaced):
    state = {key: replaced.get(key, outputs[key]) for key in STATE_KEYS}
    return model.step(*state.values(), _told_simulations(weinberg, outputs))

  second = step(first)
  assert int(second["step"]) == 1 and second["trajectory"].shape[1] == 1
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"the trajectory in the state must hold psi_1 .. psi_step"):
    step(second, trajectory=first["trajectory"])


def test_a_loaded_exports_answer_is_differentiable_in_the_simulations(weinberg):
  """For a TF workflow around the export. Saved without its custom gradients (SaveOptions, an
  export a third faster), the box restriction's log-erfc was out of scope in the gradient."""
  model = tf.saved_model.load(weinberg.export_dir)
  first = model.start(tf.constant(weinberg.observations), tf.constant([1, 0]))
  told = _told_simulations(weinberg, first)
  with tf.GradientTape() as tape:
    tape.watch(told)
    answer = model.step(*[first[key] for key in STATE_KEYS], told)["mean"]
  gradient = tape.gradient(answer, told).numpy()
  assert np.all(np.isfinite(gradient)) and np.any(gradient != 0)


def test_model_that_is_neither_export_nor_workdir(tmp_path):
  (tmp_path / "notes.txt").write_text("not a model")
  with pytest.raises(FileNotFoundError, match="neither an alfi-tf export .* nor a training work"):
    DeployedMachine.load(str(tmp_path))
  with pytest.raises(TypeError, match="path must be the path of an export or a training workdir, "
                                      "got NoneType"):
    DeployedMachine.load(None)


def test_saved_model_that_is_not_an_alfi_export(tmp_path):
  module = tf.Module()
  module.scale = tf.Variable(2.0)
  module.double = tf.function(lambda x: module.scale * x,
                              input_signature=[tf.TensorSpec([], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / "other"))
  with pytest.raises(ValueError, match="is a SavedModel but not an alfi-tf export"):
    DeployedMachine.load(str(tmp_path / "other"))


@pytest.mark.parametrize("damaged", ["saved_model.pb", f"assets/{METADATA_ASSET}"])
def test_a_damaged_export_is_named(weinberg, tmp_path, damaged):
  copy = tmp_path / "damaged"
  shutil.copytree(weinberg.export_dir, copy)
  with open(copy / damaged, "r+b") as stream:
    stream.truncate(40)
  with pytest.raises(ValueError, match=rf"{copy} is a damaged alfi-tf export"):
    DeployedMachine.load(str(copy))


@pytest.mark.parametrize("damage, message", [
    (lambda metadata: {}, "format_version must be an integer, got None"),
    (lambda metadata: [1, 2], "holds a JSON list, expected an object"),
    (lambda metadata: {**metadata, "observation_dim": None}, "observation_dim must be an integer"),
    (lambda metadata: {**metadata, "num_steps": True}, "num_steps must be an integer, got True"),
    (lambda metadata: {**metadata, "machine_config": {}},
     "machine_config.observation_transform must be a string"),
])
def test_export_metadata_with_missing_or_mistyped_fields_is_named(weinberg, tmp_path, damage,
                                                                   message):
  copy = tmp_path / "damaged"
  shutil.copytree(weinberg.export_dir, copy)
  asset = copy / "assets" / METADATA_ASSET
  asset.write_text(json.dumps(damage(json.loads(asset.read_text()))))
  with pytest.raises(ValueError, match=rf"{copy} is a damaged alfi-tf export \({asset}.*"
                                       rf"{re.escape(message)}.*export it again"):
    DeployedMachine.load(str(copy))


@pytest.mark.parametrize("seed", [2 ** 31, 1.5, True])
def test_deployed_machine_refuses_a_seed_that_is_not_an_int32(weinberg, seed):
  for begin in (weinberg.deployed.infer, weinberg.deployed.start):
    with pytest.raises(ValueError, match=rf"seed must be an integer in .* \(an int32 seed\), "
                                         rf"got {seed!r}"):
      begin(weinberg.observations, seed=seed)


def test_infer_binary_refuses_bad_input_with_one_message(weinberg, tmp_path):
  """The checks above through the binary: exit status 1, one message naming the file, and no
  output file (one case per kind of check; the checks themselves are tested above)."""
  nan_observations, zeros, neither = (tmp_path / "nan.npy", tmp_path / "zeros.npy",
                                      tmp_path / "neither")
  np.save(nan_observations, BAD_OBSERVATIONS[3][1](weinberg.observations))
  np.save(zeros, np.zeros((1, 5, 1), np.float32))
  neither.mkdir()
  (neither / "notes.txt").write_text("not a model")
  figure = tmp_path / "rmse_per_step.png"   # an evaluation's figure
  plot_rmse_per_step(str(figure), ["a"], np.ones([2, 1]), {}, 2)
  damaged = {}
  for name in ("saved_model.pb", f"assets/{METADATA_ASSET}",
               "variables/variables.data-00000-of-00001"):   # this one raised an IndexError
    damaged[name] = tmp_path / f"damaged_{os.path.basename(name)}"
    shutil.copytree(weinberg.export_dir, damaged[name])
    with open(damaged[name] / name, "r+b") as stream:
      stream.truncate(40)
  cases = [
      ([f"--model={weinberg.export_dir}", "--observations=x.npy", "--num_starts=0"],
       "--num_starts must be a positive integer"),
      ([f"--model={weinberg.export_dir}", f"--observations={nan_observations}"],
       f"observations in {nan_observations} contains 2 NaN/inf value(s), the first at [0, 5, 0]"),
      ([f"--model={neither}", f"--observations={zeros}"], "neither an alfi-tf export"),
      ([f"--model={tmp_path / 'missing'}", f"--observations={zeros}"],
       f"{tmp_path / 'missing'} does not exist; expected an alfi-tf export or a training workdir"),
      ([f"--model={zeros}", f"--observations={zeros}"], f"{zeros} is a file; expected an "
                                                        "alfi-tf export or a training workdir"),
      ([f"--model={weinberg.export_dir}", f"--observations={zeros}", "--seed=2147483648"],
       "--seed must be an integer in [-2147483648, "),
      ([f"--model={weinberg.export_dir}", f"--observations={zeros}", "--output="],
       "--output must name a JSON file for the result, got an empty path"),
      (["--model=", f"--observations={zeros}"],
       "--model must name an export directory or a training workdir, got an empty path"),
      ([f"--model={weinberg.export_dir}", "--observations="],
       "--observations must name a .npy, .npz or .csv file, got an empty path"),
      ([f"--model={weinberg.export_dir}", f"--observations={zeros}", f"--plot={figure}"],
       f"--plot={figure} exists and is not a trajectory figure (PNG) written by alfi-tf"),
      ([f"--model={weinberg.export_dir}", f"--observations={zeros}", "--simulator_command= "],
       "--simulator_command must name a program, got an empty one"),
      ([f"--model={weinberg.export_dir}", f"--observations={zeros}",
        "--simulator_command=./sim 'a b"], "--simulator_command: the simulator command "
                                            "\"./sim 'a b\" cannot be split into a program"),
      ([f"--model={weinberg.export_dir}", f"--observations={zeros}",
        "--simulator_timeout=1e300"], "--simulator_timeout must be a positive number of seconds, "
                                      "at most 1e+06"),
      ([f"--model={weinberg.export_dir}", f"--observations={zeros}", f"--num_starts={10 ** 13}"],
       f"--num_starts={10 ** 13} runs of each of 1 data set(s) needs about"),
  ] + [([f"--model={copy}", f"--observations={zeros}"], f"{copy} is a damaged alfi-tf export")
       for copy in damaged.values()]
  outputs = [tmp_path / f"out{index}.json" for index in range(len(cases))]
  # --output first: a case's own --output comes later and wins.
  assert_refused("experiments.infer", [([f"--output={output}", *flags], message)
                                       for (flags, message), output in zip(cases, outputs)])
  for (flags, _), output in zip(cases, outputs):
    assert not output.exists(), flags


def test_export_of_another_format_version_is_refused(weinberg, tmp_path):
  copy = tmp_path / "future"
  shutil.copytree(weinberg.export_dir, copy)
  asset = copy / "assets" / METADATA_ASSET
  metadata = json.loads(asset.read_text())
  metadata.update(format_version=999, alfi_tf_version="9.9.9")
  asset.write_text(json.dumps(metadata))
  with pytest.raises(ValueError, match=r"alfi-tf 9\.9\.9 in export format 999; this alfi-tf reads "
                                       rf"format {EXPORT_FORMAT_VERSION}: re-export it"):
    DeployedMachine.load(str(copy))


def test_exporting_over_an_existing_directory(lotka_volterra, tmp_path):
  # The numpy-simulator machine: no `infer` to trace, so the binary runs quickly.
  export_dir = tmp_path / "exports" / "lv"
  export_dir.mkdir(parents=True)
  (export_dir / "keep.txt").write_text("precious")
  args = [f"--workdir={lotka_volterra.workdir}", f"--export_dir={export_dir}", "--num_steps=2"]
  # Refused either way; --overwrite only ever replaces an alfi-tf export, and this is not one.
  a_file = tmp_path / "notes.txt"
  a_file.write_text("mine")
  refused, refused_overwrite, refused_file = run_many("experiments.export", [
      args, [*args, "--overwrite"], [*args[:1], f"--export_dir={a_file}", "--overwrite"]])
  assert refused_file.returncode == 1 and a_file.read_text() == "mine"
  assert f"--export_dir={a_file} is a file; expected a directory" in refused_file.stderr
  assert refused.returncode != 0
  assert "already exists" in refused.stderr and "--overwrite" in refused.stderr
  assert refused_overwrite.returncode != 0
  assert ("is not an alfi-tf export" in refused_overwrite.stderr
          and "nothing was deleted" in refused_overwrite.stderr)
  assert os.listdir(export_dir) == ["keep.txt"]
  assert (export_dir / "keep.txt").read_text() == "precious"

  (export_dir / "keep.txt").unlink()
  export_dir.rmdir()
  first = run("experiments.export", *args)
  assert first.returncode == 0, first.stderr[-3000:]
  replaced = run("experiments.export", *args[:-1], "--num_steps=3", "--overwrite")
  assert replaced.returncode == 0, replaced.stderr[-3000:]
  assert "exported lotka_volterra (T=3)" in replaced.stdout
  assert os.listdir(export_dir.parent) == ["lv"], "no .tmp-/.old- siblings may remain"
  metadata = json.loads((export_dir / "assets" / METADATA_ASSET).read_text())
  assert metadata == {**lotka_volterra.deployed.metadata, "num_steps": 3}


def test_overwrite_never_deletes_a_training_run(lotka_volterra):
  """The export directory pointed at the workdir itself: refused, and the run is intact."""
  before = sorted(os.listdir(lotka_volterra.workdir))
  refused = run("experiments.export", f"--workdir={lotka_volterra.workdir}",
                       f"--export_dir={lotka_volterra.workdir}", "--overwrite")
  assert refused.returncode != 0
  assert "is not an alfi-tf export" in refused.stderr
  assert sorted(os.listdir(lotka_volterra.workdir)) == before
  with pytest.raises(FileExistsError, match="is not an alfi-tf export"):
    export_machine(load_machine(lotka_volterra.workdir), lotka_volterra.workdir, overwrite=True)
  assert sorted(os.listdir(lotka_volterra.workdir)) == before


def _dead_pid() -> int:
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  return child.pid


def test_an_export_beyond_the_unrolling_limit_is_refused_before_tracing(lotka_volterra, tmp_path):
  with pytest.raises(ValueError, match=rf"num_steps must be at most {MAX_STEPS} "):
    export_machine(load_machine(lotka_volterra.workdir), str(tmp_path / "lv"), MAX_STEPS + 1)
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("num_steps", [0, 2.5, True, "3"])
def test_an_export_horizon_that_is_not_a_positive_integer_is_refused(lotka_volterra, tmp_path,
                                                                     num_steps):
  """0 used to export the default horizon (15) without a word, 2.5 two steps and True one."""
  message = f"num_steps must be a positive integer, got {re.escape(repr(num_steps))}"
  with pytest.raises(ValueError, match=message):
    export_machine(load_machine(lotka_volterra.workdir), str(tmp_path / "lv"), num_steps)
  with pytest.raises(ValueError, match=message):
    DeployedMachine.load(lotka_volterra.workdir, num_steps=num_steps)
  assert not list(tmp_path.iterdir())


def test_a_killed_exports_leftovers_are_cleaned_up_and_nothing_is_lost(lotka_volterra, tmp_path):
  machine = load_machine(lotka_volterra.workdir)
  export_dir = tmp_path / "lv"
  export_machine(machine, str(export_dir), num_steps=2)
  pid = _dead_pid()
  # A staging directory of a killed export, and a previous export moved aside by a killed
  # overwrite just before the new one was renamed into place (so export_dir is missing).
  staging = tmp_path / f".lv.tmp-{pid}-abc"
  (staging / "model").mkdir(parents=True)
  retired = tmp_path / f".lv.old-{pid}-def"
  retired.mkdir()
  os.rename(export_dir, retired / "model")
  # A live process's staging directory must be left alone.
  live = tmp_path / f".lv.tmp-{os.getpid()}-ghi"
  live.mkdir()
  export_machine(machine, str(export_dir), num_steps=3, overwrite=True)
  assert sorted(os.listdir(tmp_path)) == sorted(["lv", live.name])
  assert json.loads((export_dir / "assets" / METADATA_ASSET).read_text())["num_steps"] == 3


def test_exports_killed_at_random_points_lose_nothing(lotka_volterra, tmp_path):
  """SIGKILL an overwriting export at seeded random moments: the previous export stays loadable
  (or the new one is complete), and the next export completes with no leftovers."""
  export_dir = tmp_path / "lv"
  args = [f"--workdir={lotka_volterra.workdir}", f"--export_dir={export_dir}", "--num_steps=2",
          "--overwrite"]
  assert run("experiments.export", *args[:-1]).returncode == 0
  for delay in np.random.default_rng(0).uniform(1.5, 5.0, size=2):
    process = subprocess.Popen([sys.executable, "-m", "experiments.export", *args], cwd=ROOT,
                               env=binary_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
      process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
    # Whatever the moment, a loadable export is in place or set aside for the next run.
    retired = [path for path in tmp_path.glob(".lv.old-*/model")]
    assert (export_dir / "saved_model.pb").exists() or retired, os.listdir(tmp_path)
    completed = run("experiments.export", *args)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert os.listdir(tmp_path) == ["lv"], os.listdir(tmp_path)
    assert DeployedMachine.load(str(export_dir)).num_steps == 2


def test_overwrite_replaces_only_the_exports_own_files(lotka_volterra, tmp_path):
  """A user's files inside an export (a result, data, a folder) survive --overwrite, also when
  the overwrite was killed after the new export was renamed into place."""
  machine = load_machine(lotka_volterra.workdir)
  export_dir = tmp_path / "lv"
  export_machine(machine, str(export_dir), num_steps=2)
  own = sorted(os.listdir(export_dir))
  (export_dir / "inference.json").write_text('{"mine": 1}')
  (export_dir / "data").mkdir()
  (export_dir / "data" / "obs.npy").write_bytes(b"observed")
  export_machine(machine, str(export_dir), num_steps=3, overwrite=True)
  assert sorted(os.listdir(export_dir)) == sorted(own + ["data", "inference.json"])
  assert (export_dir / "inference.json").read_text() == '{"mine": 1}'
  assert (export_dir / "data" / "obs.npy").read_bytes() == b"observed"
  assert DeployedMachine.load(str(export_dir)).num_steps == 3
  # Killed between the renames and the move of the user's files: the next export moves them.
  retired = tmp_path / f".lv.old-{_dead_pid()}-xyz"
  shutil.copytree(export_dir, retired / "model")
  (export_dir / "inference.json").unlink()
  (retired / "model" / "data" / "obs.npy").unlink()
  export_machine(machine, str(export_dir), num_steps=2, overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ["lv"]
  assert (export_dir / "inference.json").read_text() == '{"mine": 1}'
  assert (export_dir / "data" / "obs.npy").read_bytes() == b"observed"
  assert DeployedMachine.load(str(export_dir)).num_steps == 2
  # Through a symbolic link: the export it points to is replaced and the link kept (the link
  # itself was moved aside, the export renamed to its name, and the next export removed it).
  link = tmp_path / "current"
  link.symlink_to("lv")
  export_machine(machine, str(link), num_steps=3, overwrite=True)
  assert sorted(os.listdir(tmp_path)) == ["current", "lv"] and os.readlink(link) == "lv"
  assert (export_dir / "inference.json").read_text() == '{"mine": 1}'
  assert DeployedMachine.load(str(link)).num_steps == 3


def test_a_finished_but_uncalibrated_run_is_warned_about_and_a_calibrated_one_is_not(
    lotka_volterra, tmp_path, caplog):
  warn_if_unfinished(lotka_volterra.workdir)
  assert "not calibrated" not in caplog.text
  copy = tmp_path / "run"
  shutil.copytree(lotka_volterra.workdir, copy)
  (copy / "calibration.json").unlink()
  warn_if_unfinished(str(copy))
  assert (f"{copy} finished training (step {TRAIN_STEPS} of {TRAIN_STEPS}) but its calibration is "
          "missing") in caplog.text


def test_export_is_atomic_and_refuses_to_overwrite(weinberg, lotka_volterra):
  for run in (weinberg, lotka_volterra):
    assert os.listdir(os.path.dirname(run.export_dir)) == ["model"]
  before = sorted(os.listdir(weinberg.export_dir))
  with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
    export_machine(load_machine(weinberg.workdir), weinberg.export_dir, EXPORT_STEPS)
  assert sorted(os.listdir(weinberg.export_dir)) == before
  # A file there was told to pass overwrite=True, which then refused it.
  a_file = os.path.join(os.path.dirname(weinberg.export_dir), "notes.txt")
  with open(a_file, "w") as stream:
    stream.write("mine")
  for overwrite in (False, True):
    with pytest.raises(FileExistsError, match="notes.txt is a file, not an export directory"):
      export_machine(load_machine(weinberg.workdir), a_file, EXPORT_STEPS, overwrite=overwrite)
  assert open(a_file).read() == "mine"
  os.remove(a_file)


# 7. saved_model_cli, TensorFlow's own tool (a TF1-style session loader, like TF Serving).


def _saved_model_cli() -> str:
  path = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  if not os.path.exists(path):
    pytest.skip("saved_model_cli is not installed next to the Python interpreter")
  return path


def test_saved_model_cli_show_lists_the_signatures(weinberg):
  completed = subprocess.run([_saved_model_cli(), "show", "--all", "--dir", weinberg.export_dir],
                             env=binary_env(), capture_output=True, text=True, timeout=300)
  assert completed.returncode == 0, completed.stderr[-3000:]
  for name in SIGNATURES:
    assert f"signature_def['{name}']" in completed.stdout, name
  assert "inputs['simulations'] tensor_info" in completed.stdout


def test_saved_model_cli_runs_infer(weinberg, tmp_path):
  # `--input_exprs` only takes Python literals (no numpy calls) in this TF; `--inputs` reads .npy.
  observations = np.linspace(-0.9, 0.9, 5, dtype=np.float32).reshape(1, 5, 1)
  np.save(tmp_path / "observations.npy", observations)
  np.save(tmp_path / "seed.npy", np.array([8, 0], np.int32))
  completed = subprocess.run(
      [_saved_model_cli(), "run", "--dir", weinberg.export_dir, "--tag_set", "serve",
       "--signature_def", "infer", "--inputs",
       f"observations={tmp_path / 'observations.npy'};seed={tmp_path / 'seed.npy'}",
       "--outdir", str(tmp_path / "outputs")],
      env=binary_env(), capture_output=True, text=True, timeout=300)
  assert completed.returncode == 0, completed.stderr[-3000:]
  expected = weinberg.deployed.infer(observations, seed=8)
  _assert_same(expected, *(np.load(tmp_path / "outputs" / f"{key}.npy") for key in
                           ("mean", "std", "trajectory_mean", "trajectory_std")))


# 8. Observation files.


def test_load_observations_npy_layouts(tmp_path):
  data = np.arange(24, dtype=np.float64).reshape(2, 4, 3)
  np.save(tmp_path / "batch.npy", data)
  np.save(tmp_path / "one.npy", data[0])
  np.save(tmp_path / "flat.npy", data[0, :, 0])
  batch = load_observations(str(tmp_path / "batch.npy"), 3)
  assert batch.dtype == np.float32
  np.testing.assert_array_equal(batch, data)
  np.testing.assert_array_equal(load_observations(str(tmp_path / "one.npy"), 3), data[:1])
  np.testing.assert_array_equal(load_observations(str(tmp_path / "flat.npy"), 1),
                                data[:1, :, :1])
  with pytest.raises(ValueError, match=r"observations in .*flat\.npy must have shape"):
    load_observations(str(tmp_path / "flat.npy"), 3)
  with pytest.raises(ValueError, match="must have 2 values per observation"):
    load_observations(str(tmp_path / "one.npy"), 2)


def test_load_observations_npz(tmp_path):
  data = np.linspace(0.0, 1.0, 12).reshape(6, 2)
  np.savez(tmp_path / "named.npz", observations=data, theta=np.zeros(2))
  np.savez(tmp_path / "single.npz", data)
  np.savez(tmp_path / "ambiguous.npz", first=data, second=data)
  for name in ("named.npz", "single.npz"):
    np.testing.assert_allclose(load_observations(str(tmp_path / name), 2), data[np.newaxis],
                               rtol=1e-6)
  with pytest.raises(ValueError, match=r"expected an array named 'observations' \(or a single "
                                       r"array\), found \['first', 'second'\]"):
    load_observations(str(tmp_path / "ambiguous.npz"), 2)


def test_load_observations_csv(tmp_path):
  (tmp_path / "plain.csv").write_text("# measured 2024\n0.5,1.5\n-0.25,2\n\n1e-3,3\n")
  (tmp_path / "header.csv").write_text("prey,predators\n0.5,1.5\n-0.25,2\n0.001,3\n")
  (tmp_path / "column.csv").write_text("cos_theta\n0.1\n-0.2\n0.3\n")
  (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,oops\n")
  expected = np.array([[[0.5, 1.5], [-0.25, 2.0], [1e-3, 3.0]]], np.float32)
  np.testing.assert_allclose(load_observations(str(tmp_path / "plain.csv"), 2), expected)
  np.testing.assert_allclose(load_observations(str(tmp_path / "header.csv"), 2), expected)
  np.testing.assert_allclose(load_observations(str(tmp_path / "column.csv"), 1),
                             [[[0.1], [-0.2], [0.3]]], rtol=1e-6)
  with pytest.raises(ValueError, match=r"bad\.csv, line 3: 'oops' is not a number"):
    load_observations(str(tmp_path / "bad.csv"), 2)


def test_load_observations_bad_files(tmp_path):
  (tmp_path / "data.txt").write_text("0.5\n")
  with pytest.raises(ValueError, match=r"unsupported file type '\.txt'; use one of"):
    load_observations(str(tmp_path / "data.txt"), 1)
  with pytest.raises(FileNotFoundError, match=r"observations file .*missing\.npy does not exist"):
    load_observations(str(tmp_path / "missing.npy"), 1)


def test_default_horizon_is_shared_by_workdir_loading_and_evaluation(weinberg):
  from alfi_tf.config import DEFAULT_TEST_HORIZON
  assert DeployedMachine.load(weinberg.workdir).num_steps == max(DEFAULT_TEST_HORIZON, TRAIN_STEPS)
