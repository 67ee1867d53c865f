"""A simulator that raises: one clear error naming the simulator, the parameters and (in training)
the step, never a raw `UnknownError` trace from inside `tf.numpy_function`."""

import dataclasses
import json
import os
import re
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import alfi_tf.simulators
from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.simulators import NumpySimulator, SimulatorError, box_prior, register_simulator
from alfi_tf.simulators.base import simulator_error_message
from alfi_tf.training import Trainer
from alfi_tf.training import data as data_lib
from experiments import cli


FAILING_CALL = 32


class FragileSimulator(NumpySimulator):
  """Gaussian observations around theta, but raises for theta above 0.9 (outside its prior, so only
  when called directly), or when called with `FAILING_CALL` parameter vectors: a training step's
  batch 8 x M 4, or a set of 32 problems."""

  name = "fragile"

  def __init__(self):
    super().__init__(parameter_names=["mu"], observation_dim=1, prior=box_prior([-1.0], [0.9]))

  def simulate_numpy(self, theta, num_obs, rng):
    if np.any(theta > 0.9) or len(theta) == FAILING_CALL:
      raise ArithmeticError("mu too large for the solver")
    return theta[:, None, :] + rng.normal(size=(len(theta), num_obs, 1))


@pytest.fixture
def fragile():
  register_simulator(FragileSimulator)
  yield FragileSimulator.name
  del alfi_tf.simulators._REGISTRY[FragileSimulator.name]


def test_the_message_names_the_simulator_the_error_and_the_parameters():
  simulate = tf.function(FragileSimulator().simulate)
  with pytest.raises(tf.errors.OpError) as caught:
    simulate(tf.constant([[0.5], [0.95]]), 3, tf.constant([1, 2]))
  message = simulator_error_message(caught.value)
  assert message == ("simulator 'fragile' raised ArithmeticError: mu too large for the solver "
                     "(for 2 parameter vector(s): (mu=0.5); (mu=0.95))")
  assert cli._message(caught.value) == message   # what the binaries print: one line


def test_training_reports_the_failing_step(fragile, tmp_path):
  machine_config = MachineConfig(simulator=fragile, num_steps=2, num_samples=4,
                                 num_simulated_obs=4, encoder_hidden=4, encoder_out=4,
                                 aggregator_hidden=4, aggregator_out=4, updater_hidden=4,
                                 lstm_units=4)
  train_config = TrainConfig(num_problems=16, num_obs=5, epochs=4, batch_size=8,
                             num_validation_problems=4)
  with pytest.raises(SimulatorError, match=r"^training step 1: simulator 'fragile' raised "
                                           r"ArithmeticError: mu too large for the solver \(for "
                                           r"32 parameter vector\(s\): \(mu="):
    Trainer(machine_config, train_config, str(tmp_path / "steps")).train()
  # A set of 32 problems fails when it is generated.
  with pytest.raises(SimulatorError, match=r"^generating the meta-training and validation sets: "
                                           r"simulator 'fragile' raised ArithmeticError"):
    Trainer(machine_config, dataclasses.replace(train_config, num_problems=FAILING_CALL),
            str(tmp_path / "data")).train()


class SysExitSimulator(FragileSimulator):
  """Calls sys.exit(), as a script turned simulator may."""

  def simulate_numpy(self, theta, num_obs, rng):
    sys.exit(3)


def test_a_simulator_that_calls_sys_exit_is_named_like_one_that_raises():
  simulate = tf.function(SysExitSimulator().simulate)
  with pytest.raises(tf.errors.OpError) as caught:
    simulate(tf.constant([[0.5]]), 3, tf.constant([1, 2]))
  assert cli._message(caught.value) == ("simulator 'fragile' called sys.exit(3) (for 1 parameter "
                                        "vector(s): (mu=0.5))")


@pytest.mark.parametrize("error, first_line", [
    (tf.errors.InternalError(None, None, "cuDNN launch failure\nlong detail"),
     "InternalError: cuDNN launch failure"),
    # TensorFlow reports a full disk as exhausted resources too: not a matter of memory.
    (tf.errors.ResourceExhaustedError(None, None, "ckpt-6.index: No space left on device\nmore"),
     "ResourceExhaustedError: ckpt-6.index: No space left on device"),
    # A TF-native simulator's assertion, failing while the meta-training set is drawn: TensorFlow's
    # function and tf.data transformation are left out.
    (tf.errors.InvalidArgumentError(
        None, None, "{{function_node __wrapped__IteratorGetNext_output_types_2_device_/job:"
        "localhost/replica:0/task:0/device:CPU:0}} Error in user-defined function passed to "
        "ParallelMapDatasetV2:150 transformation with iterator: Iterator::Root::ParallelMapV2: "
        "assertion failed: [theta too big]\n\t [[{{node assert}}]]"),
     "InvalidArgumentError: assertion failed: [theta too big]"),
])
def test_other_tensorflow_errors_are_shortened(error, first_line):
  assert cli._message(error) == f"TensorFlow {first_line} (--verbosity=1 shows the full trace)"


