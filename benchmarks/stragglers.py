r"""Stragglers and multi-start: how often single runs end far from the exact posterior, and what
pooling R runs per data set buys (simulators with an exact posterior: Poisson, Gaussian, Weinberg,
linear_gaussian_<d>).

  python -m benchmarks.stragglers --workdir=runs/poisson --num_steps=30 --seeds=0,1,2 --starts=1,8

For each number of starts R and inference seed, on --num_problems held-out problems (the run's
test stream), per parameter: RMSE of mu_t at t = 10, at --report_step and at the horizon, divided
by the exact posterior mean's; the flatness max/min of the RMSE from t = 10 to the horizon; how
many problems are more than 4 posterior standard deviations from the truth at some t >= 10; and
the coverage of the 68% / 95% intervals at --report_step. `--details` adds where the error sits.
"""

from absl import app, flags
import numpy as np

from alfi_tf import Inferrer, load_machine, metrics
from alfi_tf.evaluation.references import reference_estimates
from alfi_tf.training import data as data_lib
from alfi_tf.workdir import Workdir

flags.DEFINE_string("workdir", None, "a trained run")
flags.DEFINE_integer("num_problems", 500, "held-out problems")
flags.DEFINE_integer("num_steps", 30, "inference horizon")
flags.DEFINE_integer("report_step", 15, "the step whose RMSE ratio and coverage are reported")
flags.DEFINE_list("seeds", ["0", "1", "2"], "inference seeds")
flags.DEFINE_list("starts", ["1", "8"], "runs per data set (pooled by alfi_tf.pool_starts)")
flags.DEFINE_bool("details", False, "also print where the error sits (bias and noise by the "
                  "parameter's range, each straggler's trajectory)")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS

FIRST_STEP = 10


def _stragglers(result, theta, posterior_std, parameter: int) -> np.ndarray:
  """`[B]` bool: more than 4 posterior standard deviations from theta* at some t >= FIRST_STEP."""
  return metrics.far_from_truth(result.trajectory_mean, theta, posterior_std,
                                FIRST_STEP)[:, parameter]


def _row(result, theta, posterior_mean, posterior_std, parameter: int) -> str:
  rmse = (metrics.rmse_per_step(result.trajectory_mean, theta)[:, parameter]
          / metrics.rmse(posterior_mean, theta)[parameter])                  # [T], / Bayes
  t = FLAGS.report_step - 1
  coverage = metrics.interval_coverage(result.trajectory_mean[:, t], result.trajectory_std[:, t],
                                       theta)
  return (f"RMSE/Bayes t={FIRST_STEP} {rmse[FIRST_STEP - 1]:.3f} t={t + 1} {rmse[t]:.3f} "
          f"t={len(rmse)} {rmse[-1]:.3f}; flatness {metrics.flatness(rmse, FIRST_STEP):.3f}; "
          f">4 posterior std at t>={FIRST_STEP}: "
          f"{int(np.sum(_stragglers(result, theta, posterior_std, parameter)))}; "
          f"coverage {coverage['0.68'][parameter]:.3f} / {coverage['0.95'][parameter]:.3f}")


def _details(result, theta, posterior_mean, posterior_std, parameter: int) -> None:
  """Where the error sits: the error relative to the exact posterior mean, in posterior standard
  deviations, per sixth of the parameter's range (RMS and mean: noise and bias), and each
  straggler's trajectory."""
  steps = result.trajectory_mean[:, :, parameter]                                    # [B, T]
  z = (steps - posterior_mean[:, np.newaxis, parameter]) / posterior_std[:, np.newaxis, parameter]
  truth, t = theta[:, parameter], FLAGS.report_step
  edges = np.linspace(truth.min(), truth.max(), 7)
  for low, high in zip(edges[:-1], edges[1:]):
    rows = (truth >= low) & (truth <= high)
    print(f"  theta* in [{low:.3g}, {high:.3g}] ({rows.sum()} problems), error / posterior std at "
          f"t={t}: RMS {np.sqrt(np.mean(z[rows, t - 1] ** 2)):.2f}, mean {z[rows, t - 1].mean():.2f}")
  shown = sorted({0, 4, FIRST_STEP - 1, t - 1, steps.shape[1] - 1})
  for problem in np.flatnonzero(_stragglers(result, theta, posterior_std, parameter)):
    print(f"  straggler theta*={truth[problem]:.4g} posterior mean "
          f"{posterior_mean[problem, parameter]:.4g} std {posterior_std[problem, parameter]:.3g} "
          f"start {result.initial_mean[problem, parameter]:.3g}: error / posterior std at "
          f"t={[s + 1 for s in shown]}: "
          f"[{', '.join(f'{value:.1f}' for value in z[problem, shown])}]")


def main(argv):
  del argv
  machine = load_machine(FLAGS.workdir)
  _, train_config = Workdir(FLAGS.workdir).read_config()
  test = data_lib.generate_problems(machine.simulator, FLAGS.num_problems, train_config.num_obs,
                                    train_config.seed, data_lib.TEST_STREAM)
  references = reference_estimates(machine.simulator, test.observations)
  if "posterior_std" not in references:
    raise app.UsageError(f"simulator {machine.simulator.spec!r} has no exact posterior std")
  inferrer = Inferrer(machine, num_steps=FLAGS.num_steps, batch_size=FLAGS.num_problems)
  for starts in map(int, FLAGS.starts):
    for seed in map(int, FLAGS.seeds):
      result = inferrer(test.observations, seed=seed, num_starts=starts)
      for index, name in enumerate(machine.simulator.parameter_names):
        print(f"R={starts} seed={seed} {name}: " + _row(
            result, test.theta, references["posterior_mean"], references["posterior_std"], index))
        if FLAGS.details:
          _details(result, test.theta, references["posterior_mean"], references["posterior_std"],
                   index)


if __name__ == "__main__":
  app.run(main)
