r"""Meta-trains an ALFI machine.

  python -m experiments.train --flagfile=experiments/configs/poisson.cfg --workdir=runs/poisson

Re-running the same command resumes from the last checkpoint; a workdir holding a run with other
settings is refused.

Data-parallel training: `--strategy=mirrored` uses every GPU of the host (on a CPU-only host, the
`--cpu_devices` logical CPUs); `--strategy=multi_worker` runs one process per host, each started
with the same command and its own `TF_CONFIG` (see `alfi_tf/training/distribute.py` and the README).
"""

from absl import app, flags, logging

from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.simulators import available_simulators
from alfi_tf.training import Trainer, distribute, set_global_seed
from experiments import cli
from experiments.config_flags import config_from_flags, define_flags_for

define_flags_for(MachineConfig, {"simulator": "simulator name"})
define_flags_for(TrainConfig)
flags.DEFINE_string("workdir", None, "run directory (config, checkpoints, summaries); in a "
                    "multi-worker run, a path every worker can read (shared filesystem)")
flags.DEFINE_bool("jit_compile", False, "compile the training step with XLA (TF-native simulators)")
flags.DEFINE_integer("log_every", 100, "steps between progress lines")
flags.DEFINE_enum("strategy", "default", distribute.STRATEGIES,
                  "tf.distribute strategy: one device, all GPUs of this host, or several hosts "
                  "configured by TF_CONFIG")
flags.DEFINE_integer("cpu_devices", 0, "split the CPU into this many logical devices (with "
                     "--strategy=mirrored on a host without GPUs; 0 leaves it whole)")
flags.DEFINE_integer("data_workers", 0, "processes generating a numpy simulator's problems "
                     "(0: in-process)")
flags.DEFINE_string("data_dir", None, "where --data_source=disk stores the meta-training set "
                    "(default WORKDIR/data); reused by runs with the same data settings")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  del argv   # checked by cli.run
  if FLAGS.simulator not in available_simulators():
    raise app.UsageError(f"unknown --simulator={FLAGS.simulator!r}; valid names are: "
                         f"{', '.join(available_simulators())}")
  if FLAGS.log_every <= 0:
    raise app.UsageError(f"--log_every must be positive, got {FLAGS.log_every}")
  for name in ("cpu_devices", "data_workers"):
    if FLAGS[name].value < 0:
      raise app.UsageError(f"--{name} must be >= 0, got {FLAGS[name].value}")
  if FLAGS.data_dir and FLAGS.data_source != "disk":
    raise app.UsageError(f"--data_dir applies to --data_source=disk, not {FLAGS.data_source}")
  if FLAGS.cpu_devices and FLAGS.strategy != "mirrored":
    raise app.UsageError(f"--cpu_devices applies to --strategy=mirrored, not {FLAGS.strategy}")
  machine_config = config_from_flags(MachineConfig)
  train_config = config_from_flags(TrainConfig)
  if FLAGS.cpu_devices:
    distribute.configure_cpu_devices(FLAGS.cpu_devices)
  strategy = distribute.make_strategy(FLAGS.strategy)
  set_global_seed(train_config.seed)   # the initial weights derive from the run's seed
  trainer = Trainer(machine_config, train_config, FLAGS.workdir, jit_compile=FLAGS.jit_compile,
                    log_every=FLAGS.log_every, strategy=strategy,
                    data_workers=FLAGS.data_workers, data_dir=FLAGS.data_dir)
  result = trainer.train()
  logging.info("finished: %s", result)
  if trainer.is_chief:
    print(f"trained {result.steps} steps on {trainer.replicas} replica(s) in "
          f"{result.train_seconds:.0f}s; validation RMSE(mu_T): "
          + ", ".join(f"{k}={v:.4f}" for k, v in result.validation_rmse.items()))


if __name__ == "__main__":
  cli.run(main)