@pytest.fixture
def size_flags(monkeypatch):
  """The parsed flags of a binary run with an absurd --encoder_hidden: two size flags (of
  `cli.SIZE_FLAGS`), one left unset (None: the machine's own value, not named), and one other."""
  values = flags.FlagValues()
  flags.DEFINE_integer("batch_size", 32, "", flag_values=values)
  flags.DEFINE_integer("encoder_hidden", 50, "", flag_values=values)
  flags.DEFINE_integer("num_starts", None, "", flag_values=values)
  flags.DEFINE_integer("verbosity", 0, "", flag_values=values)
  values(["alfi-train", "--encoder_hidden=100000000"])
  monkeypatch.setattr(flags, "FLAGS", values)


SIZES = ("the settings that size it are --batch_size=32, --encoder_hidden=100000000: use smaller "
         "ones")


@pytest.mark.parametrize("error, what", [
    # As Keras re-raises TensorFlow's: its layer first, the allocation further down.
    (tf.errors.ResourceExhaustedError(
        None, None, "Exception encountered when calling Dense.call().\n\n{{function_node "
        "__wrapped__Mul_device_/job:localhost/replica:0/task:0/device:CPU:0}} OOM when allocating "
        "tensor with shape[100000000,4] and type float on /job:localhost/replica:0/task:0/device:"
        "CPU:0 by allocator mklcpu [Op:Mul] name: \n\nArguments received by Dense.call():"),
     "OOM when allocating tensor with shape[100000000,4]"),
    (MemoryError("Unable to allocate 7.45 GiB for an array with shape (1000000000, 2) and data "
                 "type float32"),
     "Unable to allocate 7.45 GiB for an array with shape (1000000000, 2) and data type float32"),
])
def test_running_out_of_memory_names_the_size_settings(size_flags, capsys, error, what):
  """An absurd size flag used to end a binary with TensorFlow's ResourceExhaustedError of a Keras
  layer, or numpy's MemoryError traceback, naming no flag."""
  def main(argv):
    raise error

  with pytest.raises(SystemExit) as exit_status:
    cli._guarded(main, ["alfi-train"])
  assert exit_status.value.code == 1
  assert capsys.readouterr().err == (f"error: ran out of memory building or running the model "
                                     f"({what}); {SIZES}\n")


class PatchySimulator(NumpySimulator):
  """Gaussian observations around mu, but NaN for mu in (0.9, 1] (5% of its prior), or everywhere
  above `broken_above`."""

  name = "patchy"

  def __init__(self, broken_above: float = 0.9):
    super().__init__(parameter_names=["mu"], observation_dim=1, prior=box_prior([-1.0], [1.0]))
    self.broken_above = broken_above

  def simulate_numpy(self, theta, num_obs, rng):
    observations = theta[:, None, :] + rng.normal(size=(len(theta), num_obs, 1))
    observations[theta[:, 0] > self.broken_above] = np.nan
    return observations


class FirstRowFails(PatchySimulator):
  """NaN for the first parameter vector of every call, wherever it lies in the prior."""

  name = "first_row"

  def simulate_numpy(self, theta, num_obs, rng):
    observations = theta[:, None, :] + rng.normal(size=(len(theta), num_obs, 1))
    observations[0] = np.nan
    return observations


def test_problems_with_nan_observations_are_redrawn_and_counted():
  from alfi_tf.training.data import TRAIN_STREAM, generate_problems
  problems = generate_problems(PatchySimulator(), 400, 5, seed=0, stream=TRAIN_STREAM)
  assert np.all(np.isfinite(problems.observations)) and problems.theta.max() <= 0.9
  # About 5% of 400 problems were redrawn (3 standard errors: sqrt(400 * 0.05 * 0.95) = 4.4).
  assert abs(problems.redrawn - 20) < 3 * 4.4, problems.redrawn
  # A simulator that works everywhere gets exactly the problems it got before the policy.
  fine = generate_problems(PatchySimulator(broken_above=2.0), 400, 5, seed=0, stream=TRAIN_STREAM)
  assert fine.redrawn == 0
  kept = problems.theta[:, 0] <= 0.9
  np.testing.assert_array_equal(problems.theta[kept & (fine.theta[:, 0] <= 0.9)],
                                fine.theta[kept & (fine.theta[:, 0] <= 0.9)])


