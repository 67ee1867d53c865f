r"""Latency and throughput of `infer` at paper sizes: in-library versus through a SavedModel export.

  python -m benchmarks.inference_latency --repeats=20

Builds a Weinberg machine at the paper's sizes (M=8, N=64, T=15, default networks), *untrained*
(the timing does not depend on the weights' values), with standardisation statistics adapted to a
few generated problems, and times one `infer` call (median of --repeats after --warmup calls):

* `in-library`: `alfi_tf.serving.deploy.DeployedMachine` around an in-process `ExportModule`.
* `export`: the SavedModel written by `export_machine`, loaded with `tf.saved_model.load`, called
  through `signatures["infer"]` (what any TF program would do).
* `in-library XLA` (--jit): the same function compiled with `jit_compile=True`.

for one data set (batch 1) and for --batch data sets per call, n = --num_obs observations each.
Run it on an otherwise idle machine (see BUILD.md).
"""

import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from absl import app, flags, logging
import keras
import numpy as np
import tensorflow as tf

from alfi_tf.config import MachineConfig
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.serving.deploy import DeployedMachine
from alfi_tf.serving.export import ExportModule, export_machine
from alfi_tf.simulators import get_simulator
from alfi_tf.training import data as data_lib

flags.DEFINE_integer("repeats", 10, "timed calls per row (the median is reported)")
flags.DEFINE_integer("warmup", 2, "untimed calls first (tracing, graph optimisation)")
flags.DEFINE_integer("batch", 256, "data sets per call for the throughput rows")
flags.DEFINE_integer("num_obs", 500, "observations per data set")
flags.DEFINE_string("export_dir", None, "where to write the export (default: a temporary "
                    "directory, removed at the end); must not exist")
flags.DEFINE_bool("jit", True, "also time the in-library function compiled with XLA")
flags.DEFINE_integer("threads", 0, "TensorFlow intra- and inter-op threads (0: TF's default)")
FLAGS = flags.FLAGS

NUM_STEPS = 15
PAPER_CONFIG = MachineConfig(simulator="weinberg", num_samples=8, num_simulated_obs=64,
                             num_steps=NUM_STEPS)
#: One timed path: `(observations [B, n, 1], seed) -> final mean [B, d]`.
InferFn = Callable[[np.ndarray, int], np.ndarray]
#: A table row: path, batch, median ms per call (None: the path failed), data sets/s (or why not).
Row = Tuple[str, int, Optional[float], Union[float, str]]


def build_machine() -> InferenceMachine:
  """The paper-size Weinberg machine, untrained, with statistics from 64 generated problems."""
  keras.utils.set_random_seed(0)
  simulator = get_simulator("weinberg")
  machine = InferenceMachine(simulator, PAPER_CONFIG)
  problems = data_lib.generate_problems(simulator, 64, FLAGS.num_obs, seed=0,
                                        stream=data_lib.TRAIN_STREAM)
  machine.adapt(problems.theta, problems.observations)
  return machine


def median_ms(call, repeats: int, warmup: int) -> float:
  for index in range(warmup):
    call(index)
  times = []
  for index in range(repeats):
    start = time.perf_counter()
    call(warmup + index)
    times.append(time.perf_counter() - start)
  return 1000.0 * statistics.median(times)


def check_flags() -> None:
  """Raises `app.UsageError` for flag values the benchmark cannot run with."""
  for name in ("repeats", "batch", "num_obs"):
    if getattr(FLAGS, name) <= 0:
      raise app.UsageError(f"--{name} must be positive, got {getattr(FLAGS, name)}")
  if FLAGS.export_dir and os.path.exists(FLAGS.export_dir):
    raise app.UsageError(f"--export_dir {FLAGS.export_dir} already exists; remove it or pick "
                         "another")
  if FLAGS.warmup < 1:
    raise app.UsageError(f"--warmup must be at least 1 (the first call traces), got {FLAGS.warmup}")


