r"""Meta-dataset generation and streaming throughput.

  python -m benchmarks.data_generation [--simulators=weinberg,lotka_volterra] [--workers=0,2]

For each simulator: problems/s generating into memory (the `tf.data` pipeline of parallel chunks),
with each `--workers` setting (worker processes apply to numpy simulators only; TF-native ones
run in TensorFlow's thread pools either way), then writing a `ProblemStore` to disk and streaming it
back (MB/s). Medians over `--repeats`. Run it on an otherwise idle machine.

Besides the registered simulators, `python_queue` is a black-box simulator written as a plain
Python loop (the waiting times of an M/M/1 queue by Lindley's recursion), the kind of user code
that holds the GIL and that worker processes are for.
"""

import os
import statistics
import tempfile
import time

from absl import app, flags

import numpy as np

from alfi_tf.training import data as data_lib
from alfi_tf.simulators import NumpySimulator, box_prior, get_simulator, register_simulator


class PythonQueueSimulator(NumpySimulator):
  """Waiting times of an M/M/1 queue (arrival rate 1, log service rate `theta`), one customer at a
  time in Python: a stand-in for GIL-bound black-box simulators."""

  name = "python_queue"

  def __init__(self):
    super().__init__(parameter_names=["log_service_rate"], observation_dim=1,
                     prior=box_prior([0.1], [1.5]))

  def simulate_numpy(self, theta: np.ndarray, num_obs: int,
                     rng: np.random.Generator) -> np.ndarray:
    waits = np.empty((len(theta), num_obs, 1))
    for problem, log_rate in enumerate(theta[:, 0]):
      services = rng.exponential(np.exp(-log_rate), num_obs).tolist()
      arrivals = rng.exponential(1.0, num_obs).tolist()
      wait = 0.0
      for customer in range(num_obs):
        waits[problem, customer, 0] = wait
        wait = max(0.0, wait + services[customer] - arrivals[customer])
    return waits


register_simulator(PythonQueueSimulator)

flags.DEFINE_list("simulators", ["weinberg", "lotka_volterra", "python_queue"],
                  "simulators to measure: registered names or specs (package.module:Attr, "
                  "path/to/file.py:Attr)")
flags.DEFINE_list("workers", ["0", "2"], "--data_workers settings to compare")
flags.DEFINE_integer("num_problems", 4096, "problems per measurement")
flags.DEFINE_integer("num_obs", 500, "observations per problem")
flags.DEFINE_integer("chunk_size", 256, "problems per chunk (the unit of parallel work)")
flags.DEFINE_integer("repeats", 3, "measurements per setting (the median is reported)")
FLAGS = flags.FLAGS


def _median_seconds(function) -> float:
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    function()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _generate(simulator, executor) -> None:
  data_lib.generate_problems(simulator, FLAGS.num_problems, FLAGS.num_obs, seed=0,
                             stream=data_lib.TRAIN_STREAM, chunk_size=FLAGS.chunk_size,
                             executor=executor)


def main(argv):
  del argv
  print(f"{FLAGS.num_problems} problems x {FLAGS.num_obs} obs, chunks of {FLAGS.chunk_size}")
  print(f"{'simulator':<16}{'workers':>8}{'problems/s':>12}")
  for name in FLAGS.simulators:
    simulator = get_simulator(name)
    for workers in map(int, FLAGS.workers):
      if workers > 1 and not isinstance(simulator, NumpySimulator):
        continue
      pool = data_lib.worker_pool(simulator, workers)
      try:
        _generate(simulator, pool)   # warm-up: tracing, worker start-up
        seconds = _median_seconds(lambda: _generate(simulator, pool))  # pylint: disable=cell-var-from-loop
      finally:
        if pool is not None:
          pool.shutdown()
      print(f"{name:<16}{workers:>8}{FLAGS.num_problems / seconds:>12.0f}")
  simulator = get_simulator(FLAGS.simulators[0])
  with tempfile.TemporaryDirectory() as directory:
    store = data_lib.ProblemStore(os.path.join(directory, "train"))
    start = time.perf_counter()
    store.create(simulator, FLAGS.num_problems, FLAGS.num_obs, 0, data_lib.TRAIN_STREAM,
                 FLAGS.chunk_size)
    write_seconds = time.perf_counter() - start
    size_mb = sum(os.path.getsize(os.path.join(root, name))
                  for root, _, names in os.walk(store.path) for name in names) / 2 ** 20
    # Batched as the training pipeline reads it (per-problem Python iteration would dominate).
    read_seconds = _median_seconds(lambda: sum(1 for _ in store.problems().batch(32)))
  print(f"store ({simulator.name}, {size_mb:.0f} MB): generate + write {size_mb / write_seconds:.0f} "
        f"MB/s, stream back {size_mb / read_seconds:.0f} MB/s "
        f"({FLAGS.num_problems / read_seconds:.0f} problems/s)")


if __name__ == "__main__":
  app.run(main)
