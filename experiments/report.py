r"""Regenerates the results table of docs/results.md from trained and evaluated workdirs.

  python -m experiments.report --runs=runs --output=docs/results.md

Every subdirectory of --runs holding `metrics.json` becomes one block of rows. Only the text between
the `results:begin` / `results:end` markers of --output is replaced; the prose around it is kept.
"""

import os

from absl import app, flags

from alfi_tf.evaluation.report import render_results, replace_marked_section
from experiments import cli

flags.DEFINE_string("runs", "runs", "directory whose subdirectories are evaluated workdirs")
flags.DEFINE_string("output", "docs/results.md", "markdown file with results:begin/end markers")
FLAGS = flags.FLAGS


def main(argv):
  del argv   # checked by cli.run
  if not os.path.isdir(FLAGS.runs):
    raise app.UsageError(f"--runs={FLAGS.runs} is not a directory")
  workdirs = sorted(os.path.join(FLAGS.runs, name) for name in os.listdir(FLAGS.runs)
                    if os.path.exists(os.path.join(FLAGS.runs, name, "metrics.json")))
  if not workdirs:
    raise app.UsageError(f"no evaluated workdir (with metrics.json) under {FLAGS.runs}")
  replace_marked_section(FLAGS.output, render_results(workdirs))
  print(f"wrote the results of {len(workdirs)} runs into {FLAGS.output}")


def entry_point() -> None:
  """The installed `alfi-report` command."""
  cli.run(main)


if __name__ == "__main__":
  entry_point()
