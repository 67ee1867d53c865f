r"""Regenerates the results table of docs/results.md from trained and evaluated workdirs.

  python -m experiments.report --runs=runs --output=docs/results.md

Every evaluated training workdir under --runs (`config.json` and `metrics.json`) becomes one block
of rows; other directories with a `metrics.json` (NPE, ABC runs) are skipped with a note. Only the
text between the `results:begin` / `results:end` markers of --output is replaced; the prose around
it is kept. A file without the markers gets them appended only if it is markdown (`.md`).
"""

import os

from absl import app, flags

from alfi_tf.evaluation.report import (find_evaluated_runs, render_results,
                                       replace_marked_section)
from experiments import cli

flags.DEFINE_string("runs", "runs", "directory whose subdirectories are evaluated workdirs")
flags.DEFINE_string("output", "docs/results.md", "markdown file with results:begin/end markers")
FLAGS = flags.FLAGS


def main(argv):
  del argv   # checked by cli.run
  if not os.path.isdir(FLAGS.runs):
    raise app.UsageError(f"--runs={FLAGS.runs} is not a directory")
  cli.check_output_location("output", FLAGS.output)
  workdirs, skipped = find_evaluated_runs(FLAGS.runs)
  for path in skipped:
    print(f"skipped {path}: it has metrics.json but no config.json, so it is not an evaluated "
          "ALFI training run (an NPE or ABC run?)")
  if not workdirs:
    raise app.UsageError(f"no evaluated workdir (with config.json and metrics.json) under "
                         f"{FLAGS.runs}")
  table = render_results(workdirs)
  try:
    replace_marked_section(FLAGS.output, table)
  except ValueError as error:   # names the file; the flag tells where it came from
    raise app.UsageError(f"--output: {error}") from None
  print(f"wrote the results of {len(workdirs)} runs into {FLAGS.output}")


def entry_point() -> None:
  """The installed `alfi-report` command."""
  cli.run(main)


if __name__ == "__main__":
  entry_point()