def test_a_simulator_broken_on_much_of_its_prior_stops_the_run_naming_where():
  from alfi_tf.training.data import TRAIN_STREAM, generate_problems
  with pytest.raises(SimulatorError, match=r"simulator 'patchy' returned NaN/inf observations for "
                                           r"\d+ of 200 problems drawn from its prior \(more than "
                                           r"10%\), e.g. at \(mu=0\.\d+\)"):
    generate_problems(PatchySimulator(broken_above=0.5), 200, 5, seed=0, stream=TRAIN_STREAM)


@pytest.mark.parametrize("data_source", ["memory", "online", "disk"])
def test_training_on_a_simulator_with_a_nan_patch_completes_and_reports_the_counts(data_source,
                                                                                  tmp_path):
  register_simulator(PatchySimulator)
  try:
    machine_config = MachineConfig(simulator="patchy", num_steps=2, num_samples=4,
                                   num_simulated_obs=4, encoder_hidden=4, encoder_out=4,
                                   aggregator_hidden=4, aggregator_out=4, updater_hidden=4,
                                   lstm_units=4, initial_scale=2.0)
    train_config = TrainConfig(num_problems=64, num_obs=5, epochs=2, batch_size=16,
                               num_validation_problems=16, data_source=data_source,
                               calibration_problems=32, calibration_horizon=3)
    result = Trainer(machine_config, train_config, str(tmp_path), progress_bar=False,
                     log_every=1).train()
  finally:
    del alfi_tf.simulators._REGISTRY[PatchySimulator.name]
  assert result.steps == 8 and np.isfinite(result.final_loss)
  summary = json.load(open(tmp_path / "training_summary.json"))
  # 5% of the prior fails: about 4 of 80 fixed problems (3 standard errors: 3 x 1.95), and, with
  # proposals of spread 2 clipped into the prior, many of the 8 x 16 x 2 x 4 = 1024 simulated sets.
  assert 0 < summary["redrawn_problems"] <= 4 + 3 * 1.95 + (16 * 8 * 0.05 + 3 * 2.5
                                                             if data_source == "online" else 0)
  assert (summary["online_redrawn_problems"] > 0) == (data_source == "online")
  assert 0 < summary["masked_samples"] < 1024
  last = {}
  for name in os.listdir(tmp_path / "tb"):
    for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "tb" / name)):
      last.update({value.tag: tf.make_ndarray(value.tensor) for value in event.summary.value})
  assert last["train/masked_samples"] == summary["masked_samples"]
  assert last["train/redrawn_problems"] == summary["redrawn_problems"]


def test_a_problem_store_refuses_a_simulator_broken_on_much_of_its_prior(tmp_path):
  from alfi_tf.training.data import TRAIN_STREAM, ProblemStore
  path = str(tmp_path / "train")
  with pytest.raises(SimulatorError, match=r"simulator 'patchy' returned NaN/inf observations for "
                                           r"\d+ of \d+ problems drawn from its prior \(more than "
                                           r"10%\)"):
    ProblemStore(path).create(PatchySimulator(broken_above=0.5), 200, 5, seed=0,
                              stream=TRAIN_STREAM)
  assert os.listdir(tmp_path) == []   # nothing half-written is left behind
  # A simulator whose first set of every call fails: under 10% of the draws, but never recovered.
  with pytest.raises(SimulatorError, match=r"simulator 'first_row' still returned NaN/inf "
                                           r"observations for 1 problems after 8 redraws from its "
                                           r"prior, e.g. at \(mu=-?0\.\d+\)"):
    ProblemStore(path).create(FirstRowFails(), 200, 5, seed=0, stream=TRAIN_STREAM)
  assert os.listdir(tmp_path) == []
  store = ProblemStore(path).create(PatchySimulator(), 200, 5, seed=0, stream=TRAIN_STREAM)
  assert 0 < store.redrawn < 20
  assert all(np.isfinite(chunk.observations).all() for chunk in store.iterate_chunks())


