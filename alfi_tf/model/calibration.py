"""Recalibrating the answer's location and standard deviations on fresh simulated problems.

The machine is meta-trained to move its proposal towards `theta*`; nothing in the meta-loss makes
the proposal's width a calibrated posterior width at every step, and after the training horizon
`sigma_t` keeps shrinking while the error does not (`docs/results.md`). Nor is its mean free of a
systematic lag: a finite network settles a fraction of a posterior standard deviation to one side
on most problems (Poisson: 0.1-0.3 posterior std below the exact posterior mean at every rate).
A shift and a factor per step and parameter, fitted after training on problems drawn from the
prior that no weight was fitted to, move and rescale the answer without touching the proposals
the machine simulates:

    mu'_{t,j} = mu_{t,j} + b_{t,j} sigma_{t,j},        sigma'_{t,j} = s_{t,j} sigma_{t,j}.

`b_{t,j}` is the median over the problems of the standardised error `(theta*_j - mu_{t,j}) /
sigma_{t,j}`: averaged over the prior, `theta*` scatters about the exact posterior mean with mean
zero, so what remains is the machine's own offset, in units of its width (the median, so that a
few unsettled problems do not pull it). `s_{t,j}` then minimises the Kolmogorov distance between
the empirical distribution of the shifted standardised errors `|theta*_j - mu'_{t,j}| /
(s sigma_{t,j})` over the problems and the half-normal `|N(0, 1)|`:

    D(s) = sup_u | P_K(|z| / s <= u) - (2 Phi(u) - 1) |,

which is the worst coverage error of the central intervals `mu +- u s sigma` over all levels `u` at
once, so a heavy tail of unsettled problems does not buy the 68% level at the cost of the 95% one
(as matching the mean squared error would). The factor is one number per step and parameter: it
corrects the machine's average over- or under-confidence, not the width of one particular answer
(pooling several starts per data set does that: `inference.pool_starts`).

Each run's factors make its own std cover its own error; an answer pooled over `R` runs adds the
runs' spread to their (already covering) std and so over-covers. A machine that answers with `R`
runs by default (`MachineConfig.answer_starts`) therefore also has pooled factors, fitted the
same way on its pooled answers (`PooledStdScales`), which `pool_starts` applies to `R`-run pools.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import numpy as np
import tensorflow as tf

#: The factors searched, first on a coarse log grid from 1e-4 to 1e6, 10% apart (past its
#: training horizon a machine's sigma_t can shrink by orders of magnitude)...
COARSE_GRID = np.geomspace(1e-4, 1e6, 242)
#: ... then within one coarse step of the best, 0.5% apart (a coverage change of a fraction of a
#: point at any level).
FINE_GRID = np.geomspace(1 / 1.1, 1.1, 39)


def half_normal_kolmogorov_distance(abs_z: np.ndarray, scales: np.ndarray) -> np.ndarray:
  """`D(s)` for every candidate `s`.

  Args:
    abs_z: `[K]` standardised absolute errors `|theta* - mu| / sigma` (inf where `sigma` is 0).
    scales: `[G]` candidate factors.

  Returns:
    `[G]` distances in [0, 1].
  """
  ordered = np.sort(np.asarray(abs_z, np.float64))
  count = ordered.size
  # The half-normal CDF 2 Phi(u) - 1 = erf(u / sqrt 2) at every u = |z| / s: [G, K].
  cdf = tf.math.erf(ordered[np.newaxis, :] / (scales[:, np.newaxis] * np.sqrt(2.0))).numpy()
  above = np.arange(1, count + 1) / count - cdf
  below = cdf - np.arange(count) / count
  return np.maximum(above.max(axis=1), below.max(axis=1))


def fit_std_scales(mean: np.ndarray, std: np.ndarray, theta: np.ndarray) -> np.ndarray:
  """The factors `s_{t,j}` of the module docstring.

  Args:
    mean, std: `[K, T, d]` the answers `mu_t`, `sigma_t` after steps `t = 1..T` on `K` problems.
    theta: `[K, d]` the problems' true parameters.

  Returns:
    `[T, d]` factors, each the point of least distance on the grids (the smallest on ties).

  Raises:
    ValueError: shapes that do not match, fewer than 2 problems, or non-finite answers.
  """
  mean, std, theta = _checked_answers(mean, std, theta)
  error = np.abs(theta[:, np.newaxis, :] - mean)
  with np.errstate(divide="ignore", invalid="ignore"):
    abs_z = np.where(error == 0, 0.0, error / std)                 # [K, T, d]; inf where std is 0
  _, num_steps, dim = mean.shape
  scales = np.empty((num_steps, dim))
  for t in range(num_steps):
    for j in range(dim):
      scales[t, j] = _least_distance_scale(abs_z[:, t, j])
  return scales.astype(np.float32)


def fit_mean_shifts(mean: np.ndarray, std: np.ndarray, theta: np.ndarray) -> np.ndarray:
  """The shifts `b_{t,j}` of the module docstring.

  Args: as `fit_std_scales`'s.

  Returns:
    `[T, d]` shifts, in units of the answer's std (0 for a step and parameter whose every answer
    has std 0: a point has no width to shift by).

  Raises:
    ValueError: as `fit_std_scales`.
  """
  mean, std, theta = _checked_answers(mean, std, theta)
  with np.errstate(divide="ignore", invalid="ignore"):
    z = np.where(std > 0, (theta[:, np.newaxis, :] - mean) / std, np.nan)     # [K, T, d]
  has_width = np.any(np.isfinite(z), axis=0)
  # The columns of all-NaN are filled before the median, which would warn about them.
  shifts = np.nanmedian(np.where(has_width, z, 0.0), axis=0)
  return np.where(has_width, shifts, 0.0).astype(np.float32)


def _checked_answers(mean, std, theta):
  """`mean`, `std` `[K, T, d]` and `theta` `[K, d]` as float64 arrays, or the ValueError of
  `fit_std_scales`."""
  mean, std, theta = (np.asarray(value, np.float64) for value in (mean, std, theta))
  if mean.ndim != 3 or std.shape != mean.shape or theta.shape != (mean.shape[0], mean.shape[2]):
    raise ValueError(f"expected mean and std [K, T, d] and theta [K, d], got {mean.shape}, "
                     f"{std.shape} and {theta.shape}")
  if mean.shape[0] < 2:
    raise ValueError(f"calibration needs at least 2 problems, got {mean.shape[0]}")
  if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0)):
    raise ValueError("calibration needs finite answers with non-negative std")
  return mean, std, theta


def _least_distance_scale(abs_z: np.ndarray) -> float:
  coarse = COARSE_GRID[np.argmin(half_normal_kolmogorov_distance(abs_z, COARSE_GRID))]
  fine = coarse * FINE_GRID
  return float(fine[np.argmin(half_normal_kolmogorov_distance(abs_z, fine))])


def check_std_scales(scales, parameter_dim: int) -> np.ndarray:
  """`scales` as a float32 `[C, d]` array of positive finite factors, or a ValueError naming what
  is wrong."""
  array = np.asarray(scales, np.float32)
  if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != parameter_dim:
    raise ValueError(f"std scales must have shape [steps >= 1, {parameter_dim}], got {array.shape}")
  if not np.all(np.isfinite(array)) or np.any(array <= 0):
    raise ValueError("std scales must be finite and positive")
  return array


def check_mean_shifts(shifts, parameter_dim: int) -> np.ndarray:
  """`shifts` as a float32 `[C, d]` array of finite numbers, or a ValueError naming what is
  wrong."""
  array = np.asarray(shifts, np.float32)
  if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != parameter_dim:
    raise ValueError(f"mean shifts must have shape [steps >= 1, {parameter_dim}], got "
                     f"{array.shape}")
  if not np.all(np.isfinite(array)):
    raise ValueError("mean shifts must be finite")
  return array


class PooledStdScales(NamedTuple):
  """The factors `scales [C, d]` of the std of answers pooled over `num_starts` runs per data set
  (`R >= 2`), after steps 1..C (later steps use step C's), fitted as `fit_std_scales` does."""

  num_starts: int
  scales: np.ndarray

  def to_json(self) -> Dict[str, Any]:
    """The record `check_pooled_std_scales` reads back."""
    return {"num_starts": self.num_starts, "scales": np.asarray(self.scales).tolist()}


def check_pooled_std_scales(record: Any, parameter_dim: int) -> Optional[PooledStdScales]:
  """`record` (`PooledStdScales.to_json`'s, a `PooledStdScales`, or None: no pooled factors) as
  `PooledStdScales`, or a ValueError naming what is wrong."""
  if record is None:
    return None
  if isinstance(record, PooledStdScales):
    record = record._asdict()
  if not isinstance(record, dict):
    raise ValueError(f"pooled std scales must be an object with num_starts and scales, got "
                     f"{type(record).__name__}")
  num_starts = record.get("num_starts")
  if not isinstance(num_starts, (int, np.integer)) or isinstance(num_starts, bool) or num_starts < 2:
    raise ValueError(f"pooled std scales' num_starts must be an integer >= 2, got {num_starts!r}")
  return PooledStdScales(int(num_starts), check_std_scales(record.get("scales"), parameter_dim))


def recorded_pooled_std_scales(record: Dict[str, Any], answer_starts: int,
                               parameter_dim: int) -> Optional[PooledStdScales]:
  """The pooled factors a calibration record (`calibration.json`) made for a machine answering
  with `answer_starts` runs holds: None for 1 run, else its `pooled_std_scales`, or a ValueError
  where they are missing, damaged or fitted for another number of runs."""
  if answer_starts == 1:
    return None
  pooled = check_pooled_std_scales(record.get("pooled_std_scales"), parameter_dim)
  if pooled is None or pooled.num_starts != answer_starts:
    raise ValueError(f"pooled_std_scales must hold factors fitted for answer_starts="
                     f"{answer_starts}, got {str(record.get('pooled_std_scales'))[:80]}")
  return pooled
