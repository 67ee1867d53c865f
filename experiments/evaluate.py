r"""Evaluates a trained workdir on held-out problems.

  python -m experiments.evaluate --workdir=runs/poisson

Writes `metrics.json` and PNG figures into the workdir and prints a table.
"""

import os

from absl import flags

from alfi_tf.evaluation.evaluator import EvaluationConfig, evaluate, format_table
from alfi_tf.training.calibration import warn_if_unfinished
from experiments import cli
from experiments.config_flags import config_from_flags, define_flags_for

define_flags_for(EvaluationConfig, {
    "num_problems": "held-out problems",
    "num_steps": "test horizon T (0: max(15, training horizon))",
    "seed": "seed of the held-out problems (default: the run's seed, test stream)",
    "num_starts": "runs per held-out data set from independent starts, pooled (R times the "
                  "simulations; default: the machine's answer_starts)",
    "grid_points": "grid points per parameter of the exact posterior (default 4001 for one "
                   "parameter, 201 for two; at most 1e6 grid points in all)",
})
flags.DEFINE_string("workdir", None, "a trained run directory")
cli.define_simulator_timeout()
flags.declare_key_flag("simulator_timeout")   # defined in cli, listed by --helpshort
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  del argv   # checked by cli.run
  config = config_from_flags(EvaluationConfig)
  if os.path.isdir(FLAGS.workdir):   # metrics.json and the figures are written into it
    cli.check_writable_directory("workdir", FLAGS.workdir, FLAGS.workdir)
  warn_if_unfinished(FLAGS.workdir)
  report = evaluate(FLAGS.workdir, config)
  print(format_table(report))


def entry_point() -> None:
  """The installed `alfi-evaluate` command."""
  cli.run(main)


if __name__ == "__main__":
  entry_point()
