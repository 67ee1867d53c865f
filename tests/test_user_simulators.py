"""A simulator the library has never seen, through `--simulator=SPEC`: a file or a module path,
recorded in the run so that evaluate, export and infer find it again without extra flags."""

import json
import os
import sys
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf

from alfi_tf.simulators import (CommandSimulator, get_simulator, normalize_spec,
                                register_simulator)
from tests.binary_runs import ROOT, assert_rejected, run

EXAMPLE = os.path.join(ROOT, "examples", "oscillator", "oscillator.py")
TINY_FLAGS = [
    "--num_problems=32", "--num_obs=20", "--epochs=2", "--batch_size=16", "--num_steps=2",
    "--num_samples=4", "--num_simulated_obs=4", "--encoder_hidden=8", "--encoder_out=4",
    "--aggregator_hidden=8", "--aggregator_out=4", "--updater_hidden=8", "--lstm_units=4",
    "--num_validation_problems=8", "--validate_every=2", "--checkpoint_every=2",
    "--calibration_problems=32", "--calibration_horizon=3",
]


@pytest.mark.parametrize("spec", [
    "examples/oscillator/oscillator.py:DampedOscillator",
    "examples.oscillator.oscillator:DampedOscillator",
    "examples/oscillator/oscillator.py:noisier",
], ids=["file", "module", "factory_function"])
def test_specs_build_the_simulator_and_remember_themselves(spec, monkeypatch):
  monkeypatch.chdir(ROOT)
  simulator = get_simulator(spec)
  assert simulator.spec == spec and simulator.parameter_names == ("damping", "frequency")
  simulated = simulator.simulate(tf.constant([[0.5, 1.0]]), 3, tf.constant([1, 2]))
  assert simulated.shape == (1, 3, 8) and np.all(np.isfinite(simulated.numpy()))


def test_a_file_spec_is_recorded_with_its_absolute_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert normalize_spec("sims/a.py:A") == f"{tmp_path}/sims/a.py:A"
  assert normalize_spec("pkg.mod:A") == "pkg.mod:A" and normalize_spec("poisson") == "poisson"


@pytest.mark.parametrize("spec, message", [
    ("missing/simulator.py:A", r"could not be imported: FileNotFoundError: no file .*missing/"
                               r"simulator\.py \(was it moved or deleted\?\)"),
    ("examples/oscillator/oscillator.py:Missing", "has no attribute 'Missing'"),
    ("examples/oscillator/oscillator.py:NUM_TIMES", "names a int, not a Simulator subclass"),
    ("examples/oscillator/oscillator.py:TIMES", "names a ndarray, not a Simulator subclass"),
    ("no_such_package.module:A", "could not be imported: ModuleNotFoundError"),
    ("oscillatr", "unknown simulator 'oscillatr'; valid names are: gaussian"),
])
def test_bad_specs_are_named(spec, message, monkeypatch):
  monkeypatch.chdir(ROOT)
  with pytest.raises(ValueError, match=message):
    get_simulator(spec)


def test_a_broken_file_names_the_spec_and_the_error(tmp_path):
  path = tmp_path / "broken.py"
  path.write_text("def oops(:\n")
  with pytest.raises(ValueError, match=rf"simulator spec '{path}:X' could not be imported: "
                                       "SyntaxError"):
    get_simulator(f"{path}:X")
  path.write_text("from alfi_tf import Simulator\ndef make():\n  return 42\n")
  with pytest.raises(ValueError, match="made a int, not an alfi_tf Simulator"):
    get_simulator(f"{path}:make")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
def test_a_spec_file_that_is_a_named_pipe_or_a_directory_is_refused_not_read(tmp_path):
  os.mkfifo(tmp_path / "pipe.py")   # importing it would wait for a writer for ever
  (tmp_path / "folder.py").mkdir()
  for name in ("pipe.py", "folder.py"):
    with pytest.raises(ValueError, match=rf"simulator spec '{tmp_path}/{name}:X' could not be "
                                         rf"imported: ValueError: {tmp_path}/{name} is not a "
                                         r"regular file \(a directory, device or named pipe\)"):
      get_simulator(f"{tmp_path}/{name}:X")