def test_online_batches_redraw_problems_with_nan_observations():
  from alfi_tf.training.data import sample_finite_problems
  patchy, fine = PatchySimulator(), PatchySimulator(broken_above=2.0)
  seed = tf.constant([3, 4])
  theta, observations, redrawn = tf.function(
      lambda: sample_finite_problems(patchy, 256, 5, seed))()
  assert np.all(np.isfinite(observations.numpy())) and theta.numpy().max() <= 0.9
  # About 5% of 256 (3 standard errors: sqrt(256 * 0.05 * 0.95) = 3.5).
  assert 0 < int(redrawn) < 12.8 + 3 * 3.5
  # Without failures: exactly `sample_problems`.
  expected = fine.sample_problems(256, 5, seed)
  *actual, redrawn = sample_finite_problems(fine, 256, 5, seed)
  assert int(redrawn) == 0
  for a, b in zip(actual, expected):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


class ReturningSimulator(NumpySimulator):
  """Returns whatever it was built with, in the shape asked for."""

  def __init__(self, value):
    super().__init__(parameter_names=["mu"], observation_dim=1, prior=box_prior([0.0], [1.0]))
    self.value = value

  def simulate_numpy(self, theta, num_obs, rng):
    return np.full((len(theta), num_obs, 1), self.value)


@pytest.mark.parametrize("value, message", [
    ("x", "simulate_numpy's output must be numeric, got dtype <U1"),
    (None, "simulate_numpy's output must be numeric, got dtype object"),
    (1 + 2j, "simulate_numpy's output must be real numbers, got dtype complex128"),
])
def test_outputs_that_are_not_real_numbers_are_refused_not_cast(value, message):
  with pytest.raises(SimulatorError, match=rf"simulator 'ReturningSimulator': ReturningSimulator\."
                                           rf"{message}"):
    ReturningSimulator(value).simulate_checked(np.zeros((2, 1)), 3, np.array([1, 2]))
  assert ReturningSimulator(3).simulate_checked(np.zeros((2, 1)), 3, np.array([1, 2])).dtype == (
      np.float32)   # integers are real numbers


def test_values_beyond_float32_fail_like_inf_and_are_named_once(tmp_path, caplog):
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # no numpy overflow warning on the way
    for value in (-1e300, np.inf):   # inf stays what it was: the mark of a failed set
      observations = ReturningSimulator(value).simulate_checked(np.array([[0.25], [0.5]]), 3,
                                                                np.array([1, 2]))
      assert observations.dtype == np.float32 and np.isinf(observations).all()
    huge = tmp_path / "huge.sh"
    huge.write_text("#!/bin/sh\nawk -F, 'NR>1{print \"2e39\"}' \"$1\" > \"$2\"\n")
    huge.chmod(0o755)
    observations = alfi_tf.simulators.CommandSimulator(str(huge), ["mu"], 1)(
        np.array([[0.5]]), 1, np.array([1, 2]))
    assert np.isposinf(observations).all()
  warnings_logged = [record.getMessage() for record in caplog.records
                     if "beyond float32" in record.getMessage()]
  assert any(re.search(r"ReturningSimulator\.simulate_numpy returned 6 value\(s\) beyond "
                       r"float32's range \(±3\.403e\+38\), e\.g\. -1e\+300 at \(mu=0\.25\)",
                       message) for message in warnings_logged), warnings_logged


EXITING_SIMULATOR = '''
import os
import numpy as np
from alfi_tf import NumpySimulator, box_prior

class Exiting(NumpySimulator):
  """Exits the process it runs in, as a crashing native extension would."""

  def __init__(self):
    super().__init__(parameter_names=["a"], observation_dim=1, prior=box_prior([0.0], [1.0]))

  def simulate_numpy(self, theta, num_obs, rng):
    os._exit(3)
'''


def test_a_worker_process_that_dies_is_reported_naming_the_simulator(tmp_path):
  path = tmp_path / "exiting.py"
  path.write_text(EXITING_SIMULATOR)
  simulator = alfi_tf.simulators.get_simulator(f"{path}:Exiting")
  with data_lib.worker_pool(simulator, 2) as pool:
    with pytest.raises(tf.errors.OpError) as info:
      data_lib.generate_problems(simulator, 4, 3, seed=0, stream=0, executor=pool)
  message = simulator_error_message(info.value)
  assert message.startswith("simulator 'Exiting': a data worker process died while simulating")
  assert "for 4 parameter vector(s): (a=" in message and "--data_workers=0" in message
