r"""Meta-trains an ALFI machine.

  python -m experiments.train --flagfile=experiments/configs/poisson.cfg --workdir=runs/poisson

Re-running the same command resumes from the last checkpoint; a workdir holding a run with other
settings is refused.

Data-parallel training: `--strategy=mirrored` uses every GPU of the host (on a CPU-only host, the
`--cpu_devices` logical CPUs); `--strategy=multi_worker` runs one process per host, each started
with the same command and its own `TF_CONFIG` (see `alfi_tf/training/distribute.py` and the README).
"""

import dataclasses
import os
import shlex
from typing import List

from absl import app, flags, logging

from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.simulators import ExternalSimulator, available_simulators, normalize_spec
from alfi_tf.simulators.command import split_command
from alfi_tf.training import Trainer, distribute, set_global_seed
from experiments import cli
from experiments.config_flags import config_from_flags, define_flags_for

define_flags_for(MachineConfig, {
    "simulator": "the simulator: a registered name, package.module:Attr or path/to/file.py:Attr "
                 "(a Simulator subclass or a function returning one)",
    "answer_starts": "runs per data set that the machine's answers pool by default (alfi-infer, "
                     "alfi-evaluate), with std factors calibrated for that many",
    "answer_simulated_obs": "observations simulated per sample when the machine answers "
                            "(inference, evaluation, export; 0: --num_simulated_obs); training "
                            "simulates --num_simulated_obs"})
define_flags_for(TrainConfig)
flags.DEFINE_string("workdir", None, "run directory (config, checkpoints, summaries); in a "
                    "multi-worker run, a path every worker can read (shared filesystem)")
flags.DEFINE_bool("jit_compile", False, "compile the training step with XLA (TF-native simulators)")
flags.DEFINE_integer("log_every", 100, "steps between progress lines")
flags.DEFINE_float("worker_timeout", 900.0, "with --strategy=multi_worker: seconds every task of "
                   "TF_CONFIG's cluster has to start and answer before the run stops, naming the "
                   "missing ones")
flags.register_validator("worker_timeout", lambda seconds: 0 < seconds < float("inf"),
                         message="--worker_timeout must be a positive number of seconds")
flags.DEFINE_enum("strategy", "default", distribute.STRATEGIES,
                  "tf.distribute strategy: one device, all GPUs of this host, or several hosts "
                  "configured by TF_CONFIG")
flags.DEFINE_integer("cpu_devices", 0, "split the CPU into this many logical devices (with "
                     "--strategy=mirrored on a host without GPUs; 0 leaves it whole)")
flags.DEFINE_integer("data_workers", 0, "processes generating a numpy simulator's problems "
                     "(0: in-process)")
flags.DEFINE_string("data_dir", None, "where --data_source=disk stores the meta-training set "
                    "(default WORKDIR/data); reused by runs with the same data settings")
# An external program as the simulator (--simulator=command), with the infer binary's CSV protocol.
flags.DEFINE_string("simulator_command", None, "with --simulator=command: the executable (and its "
                    "leading arguments) run once per batch of parameter vectors; see "
                    "alfi_tf/simulators/command.py for the protocol")
flags.DEFINE_list("parameter_names", None, "with --simulator=command: the parameters' names")
flags.DEFINE_list("prior_low", None, "with --simulator=command: the uniform prior's lower bounds")
flags.DEFINE_list("prior_high", None, "with --simulator=command: the uniform prior's upper bounds")
flags.DEFINE_integer("observation_dim", None, "with --simulator=command: numbers per observation")
cli.define_simulator_timeout()
flags.declare_key_flag("simulator_timeout")   # defined in cli, listed by --helpshort
flags.DEFINE_integer("simulator_retries", 2, "with --simulator=command: further attempts after a "
                     "failed call", lower_bound=0)
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS
COMMAND_FLAGS = ("simulator_command", "parameter_names", "prior_low", "prior_high",
                 "observation_dim")