def test_a_module_here_that_cannot_be_imported_is_named_with_the_file_form(tmp_path, monkeypatch):
  """An installed command does not search the current directory: `--simulator=mysims:X` next to
  mysims.py failed with a bare ModuleNotFoundError."""
  (tmp_path / "mysims_here.py").write_text("X = None\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".")])
  with pytest.raises(ValueError, match=r"No module named 'mysims_here' \(mysims_here\.py is here, "
                                       r"but the current directory is not on the import path: "
                                       r"name the file, .* e\.g\. \./mysims_here\.py:\.\.\.\)"):
    get_simulator("mysims_here:X")


@pytest.mark.parametrize("source, code", [("import sys\nsys.exit(0)\n", "0"),
                                          ("raise SystemExit(2)\n", "2")])
def test_a_file_that_exits_while_imported_is_named(tmp_path, source, code):
  path = tmp_path / "exits.py"
  path.write_text(source)
  with pytest.raises(ValueError, match=rf"^simulator spec '{path}:X' could not be imported: "
                                       rf"{path} called sys\.exit\({code}\) \(SystemExit\) while "
                                       r"being imported; keep script code under `if __name__"):
    get_simulator(f"{path}:X")


BROKEN_TF_SIMULATORS = """
import tensorflow as tf
from alfi_tf import Simulator, box_prior

class Base(Simulator):
  def __init__(self):
    super().__init__(parameter_names=["a"], observation_dim=1, prior=box_prior([0.0], [1.0]))

class Raising(Base):
  def simulate(self, theta, num_obs, seed):
    raise ZeroDivisionError("no detector response")

class WrongShape(Base):
  def simulate(self, theta, num_obs, seed):
    return tf.zeros([tf.shape(theta)[0], num_obs, 2])

class Counts(Base):
  def simulate(self, theta, num_obs, seed):
    return tf.zeros([tf.shape(theta)[0], num_obs, 1], tf.int32)

class Doubles(Base):
  def simulate(self, theta, num_obs, seed):
    return tf.zeros([tf.shape(theta)[0], num_obs, 1], tf.float64)

class KeyErrors(Base):
  def simulate(self, theta, num_obs, seed):
    raise KeyError("no calibration constant")
"""


@pytest.mark.parametrize("attribute, message", [
    ("Raising", "raised ZeroDivisionError: no detector response"),
    ("WrongShape", r"returned shape \(2, 3, 2\), expected \(2, 3, 1\) \[parameter vectors, "
                   r"num_obs, observation_dim\]"),
    ("Counts", r"returned int32 observations; expected float32 \(end simulate with "
               r"tf.cast\(..., tf.float32\)\)"),
    # float64 passed a check for any floating type, then failed inside the machine's float32 graph.
    ("Doubles", "returned float64 observations; expected float32"),
    ("KeyErrors", "raised KeyError: 'no calibration constant'$"),
])
def test_a_tf_simulator_that_fails_its_trial_call_is_named_in_one_line(tmp_path, attribute,
                                                                       message):
  path = tmp_path / "detector.py"
  path.write_text(BROKEN_TF_SIMULATORS)
  with pytest.raises(ValueError, match=rf"simulator spec '{path}:{attribute}': a trial call \(2 "
                                       rf"parameter vectors drawn from its prior, num_obs=3\) "
                                       rf"{message}") as info:
    get_simulator(f"{path}:{attribute}")
  assert "\n" not in str(info.value)



@pytest.mark.parametrize("attribute, message", [
    ("WrongShape", r"a trial call \(2 parameter vectors drawn from its prior, num_obs=3\) "
                   r"returned shape \(2, 3, 2\), expected \(2, 3, 1\)"),
    ("Counts", "a trial call .* returned int32 observations; expected float32"),
    ("NotASimulator", "made a int, not an alfi_tf Simulator"),
])
def test_a_registered_simulator_is_checked_as_an_imported_one_is(attribute, message):
  """`register_simulator` skipped the checks: a wrong shape or integer observations failed in
  training (`observations must have shape ...`, a TypeError from `tf.math.is_finite`), naming
  no simulator, and a factory that made no simulator an AttributeError about `spec`."""
  namespace = {"NotASimulator": lambda: 42}
  exec(BROKEN_TF_SIMULATORS, namespace)   # pylint: disable=exec-used
  register_simulator(namespace[attribute], name=f"registered_{attribute}")
  with pytest.raises(ValueError, match=rf"simulator spec 'registered_{attribute}':? {message}"):
    get_simulator(f"registered_{attribute}")

BROKEN_PRIORS = """
import numpy as np
import tensorflow_probability as tfp
from alfi_tf import NumpySimulator

class Prior(NumpySimulator):
  prior_distribution = None

  def __init__(self):
    super().__init__(parameter_names=["a", "b"], observation_dim=1,
                     prior=self.prior_distribution)

  def simulate_numpy(self, theta, num_obs, rng):
    return rng.normal(size=(len(theta), num_obs, 1))

class NaNParameters(Prior):
  prior_distribution = tfp.distributions.Independent(
      tfp.distributions.Normal([0.0, float("nan")], 1.0), 1)

class Sound(Prior):
  prior_distribution = tfp.distributions.MultivariateNormalDiag([0.0, 1.0], [1.0, 2.0])
"""


def test_a_prior_that_draws_nan_is_named(tmp_path):
  path = tmp_path / "priors.py"
  path.write_text(BROKEN_PRIORS)
  with pytest.raises(ValueError, match=rf"simulator spec '{path}:NaNParameters': its prior drew "
                                       r"NaN/inf values \(e\.g\. \[.*nan\]\); check the "
                                       r"parameters"):
    get_simulator(f"{path}:NaNParameters")
  assert get_simulator(f"{path}:Sound").parameter_dim == 2   # a prior that is not a box is fine


def _train_evaluate_export_infer(tmp_path, spec: str, train_cwd: str,
                                 evaluate: bool = True) -> str:
  """Trains from `train_cwd`, then evaluates, exports and infers from elsewhere, with no simulator
  flag; returns the spec the run recorded."""
  workdir, export_dir, elsewhere = (str(tmp_path / "run"), str(tmp_path / "export"),
                                    str(tmp_path))
  trained = run("experiments.train", f"--simulator={spec}", *TINY_FLAGS, "--data_workers=2",
                f"--workdir={workdir}", cwd=train_cwd)
  assert trained.returncode == 0, trained.stderr[-3000:]
  recorded = json.load(open(os.path.join(workdir, "config.json")))["machine"]["simulator"]
  if evaluate:
    evaluated = run("experiments.evaluate", f"--workdir={workdir}", "--num_problems=8",
                    "--robustness_problems=2", "--robustness_starts=2", cwd=elsewhere)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "damping" in evaluated.stdout and "frequency" in evaluated.stdout
  exported = run("experiments.export", f"--workdir={workdir}", f"--export_dir={export_dir}",
                 cwd=elsewhere)
  assert exported.returncode == 0, exported.stderr[-3000:]
  metadata = json.load(open(os.path.join(export_dir, "assets", "alfi_metadata.json")))
  assert metadata["simulator_spec"] == recorded and not metadata["tf_native_simulator"]
  np.save(tmp_path / "data.npy", get_simulator(EXAMPLE + ":DampedOscillator").simulate(
      tf.constant([[0.4, 2.0]]), 20, tf.constant([5, 6])).numpy()[0])
  inferred = run("experiments.infer", f"--model={export_dir}", f"--observations={tmp_path}/data.npy",
                 f"--output={tmp_path}/result.json", cwd=elsewhere)
  assert inferred.returncode == 0, inferred.stderr[-3000:]
  result = json.load(open(tmp_path / "result.json"))
  assert set(result["datasets"][0]["parameters"]) == {"damping", "frequency"}
  return recorded


def test_a_file_simulator_through_train_evaluate_export_and_infer(tmp_path):
  """A relative file spec, trained from the user's directory, found from anywhere after; when the
  file moves, the error names the spec and the import error."""
  user = tmp_path / "user"
  (user / "sims").mkdir(parents=True)
  shutil.copy(EXAMPLE, user / "sims" / "osc.py")
  recorded = _train_evaluate_export_infer(tmp_path, "sims/osc.py:DampedOscillator", str(user))
  assert recorded == f"{user}/sims/osc.py:DampedOscillator"
  os.rename(user / "sims" / "osc.py", user / "sims" / "moved.py")
  moved = run("experiments.evaluate", f"--workdir={tmp_path / 'run'}", "--num_problems=8")
  assert moved.returncode == 1 and "Traceback" not in moved.stderr
  assert (f"error: simulator spec '{recorded}' could not be imported: FileNotFoundError: no file "
          f"{user}/sims/osc.py (was it moved or deleted?)") in moved.stderr
  # Edited since (the parameters swapped): the export's answer would bear the wrong names.
  source = (user / "sims" / "moved.py").read_text()
  (user / "sims" / "osc.py").write_text(source.replace('["damping", "frequency"]',
                                                       '["frequency", "damping"]'))
  edited = run("experiments.infer", f"--model={tmp_path / 'export'}",
               f"--observations={tmp_path}/data.npy", f"--output={tmp_path}/edited.json")
  assert edited.returncode == 1 and "Traceback" not in edited.stderr
  assert (f"error: simulator '{recorded}' changed since --model={tmp_path / 'export'} was trained "
          "on it: parameter_names was ['damping', 'frequency'], is now ['frequency', 'damping']"
          ) in edited.stderr
  assert not (tmp_path / "edited.json").exists()


def test_a_module_simulator_through_train_export_and_infer(tmp_path):
  # Evaluation re-imports a recorded spec exactly as export does (load_machine); the file form
  # above runs it.
  spec = "examples.oscillator.oscillator:DampedOscillator"
  assert _train_evaluate_export_infer(tmp_path, spec, ROOT, evaluate=False) == spec


COMMAND = os.path.join(ROOT, "examples", "oscillator", "oscillator.sh")
COMMAND_FLAGS = ["--simulator=command", "--simulator_command=examples/oscillator/oscillator.sh",
                 "--parameter_names=damping,frequency", "--prior_low=0.1,0.5",
                 "--prior_high=1,3", "--observation_dim=8"]


def test_an_external_program_through_train_evaluate_export_and_infer(tmp_path):
  workdir, export_dir = str(tmp_path / "run"), str(tmp_path / "export")
  # The script as an argument of its interpreter: only the executable's path was made absolute,
  # and evaluating from another directory failed ("can't open file").
  trained = run("experiments.train", *COMMAND_FLAGS[:1],
                "--simulator_command=sh examples/oscillator/oscillator.sh", *COMMAND_FLAGS[2:],
                *TINY_FLAGS, f"--workdir={workdir}")
  assert trained.returncode == 0, trained.stderr[-3000:]
  spec = json.load(open(os.path.join(workdir, "config.json")))["machine"]["simulator"]
  assert spec.startswith("command:") and f"sh {COMMAND}" in spec   # the script's absolute path
  other_directory = str(tmp_path)
  evaluated = run("experiments.evaluate", f"--workdir={workdir}", "--num_problems=8",
                  "--robustness_problems=2", "--robustness_starts=2", cwd=other_directory)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  exported = run("experiments.export", f"--workdir={workdir}", f"--export_dir={export_dir}",
                 cwd=other_directory)
  assert exported.returncode == 0, exported.stderr[-3000:]
  np.save(tmp_path / "data.npy", get_simulator(spec).simulate(
      tf.constant([[0.4, 2.0]]), 20, tf.constant([5, 6])).numpy()[0])
  inferred = run("experiments.infer", f"--model={export_dir}", f"--observations={tmp_path}/data.npy",
                 f"--output={tmp_path}/result.json", cwd=other_directory)
  assert inferred.returncode == 0, inferred.stderr[-3000:]
  assert "damping" in inferred.stdout and "frequency" in inferred.stdout


def test_command_flags_are_validated(tmp_path):
  assert_rejected("experiments.train", [
    (COMMAND_FLAGS[:1], "--simulator=command needs --simulator_command, --parameter_names, "
                        "--prior_low, --prior_high, --observation_dim"),
    (COMMAND_FLAGS[:-2] + ["--prior_high=1,x", "--observation_dim=8"],
     "--prior_high must be comma-separated numbers, got '1,x'"),
    (COMMAND_FLAGS[:-2] + ["--prior_high=1", "--observation_dim=8"],
     "the prior's low and high need one value per parameter"),
    (COMMAND_FLAGS[:-2] + ["--prior_high=0.05,3", "--observation_dim=8"],
     "the prior's box needs finite low < high"),
    (["--simulator=poisson", "--parameter_names=a"],
     "--parameter_names applies to --simulator=command only"),
    (["--simulator=poisson", "--simulator_timeout=2", "--simulator_retries=0"],
     "--simulator_retries applies to --simulator=command only"),
    (["--simulator=poisson", "--simulator_timeout=nan"], "--simulator_timeout must be a positive "
                                                         "number"),
    (COMMAND_FLAGS[:-3] + ["--prior_low=1e39,0.5", "--prior_high=1e40,3", "--observation_dim=8"],
     "the prior's box needs finite low < high as float32 numbers"),
    (COMMAND_FLAGS + ["--simulator_timeout=0"], "--simulator_timeout must be a positive number"),
    (COMMAND_FLAGS[:1] + ["--simulator_command=sim\\"] + COMMAND_FLAGS[2:],
     "--simulator_command: the simulator command 'sim\\\\' cannot be split into a program and its "
     "arguments as a shell would (No escaped character)"),
    (COMMAND_FLAGS + ["--simulator_timeout=1e300"], "--simulator_timeout must be a positive number "
                                                    "of seconds, at most 1e+06"),
  ], TINY_FLAGS, tmp_path)


def test_a_transient_failure_is_retried_then_a_persistent_one_reported(tmp_path):
  flaky = tmp_path / "flaky.sh"
  flaky.write_text(f"#!/bin/sh\nif [ ! -e {tmp_path}/once ]; then touch {tmp_path}/once; "
                   f"echo transient >&2; exit 3; fi\nexec {COMMAND} \"$@\"\n")
  flaky.chmod(0o755)
  parameters = np.array([[0.5, 1.0]])
  simulated = CommandSimulator(str(flaky), ["damping", "frequency"], 8, retries=1)(
      parameters, 4, np.array([1, 2]))
  assert simulated.shape == (1, 4, 8)
  broken = tmp_path / "broken.sh"
  broken.write_text("#!/bin/sh\necho always broken >&2\nexit 7\n")
  broken.chmod(0o755)
  with pytest.raises(RuntimeError, match=r"failed with exit status 7: always broken \(tried 3 "
                                         r"times\)"):
    CommandSimulator(str(broken), ["damping", "frequency"], 8, retries=2)(parameters, 4,
                                                                          np.array([1, 2]))


def _script(tmp_path, name: str, body: str) -> str:
  """An executable shell script `name` in `tmp_path` running `body`; returns its path."""
  path = tmp_path / name
  path.write_text("#!/bin/sh\n" + body)
  path.chmod(0o755)
  return str(path)


#: The protocol's smallest simulator: each observation is the first parameter.
ECHO_FIRST_PARAMETER = """awk -F, -v n="$3" 'NR>1{for(i=0;i<n;i++){print $1}}' "$1" > "$2"\n"""


def _wait_until_gone(pid: int) -> None:
  """Waits (up to 5 s) until process `pid` is dead: gone, or a zombie waiting for init."""
  for _ in range(50):
    if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
      return
    time.sleep(0.1)
  raise AssertionError(f"process {pid} still runs")


def test_a_command_returns_when_it_exits_though_its_background_child_runs_on(tmp_path):
  # The child holds the command's stdout and stderr open; the call must not wait for it.
  child_pid = tmp_path / "child.pid"
  script = _script(tmp_path, "background.sh",
                   f"(sleep 60) &\necho $! > {child_pid}\n{ECHO_FIRST_PARAMETER}")
  started = time.monotonic()
  simulated = CommandSimulator(script, ["x"], 1, timeout=20)(np.array([[1.5], [2.5]]), 2,
                                                              np.array([1, 2]))
  assert time.monotonic() - started < 5
  np.testing.assert_array_equal(simulated[..., 0], [[1.5, 1.5], [2.5, 2.5]])
  _wait_until_gone(int(child_pid.read_text()))   # nothing a call started outlives it


def test_failures_and_timeouts_end_with_the_tail_of_the_commands_stderr(tmp_path):
  stuck = _script(tmp_path, "stuck.sh", "echo starting the solver >&2\nsleep 60\n")
  with pytest.raises(RuntimeError, match=r"timed out after 0\.5s \(killed with its child "
                                         r"processes\): starting the solver$"):
    CommandSimulator(stuck, ["x"], 1, timeout=0.5)(np.zeros((1, 1)), 1, np.array([0, 0]))
  chatty = _script(tmp_path, "chatty.sh", "head -c 100000 /dev/zero | tr '\\0' x >&2\n"
                                          "echo out of memory >&2\nexit 4\n")
  with pytest.raises(RuntimeError, match=r"failed with exit status 4: x+out of memory$") as info:
    CommandSimulator(chatty, ["x"], 1)(np.zeros((1, 1)), 1, np.array([0, 0]))
  assert len(str(info.value)) < 2200   # the tail of 100 kB, not all of it


def test_a_directory_at_the_output_path_is_a_failed_call_and_retried(tmp_path):
  script = _script(tmp_path, "directory.sh", 'mkdir "$2"\n')
  with pytest.raises(RuntimeError, match=rf"^simulator command '{script}' \(step 1\) exited 0 but "
                                         r"its simulations\.csv is not a regular file \(a "
                                         r"directory\?\); .* \(tried 2 times\)$"):
    CommandSimulator(script, ["x"], 1, retries=1)(np.zeros((1, 1)), 1, np.array([0, 0]))


@pytest.mark.parametrize("timeout", [1e6 + 1, 1e300, True])
def test_a_command_timeout_beyond_a_million_seconds_is_refused(timeout):
  with pytest.raises(ValueError, match=r"^the simulator timeout must be a positive number of "
                                       r"seconds, at most 1e\+06, got"):
    CommandSimulator("true", ["x"], 1, timeout=timeout)
  assert CommandSimulator("true", ["x"], 1, timeout=1e6).timeout == 1e6
