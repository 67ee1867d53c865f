"""ALFI against its baselines (NPE, rejection ABC) on the same held-out problems, scored alike.

Each method's `Answer` holds its estimate `mean [K, d]`, its uncertainty `std [K, d]`, the
log-density it assigns to the true parameters (where it has one), and what it cost: simulated
observations for training and per data set (`budgets`), training wall time and inference latency.
`score` turns an answer into the comparison's figures against the exact references.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, NamedTuple, Optional

import numpy as np
import tensorflow as tf

from alfi_tf import metrics
from alfi_tf.baselines.abc import ABCConfig, RejectionABC, SummaryFn
from alfi_tf.baselines.npe_training import load_npe, read_summary
from alfi_tf.evaluation import budgets
from alfi_tf.model.inference import Inferrer, resolve_starts
from alfi_tf.simulators import Simulator
from alfi_tf.training import data as data_lib
from alfi_tf.workdir import Workdir, load_machine


class Answer(NamedTuple):
  """One method's answer on `K` held-out data sets, and its cost.

  Attributes:
    method: a label, e.g. `alfi` or `npe_flow`.
    mean, std: `[K, d]` raw-unit estimate and marginal uncertainty.
    log_prob: `[K]` log-density of the true parameters under the method's answer, or None where
      it has no density (scored with the Gaussian of `mean`, `std` instead).
    training_simulations: simulated observations spent on training (once, for every data set).
    simulations_per_inference: simulated observations spent on each data set.
    training_seconds: training wall time on this machine (0 for ABC).
    inference_seconds: wall time per data set, measured over the whole batch.
  """

  method: str
  mean: np.ndarray
  std: np.ndarray
  log_prob: Optional[np.ndarray]
  training_simulations: int
  simulations_per_inference: int
  training_seconds: float
  inference_seconds: float


def held_out_problems(simulator: Simulator, num_problems: int, num_obs: int,
                      seed: int) -> data_lib.Problems:
  """The test stream of `seed`: the same problems `evaluate` draws for a run with that seed."""
  return data_lib.generate_problems(simulator, num_problems, num_obs, seed, data_lib.TEST_STREAM)


def alfi_answer(workdir: str, test: data_lib.Problems, seed: int, num_steps: int = 15,
                num_starts: Optional[int] = None) -> Answer:
  """A trained ALFI workdir's answer (its final proposal's density where it has one), pooled over
  `num_starts` runs per data set (None: the machine's `answer_starts`)."""
  run = Workdir(workdir)
  machine_config, train_config = run.read_config()
  machine = load_machine(workdir)
  num_starts = resolve_starts(num_starts, machine_config.answer_starts)
  inferrer = Inferrer(machine, num_steps=num_steps)
  start = time.monotonic()
  result = inferrer(test.observations, seed=seed, num_starts=num_starts)
  seconds = time.monotonic() - start
  log_prob = None
  if result.psi is not None and machine.proposal.has_density:
    log_prob = machine.answer_log_prob(tf.constant(test.theta), tf.constant(result.psi),
                                       num_steps).numpy()
  summary = run.read_summary()
  return Answer(
      "alfi", result.mean, result.std, log_prob,
      budgets.alfi_training_simulations(machine_config, train_config,
                                        summary.get("steps", 0))["total"],
      budgets.alfi_inference_simulations(machine_config, num_steps, num_starts),
      summary.get("train_seconds", math.nan), seconds / len(test.theta))


def npe_answer(workdir: str, test: data_lib.Problems, seed: int,
               num_samples: int = 1000) -> Answer:
  """A trained NPE workdir's answer: posterior moments (from `num_samples` draws for a flow)."""
  estimator = load_npe(workdir)
  start = time.monotonic()
  posterior = estimator.posterior(test.observations, num_samples=num_samples, seed=seed)
  seconds = time.monotonic() - start
  log_prob = estimator.log_prob(tf.constant(test.theta), tf.constant(test.observations)).numpy()
  summary = read_summary(workdir)
  return Answer(f"npe_{estimator.config.density}", posterior.mean, posterior.std, log_prob,
                summary["training_simulations"], 0, summary["training_seconds"],
                seconds / len(test.theta))


def abc_answer(simulator: Simulator, config: ABCConfig, test: data_lib.Problems, seed: int,
               summary_fn: Optional[SummaryFn] = None, label: str = "abc") -> Answer:
  """Rejection ABC's answer at `config`'s per-data-set budget."""
  start = time.monotonic()
  result = RejectionABC(simulator, config, summary_fn)(test.observations, seed)
  seconds = time.monotonic() - start
  return Answer(label, result.mean, result.std, None, 0,
                result.simulated_observations // len(test.theta), 0.0, seconds / len(test.theta))


def score(answer: Answer, theta: np.ndarray, references: Dict[str, np.ndarray],
          names) -> Dict[str, Any]:
  """The comparison's figures for `answer` on problems `theta [K, d]`.

  RMSE per parameter and divided by the exact posterior mean's (else the reference estimator's,
  else, for a simulator with neither, the prior mean's: the estimate that ignores the data),
  coverage of the central 68% / 95% intervals of `N(mean, std^2)`, the mean negative log-density of
  the true parameters (`nll_source` says whose density), and, where the exact posterior's std is
  known, the mean KL divergence of the answer's marginals from the exact posterior's (both as
  Gaussians, as `evaluate` reports it).
  Data sets where the method gave no answer (NaN) count in `failed` and are left out.
  """
  answered = np.all(np.isfinite(answer.mean) & np.isfinite(answer.std), axis=1)
  mean, std, truth = answer.mean[answered], answer.std[answered], theta[answered]
  reference = next((name for name in ("posterior_mean", "mle") if name in references),
                   "prior_mean")
  # The prior mean estimated by the problems' own parameters, which are prior draws.
  baseline = references.get(reference, np.broadcast_to(theta.mean(axis=0), theta.shape))
  rmse = metrics.rmse(mean, truth)
  report: Dict[str, Any] = {
      "method": answer.method,
      "failed": int((~answered).sum()),
      "rmse": dict(zip(names, rmse.tolist())),
      "reference": reference,
      "rmse_ratio": dict(zip(names, (rmse / metrics.rmse(baseline[answered], truth)).tolist())),
      "coverage": {level: dict(zip(names, value.tolist()))
                   for level, value in metrics.interval_coverage(mean, std, truth).items()},
      "nll": float(np.mean(-answer.log_prob[answered]) if answer.log_prob is not None
                   else np.sum(metrics.gaussian_nll(mean, std, truth))),
      "nll_source": "own density" if answer.log_prob is not None else "Gaussian(mean, std)",
      "training_simulations": answer.training_simulations,
      "simulations_per_inference": answer.simulations_per_inference,
      "training_seconds": answer.training_seconds,
      "inference_seconds": answer.inference_seconds,
  }
  if "posterior_std" in references:
    kl = metrics.gaussian_kl(mean, std, references["posterior_mean"][answered],
                             references["posterior_std"][answered])
    report["marginal_kl_to_posterior"] = dict(zip(names, kl.tolist()))
  return report
