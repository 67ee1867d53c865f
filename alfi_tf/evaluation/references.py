"""Exact references where the likelihood is tractable: the grid posterior and the MLE.

The posterior mean is the Bayes-optimal estimator under squared error: no method can beat its RMSE on
average over problems drawn from the prior, so `RMSE(ALFI) / RMSE(posterior mean)` is the figure of
merit (spec §5).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

from alfi_tf.checks import require_memory
from alfi_tf.simulators import NumpySimulator, Simulator

# Log-likelihood drop below the maximum beyond which a grid point carries no posterior mass
# (e^-40 relative weight): the fine grid only has to cover the region above it.
_NEGLIGIBLE_LOG_MASS = 40.0
#: Most grid points (`points^d`) of one pass: 250x the default 4001 in 1-D, 25x (1000^2) the
#: default 201^2 in 2-D; the moments have long converged, and every problem evaluates the
#: likelihood on the grid twice, so a larger grid only costs hours.
MAX_GRID_SIZE = 10 ** 6
# Bytes per (grid point, observation value) of a likelihood evaluation: the float32 terms and
# the few intermediates TensorFlow keeps alive while summing them.
_BYTES_PER_LIKELIHOOD_TERM = 16


class GridPosterior(NamedTuple):
  """Posterior summaries for `K` problems.

  Attributes:
    mean: `[K, d]` posterior means.
    std: `[K, d]` posterior standard deviations.
    mode: `[K, d]` grid point of highest likelihood (the MLE, the prior being uniform).
    derived_mean: posterior means of the simulator's derived parameters, each `[K]`.
    derived_mode: those derived parameters evaluated at `mode`, each `[K]`.
  """

  mean: np.ndarray
  std: np.ndarray
  mode: np.ndarray
  derived_mean: Dict[str, np.ndarray]
  derived_mode: Dict[str, np.ndarray]


def supports_grid_posterior(simulator: Simulator) -> bool:
  """A grid posterior needs a likelihood, a uniform box prior and at most two parameters."""
  return (simulator.has_likelihood and simulator.parameter_bounds is not None
          and simulator.parameter_dim <= 2)


def default_grid_points(simulator: Simulator) -> int:
  """Grid points per parameter when none are asked for: 4001 for one parameter, 201 for two."""
  return 4001 if simulator.parameter_dim == 1 else 201


def require_grid_fits(simulator: Simulator, grid_points: Optional[int], num_obs: int) -> None:
  """Refuses, before anything is computed, a grid posterior too large to evaluate.

  Args:
    simulator: the run's simulator; nothing is checked when it needs no grid posterior.
    grid_points: grid points per parameter (None: the default).
    num_obs: observations per problem.

  Raises:
    ValueError: naming `grid_points`, when the grid exceeds `MAX_GRID_SIZE` points or its
      likelihood evaluation would not fit in the memory available.
  """
  if grid_points is None or simulator.has_posterior_mean or not supports_grid_posterior(simulator):
    return
  size = grid_points ** simulator.parameter_dim
  default = default_grid_points(simulator)
  if size > MAX_GRID_SIZE:
    largest = round(MAX_GRID_SIZE ** (1 / simulator.parameter_dim))
    raise ValueError(f"grid_points={grid_points} makes a grid of {size:.3g} points for the "
                     f"{simulator.parameter_dim} parameter(s) of {simulator.name!r}, more than "
                     f"{MAX_GRID_SIZE:.0e}; use at most {largest} (default {default})")
  require_memory(
      _BYTES_PER_LIKELIHOOD_TERM * size * num_obs * simulator.observation_dim,
      f"the exact posterior on a grid of grid_points={grid_points} per parameter ({size} points) "
      f"x {num_obs} observations", f"use fewer grid_points (default {default})")


def _grid(low: np.ndarray, high: np.ndarray, points: int) -> np.ndarray:
  """A regular grid over the box `[low, high]`: `[points^d, d]`."""
  axes = [np.linspace(lo, hi, points) for lo, hi in zip(low, high)]
  return np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=-1)


class GridPosteriorEvaluator:
  """Computes the exact posterior under the uniform box prior on a zoomed grid.

  A coarse grid over the whole box locates the region holding the posterior mass; a fine grid over
  that region (one coarse cell of margin on each side) gives the moments. Likelihoods at n=500 are far
  narrower than the prior, so a single uniform grid would need millions of points for the same error.

  Args:
    simulator: a simulator with `log_likelihood` and a box prior, `d <= 2`.
    points_per_dim: grid points per parameter for each of the two passes.
  """

  def __init__(self, simulator: Simulator, points_per_dim: Optional[int] = None):
    if not supports_grid_posterior(simulator):
      raise ValueError(f"simulator {simulator.name!r} does not support a grid posterior (needs a "
                       "likelihood, a box prior and at most 2 parameters)")
    self.simulator = simulator
    self.points = points_per_dim or default_grid_points(simulator)
    self.low, self.high = (np.asarray(b, np.float64) for b in simulator.parameter_bounds)
    # A numpy simulator's hooks are numpy code too: called eagerly, they cannot be traced.
    self._log_likelihood = (simulator.log_likelihood if isinstance(simulator, NumpySimulator)
                            else tf.function(simulator.log_likelihood, reduce_retracing=True))

  def _evaluate(self, grid: np.ndarray, observations: np.ndarray) -> np.ndarray:
    """`grid [k, d]` for one problem's `observations [n, d_x]` -> log-likelihoods `[k]`."""
    values = _call_hook(self.simulator, "log_likelihood", (1, len(grid)), self._log_likelihood,
                        tf.constant(grid[np.newaxis], tf.float32),
                        tf.constant(observations[np.newaxis], tf.float32))
    return values[0].astype(np.float64)

  def posterior(self, observations: np.ndarray) -> GridPosterior:
    """Posterior summaries for `observations [K, n, d_x]`."""
    require_grid_fits(self.simulator, self.points, observations.shape[1])
    coarse = _grid(self.low, self.high, self.points)
    cell = (self.high - self.low) / (self.points - 1)
    results = []
    for problem in observations:
      log_lik = self._evaluate(coarse, problem)
      massive = coarse[log_lik >= log_lik.max() - _NEGLIGIBLE_LOG_MASS]
      low = np.maximum(massive.min(axis=0) - cell, self.low)
      high = np.minimum(massive.max(axis=0) + cell, self.high)
      fine = _grid(low, high, self.points)
      log_lik = self._evaluate(fine, problem)
      weights = np.exp(log_lik - log_lik.max())
      weights /= weights.sum()
      mean = weights @ fine
      std = np.sqrt(np.maximum(weights @ np.square(fine - mean), 0.0))
      derived = {name: (float(weights @ value.numpy()),
                        float(value.numpy()[np.argmax(log_lik)]))
                 for name, value in self.simulator.derived_parameters(
                     tf.constant(fine, tf.float32)).items()}
      results.append((mean, std, fine[np.argmax(log_lik)], derived))
    names = results[0][3].keys()
    return GridPosterior(
        mean=np.stack([r[0] for r in results]).astype(np.float32),
        std=np.stack([r[1] for r in results]).astype(np.float32),
        mode=np.stack([r[2] for r in results]).astype(np.float32),
        derived_mean={n: np.array([r[3][n][0] for r in results], np.float32) for n in names},
        derived_mode={n: np.array([r[3][n][1] for r in results], np.float32) for n in names})


