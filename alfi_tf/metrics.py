"""Accuracy, calibration and predictive metrics of the machine's proposals (spec §5)."""

from __future__ import annotations

import math
import statistics
from typing import Dict, Sequence

import numpy as np


def rmse(estimates: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """Root mean squared error over the first (problem) axis: `[K, ...]` vs `[K, ...]` -> `[...]`."""
  return np.sqrt(np.mean(np.square(np.asarray(estimates) - np.asarray(truth)), axis=0))


def rmse_per_step(means: np.ndarray, theta: np.ndarray) -> np.ndarray:
  """RMSE of `means [K, T, d]` against `theta [K, d]` at every step: `[T, d]`."""
  return rmse(means, np.asarray(theta)[:, np.newaxis])


def far_from_truth(means: np.ndarray, theta: np.ndarray, posterior_std: np.ndarray,
                   first_step: int, threshold: float = 4.0) -> np.ndarray:
  """Stragglers: whether each problem's answer `means [K, T, d]` is more than `threshold`
  posterior standard deviations (`posterior_std [K, d]`) from `theta [K, d]` at some step
  `t >= first_step` (1-based) -> bool `[K, d]`. A well-settled answer's error is the exact
  posterior mean's own (about N(0, 1) in these units) plus its noise: 4 is rare (6e-5)."""
  if not 1 <= first_step <= np.shape(means)[1]:
    raise ValueError(f"first_step must lie in [1, {np.shape(means)[1]}], got {first_step}")
  error = np.abs(np.asarray(means)[:, first_step - 1:] - np.asarray(theta)[:, np.newaxis])
  return np.any(error > threshold * np.asarray(posterior_std)[:, np.newaxis], axis=1)


def flatness(rmse_steps: np.ndarray, first_step: int) -> np.ndarray:
  """How much the RMSE per step `[T, d]` moves from step `first_step` (1-based) on: the ratio of
  its largest to its smallest value, `[d]` (1: flat)."""
  late = np.asarray(rmse_steps)[first_step - 1:]
  return late.max(axis=0) / late.min(axis=0)


def central_interval_z(level: float) -> float:
  """Half-width, in standard deviations, of the central `level` interval of a Gaussian."""
  return statistics.NormalDist().inv_cdf(0.5 + level / 2)


def interval_coverage(mean: np.ndarray, std: np.ndarray, theta: np.ndarray,
                      levels: Sequence[float] = (0.68, 0.95)) -> Dict[str, np.ndarray]:
  """Fraction of problems whose `theta` lies in the central interval of `N(mean, std^2)`.

  Args:
    mean, std: `[K, ..., d]` (e.g. `[K, T, d]` for every step of a trajectory).
    theta: `[K, d]`, or broadcastable to `mean`.
    levels: nominal coverages.

  Returns:
    `{"0.68": [..., d], ...}` empirical coverage (averaged over the K problems).
  """
  z = np.abs(np.asarray(theta) - mean) / np.maximum(std, 1e-12)
  return {f"{level:.2f}": np.mean(z <= central_interval_z(level), axis=0)
          for level in levels}


def gaussian_nll(mean: np.ndarray, std: np.ndarray, theta: np.ndarray) -> np.ndarray:
  """Mean negative log-density of `theta` under `N(mean, std^2)` per parameter: `[d]`."""
  std = np.maximum(std, 1e-12)
  z = (np.asarray(theta) - mean) / std
  return np.mean(0.5 * z * z + np.log(std) + 0.5 * np.log(2.0 * np.pi), axis=0)


def gaussian_kl(mean: np.ndarray, std: np.ndarray, reference_mean: np.ndarray,
                reference_std: np.ndarray) -> np.ndarray:
  """Mean `KL(N(mean, std^2) || N(reference_mean, reference_std^2))` over the problems, per
  parameter: `[K, d]` each -> `[d]`."""
  std, reference_std = np.maximum(std, 1e-12), np.maximum(reference_std, 1e-12)
  ratio = np.square(std / reference_std)
  shift = np.square((np.asarray(mean) - reference_mean) / reference_std)
  return np.mean(0.5 * (ratio + shift - 1.0 - np.log(ratio)), axis=0)


def ks_statistic(sample_a: np.ndarray, sample_b: np.ndarray) -> float:
  """Two-sample Kolmogorov-Smirnov statistic `sup |F_a - F_b|` of two 1-D samples."""
  a, b = np.sort(np.ravel(sample_a)), np.sort(np.ravel(sample_b))
  points = np.concatenate([a, b])
  cdf_a = np.searchsorted(a, points, side="right") / a.size
  cdf_b = np.searchsorted(b, points, side="right") / b.size
  return float(np.max(np.abs(cdf_a - cdf_b)))


def probability_integral_transform(mean: np.ndarray, std: np.ndarray,
                                   theta: np.ndarray) -> np.ndarray:
  """Simulation-based calibration's normalised ranks: `u = Phi((theta - mean) / std)`, `[K, d]`.

  With `theta* ~ prior` and the answer `N(mean, std^2)` the exact posterior, `u ~ U(0, 1)` per
  parameter (Talts et al. 2018; this is the continuous limit of SBC's rank of `theta*` among
  posterior draws, for the Gaussian answer the machine reports). Too many `u` near 0 and 1: the
  answer is overconfident; piled in the middle: underconfident; tilted: biased.
  """
  z = (np.asarray(theta, np.float64) - mean) / np.maximum(std, 1e-12)
  return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def uniformity_distance(values: np.ndarray) -> np.ndarray:
  """Kolmogorov-Smirnov distance `sup_u |ECDF(u) - u|` of each column of `values [K, d]` from
  `U(0, 1)`: `[d]`."""
  ordered = np.sort(np.asarray(values), axis=0)
  count = ordered.shape[0]
  above = np.arange(1, count + 1)[:, np.newaxis] / count - ordered
  below = ordered - np.arange(count)[:, np.newaxis] / count
  return np.maximum(above.max(axis=0), below.max(axis=0))


def dkw_band(count: int, level: float = 0.95) -> float:
  """Half-width of the simultaneous `level` confidence band of an ECDF of `count` draws (the
  Dvoretzky-Kiefer-Wolfowitz inequality, Massart's constant): a calibrated answer's
  `uniformity_distance` stays within it with probability at least `level`."""
  return math.sqrt(math.log(2.0 / (1.0 - level)) / (2.0 * count))
