"""Simulators with a design (`Simulator.design_dim`, `simulate_at_design`): the columns of an
observation that the experiment sets, which the machine simulates at the real data's values of
(`MachineConfig.observed_design`) in its graph, in the export's ask/tell and in the evaluation."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from alfi_tf import MachineConfig, NumpySimulator, Simulator
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.serving.deploy import DeployedMachine
from alfi_tf.serving.export import ExportModule, export_machine
from alfi_tf.simulators import get_simulator
from alfi_tf.simulators.base import SimulatorError, box_prior
from alfi_tf.simulators.linear_regression import NOISE_STD
from tests.binary_runs import assert_refused, run

SMALL = dict(num_steps=3, num_samples=4, num_simulated_obs=6, encoder_hidden=8, encoder_out=4,
             aggregator_hidden=8, aggregator_out=4, updater_hidden=8, lstm_units=4)


class NumpyLine(NumpySimulator):
  """`y = slope * u + N(0, 1)` at covariates `u ~ U(-1, 1)`: `x = (u, y)`, in numpy."""

  name = "numpy_line"
  design_dim = 1

  def __init__(self):
    super().__init__(parameter_names=["slope"], observation_dim=2, prior=box_prior([-2.0], [2.0]))

  def simulate_numpy(self, theta, num_obs, rng):
    return self.simulate_numpy_at_design(theta, rng.uniform(-1, 1, (len(theta), num_obs, 1)), rng)

  def simulate_numpy_at_design(self, theta, design, rng):
    response = theta[:, np.newaxis, :1] * design + rng.normal(size=design.shape)
    return np.concatenate([design, response], axis=-1)


def test_linear_regression_draws_its_responses_at_the_design_it_is_given():
  simulator = get_simulator("linear_regression")
  theta = tf.constant([[0.3, 1.0, 1.4, -0.5]])
  design = tf.random.stateless_uniform([1, 20000, 3], seed=[1, 2], minval=-1.0, maxval=1.0)
  simulated = simulator.simulate_at_design(theta, design, tf.constant([3, 4])).numpy()[0]
  np.testing.assert_array_equal(simulated[:, :3], design.numpy()[0])
  np.testing.assert_array_equal(simulated[:, 3], 1.0)
  residuals = simulated[:, 4] - (design.numpy()[0] @ np.tan([0.3, 1.0, 1.4]) - 0.5)
  standard_error = NOISE_STD / np.sqrt(2 * len(residuals))   # of the sample std of a normal
  assert abs(residuals.std() - NOISE_STD) < 4 * standard_error
  assert abs(residuals.mean()) < 4 * NOISE_STD / np.sqrt(len(residuals))


@pytest.mark.parametrize("design_dim", [-1, 2, 1.0, True])
def test_a_design_dim_outside_the_observation_is_refused(design_dim):
  class Line(NumpyLine):
    pass
  Line.design_dim = design_dim
  with pytest.raises(ValueError, match=r"simulator class Line: design_dim must be an int from 0 "
                                       r"to observation_dim - 1 = 1"):
    Line()


def test_a_design_without_its_simulation_is_refused():
  class Declared(Simulator):
    design_dim = 1

    def __init__(self):
      super().__init__(["a"], 2, box_prior([0.0], [1.0]))

    def simulate(self, theta, num_obs, seed):
      return tf.zeros([tf.shape(theta)[0], num_obs, 2])

  with pytest.raises(ValueError, match="declares design_dim=1 but does not implement "
                                       "simulate_at_design"):
    Declared()


def test_a_numpy_simulation_at_a_design_runs_in_a_graph_and_must_keep_the_design():
  simulator = NumpyLine()
  design = np.linspace(-1, 1, 10, dtype=np.float32).reshape(2, 5, 1)
  simulated = tf.function(simulator.simulate_at_design)(
      tf.constant([[1.0], [-1.0]]), tf.constant(design), tf.constant([0, 1])).numpy()
  np.testing.assert_array_equal(simulated[..., :1], design)

  class Moving(NumpyLine):
    def simulate_numpy_at_design(self, theta, design, rng):
      return super().simulate_numpy_at_design(theta, design + 1.0, rng)

  with pytest.raises(SimulatorError, match=r"simulate_numpy_at_design must return the design it "
                                           r"was given as the first 1 column"):
    Moving().simulate_checked(np.ones([2, 1]), 5, np.array([0, 1]), design)


def _machine(simulator, observed_design=True, **overrides) -> InferenceMachine:
  config = MachineConfig(simulator=simulator.spec, observed_design=observed_design,
                         **{**SMALL, **overrides})
  return InferenceMachine(simulator, config)


@pytest.mark.parametrize("num_obs, num_simulated_obs", [(9, 6), (4, 10)])
def test_each_step_simulates_all_samples_at_rows_of_the_real_design(num_obs, num_simulated_obs):
  simulator = get_simulator("linear_regression")
  machine = _machine(simulator, num_simulated_obs=num_simulated_obs)
  _, observations = simulator.sample_problems(3, num_obs, tf.constant([0, 1]))
  samples = tf.zeros([3, machine.config.num_samples, 4])
  real_at_design = machine.observations_at_design(observations, tf.constant([5, 6]))
  simulated = machine._simulate(samples, tf.constant([5, 6]), num_simulated_obs,
                                real_at_design).numpy()
  rows = machine.design_rows(tf.constant([5, 6]), 3, num_obs).numpy()         # [3, N]
  for problem in range(3):
    np.testing.assert_array_equal(real_at_design[problem],
                                  observations.numpy()[problem, rows[problem]])
    expected = observations.numpy()[problem, rows[problem], :3]
    for sample in range(machine.config.num_samples):
      np.testing.assert_array_equal(simulated[problem, sample, :, :3], expected)
    # Every row serves equally often: a permutation, cycled through again when N > n.
    counts = np.bincount(rows[problem], minlength=num_obs)
    assert counts.max() - counts.min() <= 1
  other = machine.design_rows(tf.constant([5, 7]), 3, num_obs).numpy()
  assert not np.array_equal(rows, other)   # a new choice with every step's seed


def test_the_answer_simulates_answer_simulated_obs_rows_and_training_the_trainings(monkeypatch):
  """`answer_simulated_obs` sets `N` for the answer (rows of the design and observations per
  sample); the meta-loss's runs (`training=True`) keep `num_simulated_obs`."""
  simulator = get_simulator("linear_regression")
  machine = _machine(simulator, answer_simulated_obs=9)
  _, observations = simulator.sample_problems(2, 7, tf.constant([0, 1]))
  simulated_rows = []
  at_design = type(simulator).simulate_at_design
  monkeypatch.setattr(type(simulator), "simulate_at_design", lambda self, theta, design, seed: (
      simulated_rows.append(design.shape[1]) or at_design(self, theta, design, seed)))
  machine(observations, tf.constant([0, 0]))
  machine(observations, tf.constant([0, 0]), training=True)
  assert simulated_rows == [9] * 3 + [6] * 3
  assert machine.design_rows(tf.constant([5, 6]), 2, 7).shape == (2, 9)
  assert machine.design_rows(tf.constant([5, 6]), 2, 7, training=True).shape == (2, 6)


