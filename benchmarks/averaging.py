r"""Averaging the machine's last iterates: what the mean of mu_t over the last K steps buys.

  python -m benchmarks.averaging --workdirs=runs/poisson,runs/weinberg --windows=1,3,5,10

Once the machine has settled, mu_t moves around the posterior mean with each step's Monte-Carlo
noise (M parameter draws, N simulated observations each), so averaging the last K iterates
(Polyak-Ruppert) should cut the noise at no simulation cost, but not a bias. For each run, seed
and K, on --num_problems held-out problems (the run's test stream), per parameter: the RMSE of
the average of mu_{T-K+1..T} divided by the reference's (the exact posterior mean where the
simulator has one, else its reference estimator), and the coverage of the 68% / 95% intervals
that step T's (calibrated) std puts around the average.
"""

from absl import app, flags
import numpy as np

from alfi_tf import Inferrer, load_machine
from alfi_tf.evaluation.references import reference_estimates
from alfi_tf.training import data as data_lib
from alfi_tf.workdir import Workdir

flags.DEFINE_list("workdirs", None, "trained runs")
flags.DEFINE_integer("num_problems", 500, "held-out problems")
flags.DEFINE_integer("num_steps", 15, "inference horizon T")
flags.DEFINE_list("seeds", ["0", "1", "2"], "inference seeds")
flags.DEFINE_list("windows", ["1", "3", "5", "10"], "the K last steps averaged (1: mu_T itself)")
flags.mark_flag_as_required("workdirs")
FLAGS = flags.FLAGS


def averaged_rows(trajectory_mean: np.ndarray, final_std: np.ndarray, theta: np.ndarray,
                  reference_rmse: np.ndarray, windows) -> list:
  """Per window K: (K, RMSE ratio per parameter [d], coverage at 68% and 95%) of the mean of
  `trajectory_mean [B, T, d]` over its last K steps, with `final_std [B, d]` as its std."""
  rows = []
  for window in windows:
    average = trajectory_mean[:, -window:].mean(axis=1)
    ratio = np.sqrt(np.mean(np.square(average - theta), axis=0)) / reference_rmse
    z = np.abs(average - theta) / final_std
    rows.append((window, ratio, float(np.mean(z < 1.0)), float(np.mean(z < 1.959964))))
  return rows


def main(argv):
  del argv
  windows = [int(window) for window in FLAGS.windows]
  if min(windows) < 1 or max(windows) > FLAGS.num_steps:
    raise app.UsageError(f"--windows must lie in [1, --num_steps={FLAGS.num_steps}]")
  for workdir in FLAGS.workdirs:
    machine = load_machine(workdir)
    _, train_config = Workdir(workdir).read_config()
    test = data_lib.generate_problems(machine.simulator, FLAGS.num_problems, train_config.num_obs,
                                      train_config.seed, data_lib.TEST_STREAM)
    references = reference_estimates(machine.simulator, test.observations)
    name = "posterior_mean" if "posterior_mean" in references else "mle"
    reference_rmse = np.sqrt(np.mean(np.square(references[name] - test.theta), axis=0))
    inferrer = Inferrer(machine, num_steps=FLAGS.num_steps, batch_size=FLAGS.num_problems)
    for seed in map(int, FLAGS.seeds):
      result = inferrer(test.observations, seed=seed)
      for window, ratio, cover68, cover95 in averaged_rows(
          result.trajectory_mean, result.std, test.theta, reference_rmse, windows):
        print(f"{workdir} seed={seed} K={window}: RMSE / {name} "
              f"[{', '.join(f'{value:.3f}' for value in ratio)}], coverage of step {FLAGS.num_steps}'s "
              f"std {cover68:.2f} / {cover95:.2f}")


if __name__ == "__main__":
  app.run(main)
