r"""Evaluates a trained workdir on held-out problems.

  python -m experiments.evaluate --workdir=runs/poisson

Writes `metrics.json` and PNG figures into the workdir and prints a table.
"""

from absl import app, flags

from alfi_tf.evaluation.evaluator import EvaluationConfig, evaluate, format_table
from experiments.config_flags import config_from_flags, define_flags_for

define_flags_for(EvaluationConfig, {
    "num_problems": "held-out problems",
    "num_steps": "test horizon T (0: max(15, training horizon))",
    "seed": "seed of the held-out problems (default: the run's seed, test stream)",
})
flags.DEFINE_string("workdir", None, "a trained run directory")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    config = config_from_flags(EvaluationConfig)
  except ValueError as error:
    raise app.UsageError(str(error))
  try:
    report = evaluate(FLAGS.workdir, config)
  except FileNotFoundError as error:
    raise app.UsageError(str(error))
  print(format_table(report))


if __name__ == "__main__":
  app.run(main)