def test_without_observed_design_the_simulator_draws_its_own():
  simulator = get_simulator("linear_regression")
  machine = _machine(simulator, observed_design=False)
  assert not machine.simulates_at_observed_design
  _, observations = simulator.sample_problems(2, 9, tf.constant([0, 1]))
  assert machine.observations_at_design(observations, tf.constant([5, 6])) is None
  simulated = machine._simulate(tf.zeros([2, 4, 4]), tf.constant([5, 6]), 6).numpy()
  real_rows = {tuple(row) for row in observations.numpy()[..., :3].reshape(-1, 3)}
  assert not any(tuple(row) in real_rows for row in simulated[..., :3].reshape(-1, 3))


@pytest.mark.parametrize("simulator", [get_simulator("linear_regression"), NumpyLine()],
                         ids=["tf", "numpy"])
def test_ask_tell_at_the_design_equals_infer(simulator):
  """... at the answer's `N` (`answer_simulated_obs`), which the export tells its users."""
  machine = _machine(simulator, tail_averaging=0.5, answer_simulated_obs=9)
  _, observations = simulator.sample_problems(3, 7, tf.constant([0, 1]))
  machine(observations, tf.constant([0, 0]))
  module = ExportModule(machine, num_steps=4)
  deployed = DeployedMachine(module, json.loads(module.metadata_json))
  assert deployed.design_dim == simulator.design_dim and deployed.num_simulated_obs == 9
  assert deployed.start(observations.numpy()).design().shape == (3, 9, simulator.design_dim)
  told = deployed.run(observations.numpy(), simulator.simulate_at_design, seed=3)
  inferred = machine.infer(observations, tf.constant([3, 0]), num_steps=4)
  np.testing.assert_allclose(told.mean, inferred["mean"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(told.std, inferred["std"], rtol=1e-5, atol=1e-6)


def test_a_design_machine_round_trips_through_a_keras_file(tmp_path):
  simulator = get_simulator("linear_regression")
  machine = _machine(simulator)
  _, observations = simulator.sample_problems(2, 7, tf.constant([0, 1]))
  # Weights of their own in the paired encoder, and steps that depend on them (the updater's
  # output layer starts at zero: an untrained machine would not move whatever it read).
  for index, weight in enumerate(machine.paired_encoder.weights
                                 + machine.updater.output_net.layers[-1].weights):
    weight.assign(0.5 * tf.random.stateless_normal(weight.shape, seed=[index, 1]))
  path = str(tmp_path / "machine.keras")
  machine.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.simulates_at_observed_design
  expected = machine.infer(observations, tf.constant([3, 0]))["mean"]
  np.testing.assert_array_equal(loaded.infer(observations, tf.constant([3, 0]))["mean"], expected)
  fresh = _machine(simulator).infer(observations, tf.constant([3, 0]))["mean"]
  assert not np.allclose(fresh, expected)   # the answer depends on the weights restored


def test_a_design_machine_trains_through_its_paired_encoder():
  """`fit` (the meta-loss) reaches the paired encoder: its weights move, the loss is finite."""
  simulator = get_simulator("linear_regression")
  keras.utils.set_random_seed(0)
  machine = _machine(simulator)
  theta, observations = simulator.sample_problems(16, 12, tf.constant([0, 1]))
  machine.adapt(theta.numpy(), observations.numpy())
  machine.compile(keras.optimizers.Adam(1e-2))
  before = [weight.numpy().copy() for weight in machine.paired_encoder.trainable_weights]
  seeds = tf.random.experimental.stateless_split(tf.constant([3, 4]), 16).numpy()
  history = machine.fit((theta.numpy(), observations.numpy(), seeds), batch_size=8, epochs=1,
                        verbose=0)
  assert np.isfinite(history.history["loss"]).all()
  moved = [not np.array_equal(old, new.numpy())
           for old, new in zip(before, machine.paired_encoder.trainable_weights)]
  assert all(moved)


def test_simulations_told_at_another_design_are_refused():
  simulator = get_simulator("linear_regression")
  machine = _machine(simulator)
  _, observations = simulator.sample_problems(2, 7, tf.constant([0, 1]))
  deployed = DeployedMachine(ExportModule(machine), json.loads(ExportModule(machine).metadata_json))
  session = deployed.start(observations.numpy())
  parameters = session.ask()
  elsewhere = simulator.simulate(parameters.reshape(-1, 4), 6, session.simulation_seed)
  with pytest.raises(ValueError, match=r"step 1: simulations must be simulated at design\(\)"):
    session.tell(elsewhere.numpy())
  design = np.repeat(session.design(), parameters.shape[1], axis=0)
  session.tell(simulator.simulate_at_design(parameters.reshape(-1, 4), design,
                                            session.simulation_seed).numpy())
  assert session.step == 1


def test_a_machine_without_a_design_has_none_to_ask_for():
  simulator = get_simulator("poisson")
  machine = InferenceMachine(simulator, MachineConfig(simulator="poisson", observed_design=True,
                                                      **SMALL))
  module = ExportModule(machine)
  deployed = DeployedMachine(module, json.loads(module.metadata_json))
  assert deployed.design_dim == 0
  session = deployed.start(np.ones([1, 5, 1], np.float32))
  with pytest.raises(ValueError, match="does not simulate at the observed design"):
    session.design()


BROKEN_DESIGN = """
import tensorflow as tf
from alfi_tf import Simulator
from alfi_tf.simulators.base import box_prior

class Line(Simulator):
  design_dim = 1

  def __init__(self):
    super().__init__(["slope"], 2, box_prior([-1.0], [1.0]))

  def simulate(self, theta, num_obs, seed):
    design = tf.random.stateless_uniform([tf.shape(theta)[0], num_obs, 1], seed=seed)
    return self.simulate_at_design(theta, design, seed)

  def simulate_at_design(self, theta, design, seed):
    return tf.concat([2.0 * design, theta[:, None, :] * design], axis=-1)
"""


def test_a_user_simulator_that_changes_its_design_is_named_when_built(tmp_path):
  path = tmp_path / "line.py"
  path.write_text(BROKEN_DESIGN)
  with pytest.raises(ValueError, match=r"a trial call of simulate_at_design \(design_dim=1\) must "
                                       r"return the design it was given"):
    get_simulator(f"{path}:Line")



def test_alfi_infer_simulates_a_numpy_design_simulator_at_the_datas_design(tmp_path):
  """`alfi-infer` with an export whose numpy simulator has a design simulates at the data's own
  design, and refuses an external command, which could not be given it. (Training and export
  with a design simulator run in-process here; the binaries around them do not look at it.)"""
  simulator = NumpyLine()
  simulator.spec = "tests.test_designs:NumpyLine"   # how alfi-infer finds it again
  machine = _machine(simulator)
  machine(tf.zeros([1, 5, 2]), tf.constant([0, 0]))
  export_dir = str(tmp_path / "export")
  export_machine(machine, export_dir)
  metadata = json.load(open(tmp_path / "export" / "assets" / "alfi_metadata.json"))
  assert metadata["design_dim"] == 1 and not metadata["tf_native_simulator"]
  np.save(tmp_path / "data.npy", np.stack([np.linspace(-1, 1, 20), np.linspace(-1, 1, 20)], -1))
  flags = [f"--model={export_dir}", f"--observations={tmp_path}/data.npy"]
  inferred = run("experiments.infer", *flags, f"--output={tmp_path}/result.json")
  assert inferred.returncode == 0, inferred.stderr[-3000:]
  assert set(json.load(open(tmp_path / "result.json"))["datasets"][0]["parameters"]) == {"slope"}
  assert_refused("experiments.infer", [(
      flags + ["--simulator_command=/bin/true"],
      "--simulator_command: this machine simulates at the observed data's design")])
