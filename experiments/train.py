r"""Meta-trains an ALFI machine.

  python -m experiments.train --flagfile=experiments/configs/poisson.cfg --workdir=runs/poisson

Re-running the same command resumes from the last checkpoint; a workdir holding a run with other
settings is refused.
"""

from absl import app, flags, logging

from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.simulators import available_simulators
from alfi_tf.training import Trainer
from experiments.config_flags import config_from_flags, define_flags_for

define_flags_for(MachineConfig, {"simulator": "simulator name"})
define_flags_for(TrainConfig)
flags.DEFINE_string("workdir", None, "run directory (config, checkpoints, summaries)")
flags.DEFINE_bool("jit_compile", False, "compile the training step with XLA (TF-native simulators)")
flags.DEFINE_integer("log_every", 100, "steps between progress lines")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.simulator not in available_simulators():
    raise app.UsageError(f"unknown --simulator={FLAGS.simulator!r}; valid names are: "
                         f"{', '.join(available_simulators())}")
  if FLAGS.log_every <= 0:
    raise app.UsageError(f"--log_every must be positive, got {FLAGS.log_every}")
  try:
    machine_config = config_from_flags(MachineConfig)
    train_config = config_from_flags(TrainConfig)
    trainer = Trainer(machine_config, train_config, FLAGS.workdir, jit_compile=FLAGS.jit_compile,
                      log_every=FLAGS.log_every)
  except ValueError as error:
    raise app.UsageError(str(error))
  result = trainer.train()
  logging.info("finished: %s", result)
  print(f"trained {result.steps} steps in {result.train_seconds:.0f}s; validation RMSE(mu_T): "
        + ", ".join(f"{k}={v:.4f}" for k, v in result.validation_rmse.items()))


if __name__ == "__main__":
  app.run(main)
