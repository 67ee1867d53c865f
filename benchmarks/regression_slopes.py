r"""Linear regression's error by the steepest slope: where ALFI's error against the MLE sits.

  python -m benchmarks.regression_slopes --workdir=runs/linear_regression

On --num_problems fresh problems from the simulator's prior (seeded by --seed; inference seed
--seed + 1, horizon --num_steps), prints per band of the steepest slope angle the number of
problems and, per parameter, RMSE(mu_T) divided by the MLE's RMSE on the same problems.
"""

from absl import app, flags
import numpy as np
import tensorflow as tf

from alfi_tf import Inferrer, load_machine

flags.DEFINE_string("workdir", None, "a linear_regression run")
flags.DEFINE_integer("num_problems", 500, "fresh problems")
flags.DEFINE_integer("num_obs", 500, "observations per problem")
flags.DEFINE_integer("num_steps", 15, "inference horizon")
flags.DEFINE_integer("seed", 123, "problem seed (inference uses seed + 1)")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS

#: Bands of the steepest slope angle (slopes tan(angle) 1.6, 3.6 and 10 at the inner edges).
BANDS = ((0.0, 1.0), (1.0, 1.3), (1.3, 1.47), (1.47, np.pi / 2 + 1e-6))


def main(argv):
  del argv
  machine = load_machine(FLAGS.workdir)
  simulator = machine.simulator
  if simulator.name != "linear_regression":
    raise app.UsageError(f"--workdir: a linear_regression run is needed, got {simulator.name!r}")
  theta, observations = (t.numpy() for t in simulator.sample_problems(
      FLAGS.num_problems, FLAGS.num_obs, tf.constant([FLAGS.seed, 7])))
  result = Inferrer(machine, num_steps=FLAGS.num_steps)(observations, seed=FLAGS.seed + 1)
  mle = simulator.maximum_likelihood(tf.constant(observations)).numpy()
  steepest = theta[:, :simulator.num_covariates].max(axis=1)
  print(f"steepest angle band: problems, RMSE(mu_T) / RMSE(MLE) for "
        f"{', '.join(simulator.parameter_names)}")
  for low, high in BANDS:
    band = (steepest >= low) & (steepest < high)
    ratio = (np.sqrt(np.mean((result.mean[band] - theta[band]) ** 2, axis=0))
             / np.sqrt(np.mean((mle[band] - theta[band]) ** 2, axis=0)))
    print(f"{low:.2f}-{min(high, np.pi / 2):.2f}: {band.sum()}, "
          f"{', '.join(f'{r:.1f}' for r in ratio)}")


if __name__ == "__main__":
  app.run(main)