def reference_estimates(simulator: Simulator, observations: np.ndarray,
                        grid_points: Optional[int] = None) -> Dict[str, np.ndarray]:
  """Every reference estimator available for `simulator`, each `[K, d]`.

  Keys: `mle` (the simulator's closed form or reference estimator, else the grid mode),
  `posterior_mean` (the simulator's exact `posterior_mean`, else the grid posterior's),
  `posterior_std` (the simulator's exact `posterior_std`, else the grid posterior's), and
  `derived/<name>/posterior_mean|mle` for
  derived parameters.
  """
  references: Dict[str, np.ndarray] = {}
  shape = (len(observations), simulator.parameter_dim)
  data = tf.constant(observations, tf.float32)
  if simulator.has_reference_estimator:
    references["mle"] = _call_hook(simulator, "maximum_likelihood", shape,
                                   simulator.maximum_likelihood, data)
  if simulator.has_posterior_mean:
    references["posterior_mean"] = _call_hook(simulator, "posterior_mean", shape,
                                              simulator.posterior_mean, data,
                                              tf.constant([0, 1], tf.int32))
    if simulator.has_posterior_std:
      references["posterior_std"] = _call_hook(simulator, "posterior_std", shape,
                                               simulator.posterior_std, data)
  elif supports_grid_posterior(simulator):
    posterior = GridPosteriorEvaluator(simulator, grid_points).posterior(observations)
    references["posterior_mean"] = posterior.mean
    references["posterior_std"] = posterior.std
    if "mle" not in references:
      references["mle"] = posterior.mode
    for name in posterior.derived_mean:
      references[f"derived/{name}/posterior_mean"] = posterior.derived_mean[name]
      references[f"derived/{name}/mle"] = posterior.derived_mode[name]
  return references


def _call_hook(simulator: Simulator, name: str, shape: Tuple[int, ...], hook: Callable[..., Any],
               *args: tf.Tensor) -> np.ndarray:
  """A reference hook's output (a tensor, or an array from numpy code) as a float32 array of
  `shape`.

  Raises:
    ValueError: the hook raised, or returned anything but real numbers of `shape`: one line
      naming the simulator and the hook, not a traceback from inside the evaluation.
  """
  where = f"simulator {simulator.spec!r}: its {name} hook"
  try:
    values = np.asarray(hook(*args))
  except Exception as error:   # the user's code: any failure is named, whatever it is
    raise ValueError(f"{where} raised {type(error).__name__}: {error}") from error
  if values.dtype.kind not in "fiu" or values.shape != shape:
    raise ValueError(f"{where} must return real numbers of shape {list(shape)}, got "
                     f"{values.dtype} of shape {list(values.shape)}")
  return values.astype(np.float32)
