r"""Meta-training throughput of the paper configs, with and without XLA.

  python -m benchmarks.train_throughput [--configs=poisson_paper,weinberg_paper] [--steps=200]

For each config: steps/s (median over windows, after warm-up), simulator draws/s, an estimate of
the achieved GFLOP/s (set encoder forward + backward, the dominant cost) next to the CPU's measured
float32 matmul rate, the process's peak resident memory and the time of the first step (tracing,
and XLA compilation). Run it on an otherwise idle machine.
"""

import os
import resource
import statistics
import tempfile
import time
from typing import Iterator, Tuple

from absl import app, flags
import numpy as np
import tensorflow as tf

from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.simulators import normalize_spec
from alfi_tf.training import Trainer, set_global_seed, training_batches
from alfi_tf.training.data import TRAIN_STREAM, generate_problems
from experiments.config_flags import CONFIG_DIR, config_from_values, read_flagfile

flags.DEFINE_list("configs", ["poisson_paper", "weinberg_paper"], "flag files in experiments/configs")
flags.DEFINE_integer("steps", 200, "timed steps per measurement window")
flags.DEFINE_integer("windows", 3, "timed windows (the median is reported)")
flags.DEFINE_integer("warmup", 20, "untimed steps first (tracing, compilation)")
flags.DEFINE_list("jit", ["false"], "XLA settings to measure, e.g. false,true (XLA compilation "
                  "of the unrolled loop takes minutes)")
flags.DEFINE_string("simulator", None, "measure this simulator (a registered name, "
                    "package.module:Attr or path/to/file.py:Attr) in each config's architecture "
                    "instead of the config's own")
FLAGS = flags.FLAGS


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
  """Measured float32 matmul throughput of this machine, a practical peak."""
  a = tf.random.stateless_normal([size, size], seed=[1, 2])
  matmul = tf.function(lambda x: tf.matmul(x, x))
  matmul(a).numpy()
  start = time.perf_counter()
  for _ in range(repeats):
    result = matmul(a)
  result.numpy()
  return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def encoder_gflop_per_step(machine: MachineConfig, train: TrainConfig, observation_dim: int) -> float:
  """FLOPs of the set encoder (two dense layers) per training step, forward plus backward (x3)."""
  per_observation = 2 * (observation_dim * machine.encoder_hidden
                         + machine.encoder_hidden * machine.encoder_out)
  observations = train.batch_size * (machine.num_steps * machine.num_samples
                                     * machine.num_simulated_obs + train.num_obs)
  return 3 * per_observation * observations / 1e9


def paper_configs(name: str) -> Tuple[MachineConfig, TrainConfig]:
  """The configs of `experiments/configs/NAME.cfg`, with a small training set and no validation."""
  values = read_flagfile(os.path.join(CONFIG_DIR, f"{name}.cfg"))
  simulator = {"simulator": normalize_spec(FLAGS.simulator)} if FLAGS.simulator else {}
  machine_config = config_from_values(MachineConfig, values, **simulator)
  train_config = config_from_values(TrainConfig, values, num_problems=max(
      int(values["batch_size"]) * 4, 64), num_validation_problems=16, epochs=10_000,
      data_source="memory", validate_every=10 ** 9, checkpoint_every=10 ** 9)
  return machine_config, train_config


def make_trainer(machine_config: MachineConfig, train_config: TrainConfig, workdir: str,
                 jit: bool) -> Tuple[Trainer, Iterator[Tuple[tf.Tensor, tf.Tensor, tf.Tensor]]]:
  """A Trainer with adapted statistics, and its input pipeline as `Trainer.train` runs it
  (batches `(theta [B, d], observations [B, n, d_x], seed [2], redrawn)`, prefetched ahead of the
  step)."""
  set_global_seed(train_config.seed)
  trainer = Trainer(machine_config, train_config, workdir, jit_compile=jit, log_every=10 ** 9)
  problems = generate_problems(trainer.simulator, train_config.num_problems,
                               train_config.num_obs, train_config.seed, TRAIN_STREAM)
  trainer.machine.adapt(problems.theta, problems.observations)
  return trainer, iter(training_batches(train_config, trainer.simulator, problems=problems))


def measure(name: str, jit: bool) -> dict:
  machine_config, train_config = paper_configs(name)
  with tempfile.TemporaryDirectory() as workdir:
    trainer, batches = make_trainer(machine_config, train_config, workdir, jit)
    start = time.perf_counter()
    float(trainer.train_step(*next(batches)[:3])[0])
    first_step_seconds = time.perf_counter() - start   # tracing, and compilation with XLA
    for _ in range(FLAGS.warmup):
      trainer.train_step(*next(batches)[:3])
    rates = []
    for _ in range(FLAGS.windows):
      start = time.perf_counter()
      for _ in range(FLAGS.steps):
        loss, _, _ = trainer.train_step(*next(batches)[:3])
      float(loss)   # wait for the last step
      rates.append(FLAGS.steps / (time.perf_counter() - start))
  rate = statistics.median(rates)
  draws = (train_config.batch_size * machine_config.num_steps * machine_config.num_samples
           * machine_config.num_simulated_obs)
  observation_dim = trainer.simulator.observation_dim
  return {"config": name, "xla": jit, "first_step_s": first_step_seconds,
          "steps_per_s": rate, "draws_per_s": rate * draws,
          "gflops": rate * encoder_gflop_per_step(machine_config, train_config, observation_dim),
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv):
  del argv
  peak = matmul_gflops()
  rows = []
  for name in FLAGS.configs:
    for jit in FLAGS.jit:
      try:
        rows.append(measure(name, jit.lower() == "true"))
      except tf.errors.OpError as error:   # e.g. an op of the simulator that XLA cannot compile
        rows.append({"config": name, "xla": jit.lower() == "true",
                     "error": str(error).strip().splitlines()[-1][:90]})
  print(f"float32 matmul (2048^2) on this machine: {peak:.1f} GFLOP/s")
  print(f"{'config':<20}{'XLA':>5}{'steps/s':>10}{'draws/s':>12}{'GFLOP/s':>10}{'peak RSS MB':>13}"
        f"{'1st step s':>12}")
  for row in rows:
    if "error" in row:
      print(f"{row['config']:<20}{str(row['xla']):>5}  not compilable: {row['error']}")
      continue
    print(f"{row['config']:<20}{str(row['xla']):>5}{row['steps_per_s']:>10.1f}"
          f"{row['draws_per_s']:>12.3g}{row['gflops']:>10.1f}{row['peak_rss_mb']:>13.0f}"
          f"{row['first_step_s']:>12.1f}")
  print("(one step = proposals, simulations, the unrolled T-step loop, backprop "
        "and Adam; peak RSS is the process maximum so far; the first step includes tracing and, "
        "with XLA, compilation)")


if __name__ == "__main__":
  app.run(main)
