r"""Exports a trained workdir as a SavedModel that needs only TensorFlow.

  python -m experiments.export --workdir=runs/weinberg --export_dir=exports/weinberg

Inspect it with `saved_model_cli show --all --dir exports/weinberg`.
"""

import os

from absl import app, flags

from alfi_tf.config import default_test_horizon
from alfi_tf.serving.export import export_machine
from alfi_tf.training.calibration import warn_if_unfinished
from alfi_tf.workdir import load_machine
from experiments import cli

flags.DEFINE_string("workdir", None, "a trained run directory")
flags.DEFINE_string("export_dir", None, "where to write the SavedModel (must not exist, unless "
                    "--overwrite)")
flags.DEFINE_integer("num_steps", 0, "horizon T of the export (0: max(15, training horizon))")
flags.DEFINE_bool("overwrite", False, "replace an existing --export_dir, which must be an alfi-tf "
                  "export: only the export's own files (saved_model.pb, fingerprint.pb, "
                  "variables/, assets/) are replaced, any other file there is kept")
flags.mark_flags_as_required(["workdir", "export_dir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv   # checked by cli.run
  if FLAGS.num_steps < 0:
    raise app.UsageError(f"--num_steps must be >= 0, got {FLAGS.num_steps}")
  cli.check_output_location("export_dir", FLAGS.export_dir)
  if os.path.exists(FLAGS.export_dir) and not os.path.isdir(FLAGS.export_dir):
    raise app.UsageError(f"--export_dir={FLAGS.export_dir} is a file; expected a directory for "
                         "the export (nothing was overwritten)")
  if os.path.exists(FLAGS.export_dir) and not FLAGS.overwrite:
    raise app.UsageError(f"--export_dir={FLAGS.export_dir} already exists; pass --overwrite to "
                         "replace it")
  machine = load_machine(FLAGS.workdir)
  warn_if_unfinished(FLAGS.workdir)
  num_steps = FLAGS.num_steps or default_test_horizon(machine.config)
  path = export_machine(machine, FLAGS.export_dir, num_steps, overwrite=FLAGS.overwrite)
  print(f"exported {machine.simulator.name} (T={num_steps}) to {path}")


def entry_point() -> None:
  """The installed `alfi-export` command."""
  cli.run(main)


if __name__ == "__main__":
  entry_point()