def _simulator_spec() -> str:
  """The spec recorded for --simulator and, for an external program, its flags."""
  if FLAGS.simulator != "command":
    given = [f"--{name}" for name in COMMAND_FLAGS + ("simulator_retries",)
             if FLAGS[name].present]
    if given:
      verb = "applies" if len(given) == 1 else "apply"
      raise app.UsageError(f"{', '.join(given)} {verb} to --simulator=command only")
    if ":" not in FLAGS.simulator and FLAGS.simulator not in available_simulators():
      raise app.UsageError(f"unknown --simulator={FLAGS.simulator!r}; valid names are: "
                           f"{', '.join(available_simulators())} (or command, "
                           "package.module:Attr, path/to/file.py:Attr)")
    # A file is recorded with its absolute path: evaluate, export and infer find it from anywhere.
    return normalize_spec(FLAGS.simulator)
  missing = [f"--{name}" for name in COMMAND_FLAGS if FLAGS[name].value is None]
  if missing:
    raise app.UsageError(f"--simulator=command needs {', '.join(missing)}")
  bounds = {name: _floats(name) for name in ("prior_low", "prior_high")}
  return ExternalSimulator(_absolute_command(FLAGS.simulator_command), FLAGS.parameter_names,
                           bounds["prior_low"],
                           bounds["prior_high"], FLAGS.observation_dim, FLAGS.simulator_timeout,
                           FLAGS.simulator_retries).spec


def _absolute_command(command: str) -> str:
  """The command with relative paths made absolute: recorded in the run, it must work from any
  directory (`alfi-evaluate` elsewhere). That is the executable's path when it has a directory
  part (a bare name is looked up on PATH), and every argument naming an existing file or
  directory here (`python3 sims/run.py`)."""
  try:
    argv = split_command(command)
  except ValueError as error:
    raise app.UsageError(f"--simulator_command: {error}") from None
  return shlex.join(
      os.path.abspath(word) if _is_relative_path(word, executable=index == 0) else word
      for index, word in enumerate(argv))


def _is_relative_path(word: str, executable: bool) -> bool:
  if os.path.isabs(word) or word.startswith("-") or not os.path.exists(word):
    return False
  return os.sep in word or not executable


def _floats(name: str) -> List[float]:
  try:
    return [float(value) for value in FLAGS[name].value]
  except ValueError:
    raise app.UsageError(f"--{name} must be comma-separated numbers, got "
                         f"{','.join(FLAGS[name].value)!r}") from None


def main(argv):
  del argv   # checked by cli.run
  if FLAGS.log_every <= 0:
    raise app.UsageError(f"--log_every must be positive, got {FLAGS.log_every}")
  for name in ("cpu_devices", "data_workers"):
    if FLAGS[name].value < 0:
      raise app.UsageError(f"--{name} must be >= 0, got {FLAGS[name].value}")
  if FLAGS.data_dir and FLAGS.data_source != "disk":
    raise app.UsageError(f"--data_dir applies to --data_source=disk, not {FLAGS.data_source}")
  if FLAGS.cpu_devices and FLAGS.strategy != "mirrored":
    raise app.UsageError(f"--cpu_devices applies to --strategy=mirrored, not {FLAGS.strategy}")
  machine_config = dataclasses.replace(config_from_flags(MachineConfig),
                                       simulator=_simulator_spec())
  train_config = config_from_flags(TrainConfig)
  if FLAGS.cpu_devices:
    distribute.configure_cpu_devices(FLAGS.cpu_devices)
  strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.worker_timeout)
  set_global_seed(train_config.seed)   # the initial weights derive from the run's seed
  trainer = Trainer(machine_config, train_config, FLAGS.workdir, jit_compile=FLAGS.jit_compile,
                    log_every=FLAGS.log_every, strategy=strategy,
                    data_workers=FLAGS.data_workers, data_dir=FLAGS.data_dir,
                    progress_bar=False)   # progress lines through absl logging instead
  result = trainer.train()
  logging.info("finished: %s", result)
  if trainer.is_chief:
    print(f"trained {result.steps} steps on {trainer.replicas} replica(s) in "
          f"{result.train_seconds:.0f}s; validation RMSE(mu_T): "
          + ", ".join(f"{k}={v:.4f}" for k, v in result.validation_rmse.items()))


def entry_point() -> None:
  """The installed `alfi-train` command."""
  cli.run(main)


if __name__ == "__main__":
  entry_point()
