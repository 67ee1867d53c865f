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

from alfi_tf import Inferrer, load_machine, metrics
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
    reference_rmse = metrics.rmse(references[name], test.theta)
    inferrer = Inferrer(machine, num_steps=FLAGS.num_steps, batch_size=FLAGS.num_problems)
    for seed in map(int, FLAGS.seeds):
      result = inferrer(test.observations, seed=seed)
      for window in windows:
        average = metrics.average_of_last_steps(result.trajectory_mean, window)
        ratio = metrics.rmse(average, test.theta) / reference_rmse
        coverage = metrics.interval_coverage(average, result.std, test.theta)
        print(f"{workdir} seed={seed} K={window}: RMSE / {name} "
              f"[{', '.join(f'{value:.3f}' for value in ratio)}], coverage of step "
              f"{FLAGS.num_steps}'s std {np.mean(coverage['0.68']):.2f} / "
              f"{np.mean(coverage['0.95']):.2f}")


if __name__ == "__main__":
  app.run(main)
