"""Simulation budgets are counted as specified, and the comparison scores answers alike."""

import dataclasses

import numpy as np
import pytest

import alfi_tf.simulators
from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.evaluation import budgets, comparison
from alfi_tf.simulators import NumpySimulator, box_prior, register_simulator
from alfi_tf.training import Trainer, set_global_seed


class CountingSimulator(NumpySimulator):
  """Gaussian observations around theta that counts every observation it simulates."""

  name = "counting"
  simulated = 0

  def __init__(self):
    super().__init__(parameter_names=["mu"], observation_dim=1, prior=box_prior([-1.0], [1.0]))

  def simulate_numpy(self, theta, num_obs, rng):
    CountingSimulator.simulated += len(theta) * num_obs
    return theta[:, None, :] + rng.normal(size=(len(theta), num_obs, 1))


@pytest.fixture
def counting():
  register_simulator(CountingSimulator)
  CountingSimulator.simulated = 0
  yield
  del alfi_tf.simulators._REGISTRY[CountingSimulator.name]


MACHINE = MachineConfig(simulator="counting", num_steps=2, num_samples=4, num_simulated_obs=3,
                        encoder_hidden=4, encoder_out=4, aggregator_hidden=4, aggregator_out=4,
                        updater_hidden=4, lstm_units=4)


def _train(tmp_path, data_source: str, validate_every: int, machine: MachineConfig = MACHINE):
  """Trains 8 steps (64 problems / batch 16 x 2 epochs); returns the counted budget."""
  train = TrainConfig(num_problems=64, num_obs=5, epochs=2, batch_size=16,
                      num_validation_problems=16, validate_every=validate_every,
                      data_source=data_source, calibration_problems=8, calibration_horizon=3)
  set_global_seed(0)
  result = Trainer(machine, train, str(tmp_path), progress_bar=False).train()
  assert result.steps == 8
  return budgets.alfi_training_simulations(machine, train, result.steps)


@pytest.mark.parametrize("answer_starts, calibration_runs, answer_simulated_obs",
                         [(1, 1, 0), (2, 1 + 2, 0), (1, 1, 5)])
def test_alfi_training_simulations_are_what_a_training_run_simulates(counting, tmp_path,
                                                                     answer_starts,
                                                                     calibration_runs,
                                                                     answer_simulated_obs):
  """A machine answering with `R > 1` runs calibrates single runs, then `R`-run pools; one
  answering with `N_a` observations per sample validates and calibrates with them."""
  machine = dataclasses.replace(MACHINE, answer_starts=answer_starts,
                                answer_simulated_obs=answer_simulated_obs)
  counts = _train(tmp_path, "memory", validate_every=3, machine=machine)   # after steps 3, 6, 8
  answer_obs = answer_simulated_obs or 3
  per_run, answer_run = 2 * 4 * 3, 2 * 4 * answer_obs
  calibration_run = 3 * 4 * answer_obs                     # T_c M N_a
  calibration = 8 * calibration_runs * calibration_run
  assert counts == {"meta_training_problems": 64 * 5, "online_problems": 0,
                    "validation_problems": 16 * 5, "training_steps": 8 * 16 * per_run,
                    "validation_runs": 3 * 16 * answer_run, "calibration_problems": 8 * 5,
                    "calibration_runs": calibration,
                    "total": 64 * 5 + 16 * 5 + 8 * 16 * per_run + 3 * 16 * answer_run
                             + 8 * 5 + calibration}
  assert CountingSimulator.simulated == counts["total"]


def test_online_training_counts_its_fresh_problems(counting, tmp_path):
  counts = _train(tmp_path, "online", validate_every=4)
  assert counts["online_problems"] == 8 * 16 * 5 and counts["validation_runs"] == 2 * 16 * 24
  # The pipeline may simulate a few batches ahead of the last step; those are spent but unused.
  assert counts["total"] <= CountingSimulator.simulated <= counts["total"] + 4 * 16 * 5


def test_alfi_inference_simulations_count_every_start_and_step():
  assert budgets.alfi_inference_simulations(MACHINE, num_steps=15, num_starts=8) == 8 * 15 * 4 * 3
  answering_with_more = dataclasses.replace(MACHINE, answer_simulated_obs=7)
  assert budgets.alfi_inference_simulations(answering_with_more, num_steps=15) == 15 * 4 * 7


def _answer(mean, std, log_prob=None):
  return comparison.Answer("test", mean, std, log_prob, 10, 20, 1.0, 0.5)


def test_score_divides_by_the_exact_posterior_mean_and_leaves_out_failed_answers():
  rng = np.random.default_rng(0)
  theta = rng.standard_normal([400, 2])
  posterior_mean = theta + 0.5 * rng.standard_normal([400, 2])
  references = {"posterior_mean": posterior_mean, "posterior_std": np.full([400, 2], 0.5),
                "mle": theta}
  mean = posterior_mean.copy()
  mean[:3] = np.nan                                 # three data sets without an answer
  report = comparison.score(_answer(mean, np.full([400, 2], 0.5)), theta, references, ["a", "b"])
  assert report["failed"] == 3 and report["reference"] == "posterior_mean"
  np.testing.assert_allclose(list(report["rmse_ratio"].values()), 1.0)
  np.testing.assert_allclose(list(report["marginal_kl_to_posterior"].values()), 0.0, atol=1e-12)
  # The exact posterior's intervals cover at their nominal rates, within 3 binomial errors.
  for level, values in report["coverage"].items():
    error = np.sqrt(float(level) * (1 - float(level)) / 397)
    assert all(abs(value - float(level)) < 3 * error for value in values.values())
  assert report["nll_source"] == "Gaussian(mean, std)"
  assert (report["training_simulations"], report["simulations_per_inference"]) == (10, 20)


def test_score_uses_the_methods_own_density_and_falls_back_to_the_reference_estimator():
  theta = np.zeros([4, 1])
  report = comparison.score(_answer(np.ones([4, 1]), np.ones([4, 1]), np.full(4, -2.0)), theta,
                            {"mle": np.full([4, 1], 0.5)}, ["a"])
  assert report["nll"] == 2.0 and report["nll_source"] == "own density"
  assert report["reference"] == "mle" and report["rmse_ratio"]["a"] == pytest.approx(2.0)
  assert "marginal_kl_to_posterior" not in report
  # No reference estimator (Lotka-Volterra): against the prior mean, the answer of no data.
  theta = np.array([[0.0], [2.0], [0.0], [2.0]])                 # mean 1, RMSE of the mean 1
  report = comparison.score(_answer(np.full([4, 1], 1.5), np.ones([4, 1]), None), theta, {}, ["a"])
  assert report["reference"] == "prior_mean"
  assert report["rmse_ratio"]["a"] == pytest.approx(np.sqrt(1.25))
