"""Evaluation figures, written atomically as PNG files (matplotlib's Agg backend: no display
needed)."""

from __future__ import annotations

import functools
from typing import Callable, Dict, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402  (matplotlib's own image library)

from alfi_tf.workdir import atomic_output  # noqa: E402

#: The `Software` text chunk of every figure written here, which marks it as replaceable.
PNG_SOFTWARE = "alfi-tf"

_REFERENCE_STYLES = {"mle": ("MLE", "tab:orange", "--"),
                     "posterior_mean": ("exact posterior mean", "tab:green", ":"),
                     "prior_mean": ("prior mean", "tab:gray", "-.")}


def _save(figure: plt.Figure, path: str, plot: Callable[..., None]) -> None:
  """Writes `figure`, drawn by the function `plot`, to `path` atomically (the plot's
  `_closes_its_figures` closes it). The PNG's `Title` names `plot` (`is_own_figure`)."""
  figure.tight_layout()
  with atomic_output(path, suffix=".png") as temporary:
    figure.savefig(temporary, format="png", dpi=110,
                   metadata={"Software": PNG_SOFTWARE, "Title": plot.__name__})


def _closes_its_figures(plot: Callable[..., None]) -> Callable[..., None]:
  """Closes the figures `plot` opened even when drawing them fails: a long-lived process (a
  notebook evaluating many runs) would otherwise keep every figure that failed, and matplotlib
  warns past 20 open ones. Figures the caller had open are left alone."""
  @functools.wraps(plot)
  def drawn(*args, **kwargs) -> None:
    already_open = set(plt.get_fignums())
    try:
      plot(*args, **kwargs)
    finally:
      for number in set(plt.get_fignums()) - already_open:
        plt.close(number)
  return drawn


def is_own_figure(path: str, plot: Optional[Callable[..., None]] = None) -> bool:
  """Whether `path` is a PNG these functions wrote (they stamp its `Software` text chunk) and,
  given `plot`, one that `plot` drew (its `Title`): `alfi-infer --plot` may replace an earlier
  trajectory, not an evaluation's figures."""
  try:
    with PIL.Image.open(path) as image:
      return (image.format == "PNG" and image.info.get("Software") == PNG_SOFTWARE
              and (plot is None or image.info.get("Title") == plot.__name__))
  except (OSError, ValueError):
    return False


def _axes_row(count: int, width: float = 4.2, height: float = 3.4):
  figure, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
  return figure, axes[0]


@_closes_its_figures
def plot_rmse_per_step(path: str, names: Sequence[str], rmse_steps: np.ndarray,
                       references: Dict[str, np.ndarray], training_horizon: int) -> None:
  """RMSE of `mu_t` per parameter against `t = 1..T`, with the references as horizontal lines.

  Args:
    rmse_steps: `[T, d]`.
    references: reference name -> RMSE `[d]`.
  """
  figure, axes = _axes_row(len(names))
  steps = np.arange(1, rmse_steps.shape[0] + 1)
  for index, (axis, name) in enumerate(zip(axes, names)):
    axis.plot(steps, rmse_steps[:, index], "o-", color="tab:blue", label="ALFI")
    for key, values in references.items():
      label, color, style = _REFERENCE_STYLES[key]
      axis.axhline(values[index], color=color, linestyle=style, label=label)
    axis.axvline(training_horizon, color="k", alpha=0.3, label="training horizon")
    axis.set_yscale("log")
    axis.set_xlabel("step t")
    axis.set_ylabel(f"RMSE of {name}")
    axis.set_title(name)
  axes[0].legend(fontsize=8)
  _save(figure, path, plot_rmse_per_step)


@_closes_its_figures
def plot_error_boxes(path: str, names: Sequence[str], errors: Dict[str, np.ndarray]) -> None:
  """Box plots of estimation errors per parameter for each estimator (`errors[label] [K, d]`)."""
  figure, axes = _axes_row(len(names))
  labels = list(errors)
  for index, (axis, name) in enumerate(zip(axes, names)):
    axis.boxplot([errors[label][:, index] for label in labels], showfliers=False)
    axis.set_xticks(range(1, len(labels) + 1), labels, rotation=20)
    axis.axhline(0.0, color="k", alpha=0.3)
    axis.set_ylabel(f"estimate - true {name}")
  _save(figure, path, plot_error_boxes)


@_closes_its_figures
def plot_predictive(path: str, real: np.ndarray, simulated: np.ndarray,
                    titles: Sequence[str], dimension_names: Optional[Sequence[str]] = None) -> None:
  """Histograms of real observations against observations simulated at `mu_T`.

  Args:
    real, simulated: `[P, n, d_x]` for P problems; the first few observation dimensions are shown.
  """
  dims = min(real.shape[-1], 3)
  figure, axes = plt.subplots(dims, real.shape[0], figsize=(3.6 * real.shape[0], 2.8 * dims),
                              squeeze=False)
  for problem in range(real.shape[0]):
    for dim in range(dims):
      axis = axes[dim, problem]
      values = np.concatenate([real[problem, :, dim], simulated[problem, :, dim]])
      bins = np.histogram_bin_edges(values, bins=30)
      axis.hist(real[problem, :, dim], bins=bins, alpha=0.5, density=True, label="observed")
      axis.hist(simulated[problem, :, dim], bins=bins, alpha=0.5, density=True,
                label="simulated at mu_T")
      if dim == 0:
        axis.set_title(titles[problem], fontsize=8)
      if dimension_names:
        axis.set_xlabel(dimension_names[dim])
  axes[0, 0].legend(fontsize=7)
  _save(figure, path, plot_predictive)


@_closes_its_figures
def plot_robustness(path: str, names: Sequence[str], initial: np.ndarray, means: np.ndarray,
                    theta: np.ndarray) -> None:
  """Trajectories of `mu_t` from many starts for a few problems.

  Args:
    initial: `[P, S, d]` starts `mu_0`; means: `[P, S, T, d]`; theta: `[P, d]` truths.
  """
  figure, axes = _axes_row(len(names))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for index, (axis, name) in enumerate(zip(axes, names)):
    for problem in range(means.shape[0]):
      color = colors[problem % len(colors)]
      path_values = np.concatenate([initial[problem, :, np.newaxis, index],
                                    means[problem, :, :, index]], axis=1)
      axis.plot(np.arange(path_values.shape[1]), path_values.T, color=color, alpha=0.35, lw=0.8)
      axis.axhline(theta[problem, index], color=color, linestyle="--")
    axis.set_xlabel("step t")
    axis.set_ylabel(name)
    axis.set_title(f"{name}: {means.shape[1]} random starts per problem", fontsize=9)
  _save(figure, path, plot_robustness)


@_closes_its_figures
def plot_trajectory(path: str, names: Sequence[str], means: np.ndarray, stds: np.ndarray) -> None:
  """The proposal's mean +- std over the steps for each data set.

  Args:
    means, stds: `[B, T, d]`.
  """
  figure, axes = _axes_row(len(names))
  steps = np.arange(1, means.shape[1] + 1)
  for index, (axis, name) in enumerate(zip(axes, names)):
    for dataset in range(means.shape[0]):
      line, = axis.plot(steps, means[dataset, :, index], "o-", ms=3, label=f"data set {dataset}")
      axis.fill_between(steps, means[dataset, :, index] - stds[dataset, :, index],
                        means[dataset, :, index] + stds[dataset, :, index],
                        color=line.get_color(), alpha=0.2)
    axis.set_xlabel("step t")
    axis.set_ylabel(name)
  if means.shape[0] <= 8:
    axes[0].legend(fontsize=7)
  _save(figure, path, plot_trajectory)


@_closes_its_figures
def plot_calibration(path: str, names: Sequence[str], pit: np.ndarray, band: float,
                     bins: int = 20) -> None:
  """Simulation-based calibration per parameter: the histogram of the normalised ranks `pit [K, d]`
  (with the 99% range of a bin's count under uniformity) above the ECDF's difference from the
  uniform CDF (with the simultaneous band of half-width `band`)."""
  figure, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.4), squeeze=False)
  count = pit.shape[0]
  expected = count / bins
  spread = 2.576 * np.sqrt(expected * (1.0 - 1.0 / bins))   # binomial, normal approximation
  grid = np.linspace(0.0, 1.0, 201)
  for index, name in enumerate(names):
    top, bottom = axes[0, index], axes[1, index]
    top.hist(pit[:, index], bins=bins, range=(0.0, 1.0), color="tab:blue", alpha=0.8)
    top.axhspan(max(expected - spread, 0.0), expected + spread, color="tab:gray", alpha=0.3,
                label="99% if calibrated")
    top.set_title(name)
    top.set_xlabel("normalised rank of the true value")
    ecdf = np.searchsorted(np.sort(pit[:, index]), grid, side="right") / count
    bottom.plot(grid, ecdf - grid, color="tab:blue")
    bottom.fill_between(grid, -band, band, color="tab:gray", alpha=0.3, label="95% band")
    bottom.axhline(0.0, color="k", alpha=0.3)
    bottom.set_xlabel("normalised rank u")
    bottom.set_ylabel("ECDF(u) - u")
  axes[0, 0].legend(fontsize=8)
  axes[1, 0].legend(fontsize=8)
  _save(figure, path, plot_calibration)