@contextlib.contextmanager
def export_directory() -> Iterator[str]:
  """--export_dir, or a directory in a temporary folder removed on exit."""
  if FLAGS.export_dir:
    yield FLAGS.export_dir
    return
  scratch = tempfile.mkdtemp(prefix="alfi-benchmark-")
  try:
    yield os.path.join(scratch, "weinberg")
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def inference_paths(machine: InferenceMachine, exported) -> Dict[str, InferFn]:
  """The timed paths, each `(observations [B, n, 1], seed) -> final mean [B, d]`.

  Args:
    exported: the export's loaded `infer` signature.
  """
  module = ExportModule(machine, NUM_STEPS)
  in_library = DeployedMachine(module, json.loads(module.metadata_json))
  paths = {
      "in-library": lambda batch, seed: in_library.infer(batch, seed=seed).mean,
      "export": lambda batch, seed: exported(observations=tf.constant(batch),
                                             seed=tf.constant([seed, 0]))["mean"].numpy(),
  }
  if FLAGS.jit:
    compiled = tf.function(lambda observations, seed: machine.infer(observations, seed, NUM_STEPS),
                           jit_compile=True, input_signature=module.infer.input_signature)
    paths["in-library XLA"] = lambda batch, seed: compiled(
        tf.constant(batch), tf.constant([seed, 0]))["mean"].numpy()
  return paths


def compare_paths(paths: Dict[str, InferFn],
                  check: np.ndarray) -> Tuple[Dict[str, float], List[Row]]:
  """Max |final mean - in-library's| of each other path on `check [B, n, 1]`.

  Drops the paths that fail (e.g. an op XLA cannot compile) from `paths`, each with a row saying so.
  """
  reference = paths["in-library"](check, 0)
  differences, failures = {}, []
  for name, infer in list(paths.items())[1:]:
    try:
      differences[name] = float(np.abs(infer(check, 0) - reference).max())
    except (tf.errors.OpError, ValueError) as error:
      del paths[name]
      failures.append((name, 1, None, f"failed: {type(error).__name__}"))
  return differences, failures


def time_paths(paths: Dict[str, InferFn], observations: np.ndarray) -> List[Row]:
  """A row per path for one data set and for all `observations [B, n, 1]` per call."""
  rows = []
  for batch_size in (1, observations.shape[0]):
    batch = observations[:batch_size]
    for name, infer in paths.items():
      ms = median_ms(lambda seed, infer=infer: infer(batch, seed), FLAGS.repeats, FLAGS.warmup)
      rows.append((name, batch_size, ms, 1000.0 * batch_size / ms))
  return rows


def print_report(differences: Dict[str, float], check_size: int, rows: List[Row]) -> None:
  print(f"Weinberg, M={PAPER_CONFIG.num_samples}, N={PAPER_CONFIG.num_simulated_obs}, "
        f"T={NUM_STEPS}, n={FLAGS.num_obs}, default network sizes; UNTRAINED weights (timing "
        "only).")
  device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
  print(f"TensorFlow {tf.__version__} on {device}, {os.cpu_count()} cores visible, "
        f"threads={FLAGS.threads or 'default'}; median of {FLAGS.repeats} calls after "
        f"{FLAGS.warmup} warm-up calls.")
  print(f"max |final mean - in-library's| on {check_size} data sets: " + ", ".join(
      f"{name} {difference:.2g}" for name, difference in differences.items()))
  if "in-library XLA" in differences:
    print("(XLA's stateless RNG uses another algorithm, so the XLA path draws other starts, "
          "proposals and simulations: same distribution, different numbers.)")
  print()
  print(f"| {'path':<15} | {'batch':>5} | {'median ms per call':>18} | {'data sets/s':>11} |")
  print(f"|{'-' * 17}|{'-' * 7}|{'-' * 20}|{'-' * 13}|")
  for name, batch_size, ms, rate in rows:
    if ms is None:
      print(f"| {name:<15} | {batch_size:>5} | {rate:>18} | {'-':>11} |")
    else:
      print(f"| {name:<15} | {batch_size:>5} | {ms:>18.1f} | {rate:>11.1f} |")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  check_flags()
  logging.set_verbosity(logging.WARNING)   # TF's INFO lines about saving would bury the table
  if FLAGS.threads:
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
  machine = build_machine()
  _, observations = get_simulator("weinberg").sample_problems(
      FLAGS.batch, FLAGS.num_obs, tf.constant([1, 2]))
  observations = observations.numpy()
  check = observations[:8]
  with export_directory() as export_dir:
    export_machine(machine, export_dir, NUM_STEPS)
    loaded = tf.saved_model.load(export_dir)   # kept alive: the signature uses its variables
    paths = inference_paths(machine, loaded.signatures["infer"])
    # How far the paths' answers are apart (the export's should be identical to the library's).
    differences, rows = compare_paths(paths, check)
    rows += time_paths(paths, observations)
  print_report(differences, check.shape[0], rows)


if __name__ == "__main__":
  app.run(main)
