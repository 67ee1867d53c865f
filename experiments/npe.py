r"""Trains the NPE baseline and scores it on held-out problems against the exact references.

  python -m experiments.npe --simulator=poisson --observation_transform=log1p \
      --num_problems=20000 --workdir=runs/npe_poisson

Writes the estimator (`npe.keras`), `training_summary.json` and `metrics.json` (the same figures
`benchmarks.comparison` tabulates for ALFI and ABC) into the workdir and prints a summary line.
A workdir that already holds a trained estimator is scored again, not retrained; one whose training
was interrupted (killed, Ctrl-C) goes on from its last finished epoch, exactly as an uninterrupted
run would have, when run again with the same flags.
"""

import os

from absl import flags
from absl import logging

from alfi_tf.baselines.npe import NPEConfig
from alfi_tf.baselines.npe_training import VERBOSITIES, is_trained, load_npe, train_npe
from alfi_tf.checks import require_file_destination, require_memory
from alfi_tf.config import SEED_RANGE, to_dict
from alfi_tf.evaluation import comparison
from alfi_tf.evaluation.references import reference_estimates
from alfi_tf.simulators import get_simulator
from alfi_tf.training import data as data_lib
from alfi_tf.workdir import METRICS_FILE, write_json_atomically
from experiments import cli
from experiments.config_flags import config_from_flags, define_flags_for

define_flags_for(NPEConfig, {
    "simulator": "registered name or import spec of the simulator",
    "density": "NPE's density: gaussian (full covariance) or flow (neural spline flow)",
    "num_problems": "training pairs (theta*, X) from the prior: the budget is num_problems * n",
    "num_obs": "observations per data set, n",
    "epochs": "the most training epochs (early stopping on a held-out tenth)",
})
flags.DEFINE_string("workdir", None, "directory for the trained estimator and its scores")
cli.define_simulator_timeout()
flags.declare_key_flag("simulator_timeout")   # defined in cli, listed by --helpshort
flags.DEFINE_integer("test_problems", 500, "held-out problems to score on")
flags.DEFINE_integer("test_seed", 12345, "seed of the held-out problems (their test stream)")
# Checked before training: the seed is only used to score the trained estimator.
flags.register_validator("test_seed", lambda seed: SEED_RANGE[0] <= seed <= SEED_RANGE[1],
                         message=f"--test_seed must be an integer in [{SEED_RANGE[0]}, "
                                 f"{SEED_RANGE[1]}] (an int32 seed)")
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity: 0 silent, 1 progress bar, 2 per epoch")
# Checked before anything runs, also for a trained workdir (which is scored, not trained).
flags.register_validator("verbose", lambda verbose: verbose in VERBOSITIES,
                         message=f"--verbose must be one of {VERBOSITIES} (0 silent, 1 progress "
                                 "bar, 2 one line per epoch)")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  del argv   # checked by cli.run
  config = config_from_flags(NPEConfig)
  if FLAGS.test_problems < 1:
    raise ValueError(f"--test_problems must be positive, got {FLAGS.test_problems}")
  _require_memory_for_test_problems(config)
  require_file_destination(os.path.join(FLAGS.workdir, METRICS_FILE), "the estimator's scores")
  if not is_trained(FLAGS.workdir):
    train_npe(config, FLAGS.workdir, verbose=FLAGS.verbose)
  trained = load_npe(FLAGS.workdir)   # its own configuration, should the flags differ
  _warn_if_settings_differ(config, trained.config)
  simulator, config = trained.simulator, trained.config
  test = comparison.held_out_problems(simulator, FLAGS.test_problems, config.num_obs,
                                      FLAGS.test_seed)
  report = comparison.score(comparison.npe_answer(FLAGS.workdir, test, FLAGS.test_seed + 1),
                            test.theta, reference_estimates(simulator, test.observations),
                            simulator.parameter_names)
  write_json_atomically(os.path.join(FLAGS.workdir, METRICS_FILE), report)
  ratios = ", ".join(f"{name} {value:.3f}" for name, value in report["rmse_ratio"].items())
  coverage = ", ".join(f"{level}: " + " ".join(f"{v:.2f}" for v in values.values())
                       for level, values in report["coverage"].items())
  print(f"NPE ({config.density}, {report['training_simulations']:.3g} training simulations): "
        f"RMSE / {report['reference']} {ratios}; coverage {coverage}; NLL {report['nll']:.3f}")


def _warn_if_settings_differ(flag_config: NPEConfig, trained_config: NPEConfig) -> None:
  """Warns when the flags ask for another estimator than the workdir's trained one, which is
  scored as it is (it is never retrained)."""
  flag_settings, trained_settings = to_dict(flag_config), to_dict(trained_config)
  differing = [f"--{name}={trained_settings[name]} (not {value})"
               for name, value in flag_settings.items() if trained_settings[name] != value]
  if differing:
    logging.warning("%s holds an estimator trained with other settings, scored as it is: %s; "
                    "choose a new --workdir to train one with the flags' settings",
                    FLAGS.workdir, ", ".join(differing))


def _require_memory_for_test_problems(config: NPEConfig) -> None:
  """Refuses, before training, held-out problems that cannot fit in memory (they are drawn only
  to score the trained estimator)."""
  require_memory(
      2 * data_lib.problems_bytes(get_simulator(config.simulator), FLAGS.test_problems,
                                  config.num_obs),
      f"--test_problems={FLAGS.test_problems} held-out problems of {config.num_obs} observations",
      "use fewer --test_problems")


def entry_point() -> None:
  """The installed `alfi-npe` command."""
  cli.run(main)


if __name__ == "__main__":
  entry_point()
