r"""How much of the MLE's precision a set summary keeps on Poisson, by observation transform.

  python -m benchmarks.transform_efficiency

A machine that compares simulated and real sets through the set mean of `f(x)` ends, at best, at
the moment estimator that matches it: the log-rate `theta` with `E_theta[f(x)] = mean f(x_obs)`.
Its asymptotic variance is `Var_theta(f(x)) / (n g'(theta)^2)`, `g(theta) = E_theta[f(x)]`,
against the MLE's `1 / (n e^theta)`, so its RMSE relative to the MLE's is

    r_f(theta) = sqrt(e^theta Var_theta(f(x)) / g'(theta)^2),

1 for the identity (the set mean of the counts is sufficient), above 1 for any other `f`. Prints
`r_f` at a few log-rates and the ratio of the RMSEs over the prior `U(low, high)` of the log-rate,
`sqrt(E[r_f^2 / e^theta] / E[1 / e^theta])`: low rates, whose posteriors are widest, dominate it.
Exact sums over the Poisson pmf; no simulation, no training.
"""

import math

from absl import app, flags
import numpy as np

flags.DEFINE_float("low", 0.2, "lower end of the log-rate prior")
flags.DEFINE_float("high", 7.0, "upper end of the log-rate prior")
flags.DEFINE_integer("grid", 200, "log-rates on which the prior average is computed")
FLAGS = flags.FLAGS

TRANSFORMS = {"identity": lambda k: k, "log1p": np.log1p, "sqrt": np.sqrt}
#: Log-rates printed one by one.
SHOWN = (0.3, 1.0, 2.0, 3.0, 5.0, 7.0)


def moments(log_rate: float, transform) -> tuple:
  """`(E[f(x)], Var(f(x)))` for `x ~ Poisson(e^log_rate)`, summed over all but ~1e-12 of the pmf."""
  rate = math.exp(log_rate)
  counts = np.arange(int(rate + 40.0 * math.sqrt(rate) + 50.0), dtype=np.float64)
  log_factorial = np.cumsum(np.log(np.maximum(counts, 1.0)))
  pmf = np.exp(counts * log_rate - rate - log_factorial)
  values = transform(counts)
  mean = float(np.sum(pmf * values))
  return mean, float(np.sum(pmf * (values - mean) ** 2))


def relative_rmse(log_rate: float, transform, step: float = 1e-4) -> float:
  """`r_f(log_rate)`: the moment estimator's RMSE over the MLE's, as n grows."""
  slope = (moments(log_rate + step, transform)[0] - moments(log_rate - step, transform)[0]) / (
      2.0 * step)
  return math.sqrt(math.exp(log_rate) * moments(log_rate, transform)[1] / slope**2)


def prior_rmse_ratio(transform, low: float, high: float, grid: int) -> float:
  """The moment estimator's RMSE over the MLE's, averaged over the uniform log-rate prior."""
  log_rates = np.linspace(low, high, grid)
  mle_variance = np.exp(-log_rates)
  ratios = np.array([relative_rmse(t, transform) for t in log_rates])
  return float(math.sqrt(np.mean(ratios**2 * mle_variance) / np.mean(mle_variance)))


def main(argv):
  del argv
  if not (math.isfinite(FLAGS.low) and math.isfinite(FLAGS.high) and FLAGS.low < FLAGS.high):
    raise app.UsageError(f"--low and --high: finite with low < high, got {FLAGS.low}, {FLAGS.high}")
  print(f"set mean of f(x): RMSE / MLE's at log-rate {', '.join(map(str, SHOWN))}; over the "
        f"prior U({FLAGS.low:g}, {FLAGS.high:g})")
  for name, transform in TRANSFORMS.items():
    at = ", ".join(f"{relative_rmse(t, transform):.3f}" for t in SHOWN)
    print(f"{name:>9}: {at}; prior {prior_rmse_ratio(transform, FLAGS.low, FLAGS.high, FLAGS.grid):.3f}")


if __name__ == "__main__":
  app.run(main)
