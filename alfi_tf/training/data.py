"""Seeded meta-datasets of synthetic problems `(theta*, X ~ p(x | theta*)^n)`.

A meta-dataset is generated as a `tf.data` pipeline of chunks, each simulated from its own stateless
seed, so the chunks are produced in parallel (TensorFlow's thread pool; for numpy simulators, an
optional pool of worker processes) and the result does not depend on the parallelism. The same
pipeline either fills memory (`generate_problems`) or is written to disk and streamed back
(`ProblemStore`), for meta-datasets larger than memory; both hold exactly the same problems.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, TypeVar

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import snapshot_pb2, struct_pb2

from alfi_tf.checks import require_memory
from alfi_tf.simulators import NumpySimulator, Simulator, SimulatorError
from alfi_tf.simulators.base import describe_parameters
from alfi_tf.simulators.specs import import_spec_module
from alfi_tf.workdir import leftovers_of_dead_processes, nearest_existing

# Seed streams of one run: the same run seed gives independent training, validation, test and
# calibration sets.
TRAIN_STREAM, VALIDATION_STREAM, TEST_STREAM, CALIBRATION_STREAM = 0, 1, 2, 3

#: Problems simulated per call; part of the recipe (each chunk has its own seed).
DEFAULT_CHUNK_SIZE = 1024


#: Problems whose observations came back NaN/inf are redrawn, at most this many rounds...
MAX_REDRAW_ROUNDS = 8
#: ... and only while at most this fraction of the problems drawn failed; beyond it the simulator
#: is broken on a large part of its prior, and the run stops with an example of where.
MAX_FAILED_FRACTION = 0.1
#: Redraws use seed streams of their own: `REDRAW_STREAM_BASE + 16 * stream + round`.
REDRAW_STREAM_BASE = 1000

Element = TypeVar("Element")


class Problems(NamedTuple):
  """A set of inference problems.

  Attributes:
    theta: `[K, d]` float32 true parameters.
    observations: `[K, n, d_x]` float32 observations.
    redrawn: how many problems were drawn again because their observations had NaN/inf.
  """

  theta: np.ndarray
  observations: np.ndarray
  redrawn: int = 0


def stream_seed(seed: int, stream: int) -> tf.Tensor:
  """The stateless seed of one stream (train / validation / test) of a run."""
  return tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int32), stream)


def _check_sizes(num_problems: int, num_obs: int, chunk_size: int) -> None:
  for name, value in (("num_problems", num_problems), ("num_obs", num_obs),
                      ("chunk_size", chunk_size)):
    if value <= 0:
      raise ValueError(f"{name} must be positive, got {value}")


def problem_chunks(simulator: Simulator, num_problems: int, num_obs: int, seed: int, stream: int,
                   chunk_size: int = DEFAULT_CHUNK_SIZE,
                   executor: Optional[concurrent.futures.Executor] = None,
                   redraw_failed: bool = False) -> tf.data.Dataset:
  """A dataset of the meta-dataset's chunks, simulated in parallel, in a deterministic order.

  Args:
    simulator: the simulator.
    num_problems: `K`.
    num_obs: `n`, observations per problem.
    seed: the run's seed.
    stream: which stream of that seed (`TRAIN_STREAM`, `VALIDATION_STREAM`, `TEST_STREAM`).
    chunk_size: problems per chunk (the last chunk holds the remainder).
    executor: optional process pool for numpy simulators (see `NumpySimulator`).
    redraw_failed: draw problems whose observations hold NaN/inf again, in the graph
      (`sample_finite_problems`), and add their count to each element.

  Returns:
    Elements `(theta [c, d], observations [c, n, d_x])`, chunk after chunk, with a third, the int32
    count of redrawn problems, when `redraw_failed`.
  """
  _check_sizes(num_problems, num_obs, chunk_size)
  base = stream_seed(seed, stream)
  num_chunks = -(-num_problems // chunk_size)

  def chunk(index: tf.Tensor):
    index = tf.cast(index, tf.int32)
    count = tf.minimum(chunk_size, num_problems - index * chunk_size)
    chunk_seed = tf.random.experimental.stateless_fold_in(base, index)
    if redraw_failed:
      return sample_finite_problems(simulator, count, num_obs, chunk_seed, executor)
    return simulator.sample_problems(count, num_obs, chunk_seed, executor=executor)

  return with_worker_threads(
      tf.data.Dataset.range(num_chunks).map(chunk, num_parallel_calls=tf.data.AUTOTUNE,
                                            deterministic=True), executor)


def sample_finite_problems(simulator: Simulator, count, num_obs: int, seed: tf.Tensor,
                           executor: Optional[concurrent.futures.Executor] = None
                           ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """`simulator.sample_problems`, with problems whose observations hold NaN/inf drawn again.

  In the graph (the `online` source and the chunks of a `ProblemStore`): up to `MAX_REDRAW_ROUNDS`
  rounds, each drawing a whole fresh batch from a seed of its own and keeping its rows where the
  current ones failed; a round costs nothing when every row is finite, so a simulator that never
  fails gets exactly the problems it got before. Rows still failing after the last round are
  returned as they are (the caller decides: the loss names the simulator, a store refuses them).

  Args:
    count: how many problems (a Python int or a scalar tensor).

  Returns:
    `(theta [count, d], observations [count, num_obs, d_x], redrawn)`: `redrawn` (int32) counts
    the failed rows drawn again, summed over the rounds.
  """
  theta, observations = simulator.sample_problems(count, num_obs, seed, executor=executor)
  redrawn = tf.constant(0)
  for round_index in range(MAX_REDRAW_ROUNDS):
    theta, observations, failed = _redraw_failed(
        simulator, theta, observations,
        tf.random.experimental.stateless_fold_in(seed, REDRAW_STREAM_BASE + round_index), executor)
    redrawn += failed
  return theta, observations, redrawn


def _redraw_failed(simulator: Simulator, theta: tf.Tensor, observations: tf.Tensor,
                   seed: tf.Tensor, executor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """One round of `sample_finite_problems`: failed rows replaced by those of a fresh batch, and
  how many rows failed."""
  count, num_obs = tf.shape(observations)[0], observations.shape[1]
  failed = ~tf.reduce_all(tf.math.is_finite(tf.reshape(observations, [count, -1])), axis=1)

  def redraw():
    again_theta, again = simulator.sample_problems(count, num_obs, seed, executor=executor)
    return (tf.where(failed[:, tf.newaxis], again_theta, theta),
            tf.where(failed[:, tf.newaxis, tf.newaxis], again, observations))

  theta, observations = tf.cond(tf.reduce_any(failed), redraw, lambda: (theta, observations))
  return theta, observations, tf.reduce_sum(tf.cast(failed, tf.int32))


def problems_bytes(simulator: Simulator, num_problems: int, num_obs: int) -> int:
  """Size in memory of `num_problems` float32 problems of `num_obs` observations."""
  return 4 * num_problems * (num_obs * simulator.observation_dim + simulator.parameter_dim)


def generate_problems(simulator: Simulator, num_problems: int, num_obs: int, seed: int,
                      stream: int, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      executor: Optional[concurrent.futures.Executor] = None) -> Problems:
  """Draws `num_problems` problems into memory (see `problem_chunks` for the arguments).

  Problems whose observations hold NaN/inf (a simulator failing on part of its prior) are drawn
  again from the prior, from seed streams of their own; `Problems.redrawn` counts them. Sets
  without such failures are exactly what they were without this policy.

  Raises:
    ValueError: the problems would not fit in memory (the chunks and their concatenation).
    SimulatorError: more than `MAX_FAILED_FRACTION` of the problems drawn failed.
  """
  require_memory(2 * problems_bytes(simulator, num_problems, num_obs),
                 f"{num_problems} problems of {num_obs} observations",
                 "draw fewer problems or observations")
  draw = functools.partial(_draw_problems, simulator, num_obs=num_obs, seed=seed,
                           chunk_size=chunk_size, executor=executor)
  problems = draw(num_problems, stream=stream)
  failed = _failed_rows(problems)
  draws, failures = num_problems, 0
  for round_index in range(MAX_REDRAW_ROUNDS):
    if not failed.any():
      break
    count = int(failed.sum())
    failures += count
    _check_failures(simulator, problems.theta[failed], failures, draws)
    again = draw(count, stream=REDRAW_STREAM_BASE + 16 * stream + round_index)
    problems.theta[failed], problems.observations[failed] = again.theta, again.observations
    draws += count
    failed = _failed_rows(problems)
  if failed.any():   # each round stayed under the fraction, yet some draws never succeeded
    raise _unrecovered(simulator, problems.theta[failed])
  return problems._replace(redrawn=failures)


def _draw_problems(simulator: Simulator, num_problems: int, num_obs: int, seed: int, stream: int,
                   chunk_size: int, executor) -> Problems:
  thetas, observations = [], []
  for theta, obs in problem_chunks(simulator, num_problems, num_obs, seed, stream, chunk_size,
                                   executor):
    thetas.append(theta.numpy())
    observations.append(obs.numpy())
  return Problems(np.concatenate(thetas), np.concatenate(observations))


def _failed_rows(problems: Problems) -> np.ndarray:
  """`[K]` whether each problem's observations hold a NaN/inf."""
  return ~np.all(np.isfinite(problems.observations.reshape(len(problems.theta), -1)), axis=1)


def _check_failures(simulator: Simulator, failed_theta: np.ndarray, failures: int,
                    draws: int) -> None:
  """Stops when more than `MAX_FAILED_FRACTION` of the draws failed, naming where (when
  `failed_theta` holds examples: the draws themselves may have been replaced since)."""
  if failures > MAX_FAILED_FRACTION * draws:
    where = (f", e.g. at {describe_parameters(failed_theta, simulator.parameter_names)}"
             if len(failed_theta) else "")
    raise SimulatorError(
        f"simulator {simulator.spec!r} returned NaN/inf observations for {failures} of {draws} "
        f"problems drawn from its prior (more than {MAX_FAILED_FRACTION:.0%}){where}: fix the "
        "simulator where it fails, or narrow its prior")


def _unrecovered(simulator: Simulator, failed_theta: np.ndarray) -> SimulatorError:
  """The error for problems `failed_theta [k, d]` that failed in every redraw round."""
  return SimulatorError(
      f"simulator {simulator.spec!r} still returned NaN/inf observations for {len(failed_theta)} "
      f"problems after {MAX_REDRAW_ROUNDS} redraws from its prior, e.g. at "
      f"{describe_parameters(failed_theta, simulator.parameter_names)}")


class WorkerPool(concurrent.futures.ProcessPoolExecutor):
  """Spawned processes that run a numpy simulator's code (see `worker_pool`).

  A Ctrl-C in a terminal reaches every process of the foreground group, the workers included. Only
  the parent acts on it (it stops the run and shuts the pool down); the workers ignore it, from
  their start on, rather than each dying with a KeyboardInterrupt traceback of its own.

  Attributes:
    num_workers: the number of processes.
  """

  def __init__(self, num_workers: int, simulator_spec: str = ""):
    # Spawned, not forked: forking a process that runs TensorFlow's threads is unsafe. A simulator
    # imported from a file is imported again in each worker, so its classes unpickle there.
    super().__init__(num_workers, mp_context=multiprocessing.get_context("spawn"),
                     initializer=_start_worker, initargs=(simulator_spec,))
    self.num_workers = num_workers

  def _spawn_process(self) -> None:
    """Starts a worker with SIGINT blocked (inherited through exec: the worker's start, its imports
    included, is not interrupted); `_start_worker` then ignores it. Workers start on demand, from
    whichever thread submits, so the mask (per thread), not the handler (main thread), is used."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
      super()._spawn_process()
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _start_worker(simulator_spec: str) -> None:
  """A worker's initializer: ignores SIGINT (the parent handles it), then imports the simulator."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})   # a pending one is discarded
  import_spec_module(simulator_spec)


def worker_pool(simulator: Simulator, num_workers: int) -> Optional[WorkerPool]:
  """A pool of `num_workers` processes for a numpy simulator's data generation, else None.

  The simulator's class must be importable in the workers (by module path, or through the import
  spec it was built from), and a script that creates the pool needs the usual
  `if __name__ == "__main__":` guard (`multiprocessing`'s spawn).
  TF-native simulators get None: they already run in TensorFlow's thread pools, without the GIL.
  """
  if num_workers < 0:
    raise ValueError(f"num_workers must be >= 0, got {num_workers}")
  if num_workers <= 1 or not isinstance(simulator, NumpySimulator):
    return None
  return WorkerPool(num_workers, simulator.spec)


def with_worker_threads(dataset: tf.data.Dataset,
                        executor: Optional[concurrent.futures.Executor]) -> tf.data.Dataset:
  """Gives `dataset` enough threads to keep every process of `executor` busy.

  Each in-flight simulator call blocks one tf.data thread while a worker computes; on tf.data's
  shared pool the calls were seen to run one at a time in about half the runs, so the dataset gets a
  private pool of two threads per worker.
  """
  if executor is None:
    return dataset
  options = tf.data.Options()
  options.threading.private_threadpool_size = 2 * getattr(executor, "num_workers",
                                                          os.cpu_count() or 1)
  return dataset.with_options(options)


def _file_sizes(directory: str, exclude: str) -> Dict[str, int]:
  """The size of every file below `directory` but `exclude`, by its path relative to `directory`."""
  sizes = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, directory)
      if relative != exclude:
        sizes[relative] = os.path.getsize(path)
  return sizes


def _sha256(path: str) -> str:
  with open(path, "rb") as stream:
    return hashlib.sha256(stream.read()).hexdigest()


class ProblemStore:
  """A meta-dataset on disk (`tf.data.Dataset.save`), streamed back with `tf.data.Dataset.load`.

  Generation streams chunk by chunk from the simulator to disk, so a meta-dataset never has to fit
  in memory. It is written into a temporary sibling directory that is renamed into place when
  complete: a killed generation leaves no partial store behind (the next run starts it over). A
  manifest records the generation recipe, the size of every data file and the SHA-256 of the
  small protocol-buffer files; opening a store made with another recipe, or one whose files
  changed since (a partial copy, a small file overwritten in place, which may still parse), is
  refused. A shard corrupted in place, its size kept, fails its records' checksums and is named
  when it is read (`with_corruption_named`).

  Args:
    path: the store's directory.
  """

  MANIFEST = "alfi_problems.json"
  #: Layout of the stored elements; part of the recipe, so a store of another layout is refused.
  #: 2: `(theta, observations, redrawn)` per chunk.
  FORMAT = 2
  #: The small files that `tf.data.Dataset.load` parses, and their protocol buffers.
  PROTOBUF_FILES = {"dataset_spec.pb": struct_pb2.StructuredValue,
                    "snapshot.metadata": snapshot_pb2.SnapshotMetadataRecord}

  def __init__(self, path: str):
    self.path = path

  @staticmethod
  def recipe(simulator: Simulator, num_problems: int, num_obs: int, seed: int, stream: int,
             chunk_size: int = DEFAULT_CHUNK_SIZE) -> Dict[str, Any]:
    """What determines a store's content, as recorded in its manifest."""
    _check_sizes(num_problems, num_obs, chunk_size)
    return {"format": ProblemStore.FORMAT,
            "simulator": simulator.spec, "num_problems": num_problems, "num_obs": num_obs,
            "seed": seed, "stream": stream, "chunk_size": chunk_size,
            "parameter_dim": simulator.parameter_dim,
            "observation_dim": simulator.observation_dim}

  def exists(self) -> bool:
    return os.path.exists(os.path.join(self.path, self.MANIFEST))

  def require_writable(self) -> None:
    """Refuses, before anything is simulated, a store that does not exist and cannot be written:
    its path lies below a file, or its nearest existing directory is not writable.

    Raises:
      ValueError: naming the store and the file in its way.
      PermissionError: naming the store and the directory.
    """
    if self.exists():
      return   # only read
    parent = nearest_existing(os.path.dirname(os.path.abspath(self.path)))
    if not os.path.isdir(parent):
      raise ValueError(f"problem store {self.path} cannot be written: {parent} is a file, not a "
                       "directory (--data_dir)")
    if not os.access(parent, os.W_OK | os.X_OK):
      raise PermissionError(f"problem store {self.path} cannot be written: {parent} is not "
                            "writable (--data_dir)")

  def read_recipe(self) -> Dict[str, Any]:
    """The manifest: the recipe, the count of redrawn problems and the data files' sizes.

    Raises:
      ValueError: naming the manifest, when it holds no JSON object.
    """
    manifest = os.path.join(self.path, self.MANIFEST)
    try:
      with open(manifest) as stream:
        stored = json.load(stream)
    except ValueError as error:   # also a UnicodeDecodeError
      raise self._damaged(f"{manifest} is not valid JSON ({error})") from None
    if not isinstance(stored, dict):
      raise self._damaged(f"{manifest} holds a {type(stored).__name__}, not a JSON object")
    return stored

  def _damaged(self, what: str) -> ValueError:
    """The error for a store that something other than its generation changed: `what` is wrong."""
    return ValueError(f"problem store {self.path} is damaged: {what}; it was changed or copied "
                      "incompletely after it was generated. Delete it (or use another --data_dir) "
                      "to generate it again")

  def check(self, recipe: Dict[str, Any]) -> None:
    """Raises a ValueError naming every setting in which the stored recipe differs from `recipe`,
    or, for a damaged store, what is damaged (`check_files`)."""
    stored = self.read_recipe()
    differences = [f"{key}: store has {stored.get(key)!r}, requested {value!r}"
                   for key, value in recipe.items() if stored.get(key) != value]
    if differences:
      raise ValueError(f"problem store {self.path} was generated with other settings; use another "
                       "--data_dir or delete it. Differences:\n  " + "\n  ".join(differences))
    self.check_files(stored.get("files"), stored.get("digests"))

  def check_files(self, recorded: Optional[Dict[str, int]],
                  digests: Optional[Dict[str, str]] = None) -> None:
    """Refuses a store whose data files differ from the manifest's record of them (`files`: size
    by relative path; `digests`: SHA-256 of the small protocol-buffer files): one missing,
    truncated or grown, as a partial copy leaves it, or a small file overwritten in place. A
    store generated before a record is not checked against it.

    Raises:
      ValueError: naming the store and each file that differs.
    """
    if recorded is None:
      return
    if not isinstance(recorded, dict) or not isinstance(digests, (dict, type(None))):
      raise self._damaged(f"its {self.MANIFEST} has no valid record of its files")
    found = _file_sizes(self.path, exclude=self.MANIFEST)
    differing = [f"{name} is missing" if name not in found else
                 f"{name} has {found[name]} bytes, {size} were written"
                 for name, size in sorted(recorded.items()) if found.get(name) != size]
    differing += [f"{name} was overwritten in place (its SHA-256 differs from the one written)"
                  for name, digest in sorted((digests or {}).items())
                  if name in found and found[name] == recorded.get(name)
                  and _sha256(os.path.join(self.path, name)) != digest]
    if differing:
      raise self._damaged(", ".join(differing[:5])
                          + (f" (and {len(differing) - 5} more)" if len(differing) > 5 else ""))

  def create(self, simulator: Simulator, num_problems: int, num_obs: int, seed: int, stream: int,
             chunk_size: int = DEFAULT_CHUNK_SIZE,
             executor: Optional[concurrent.futures.Executor] = None) -> "ProblemStore":
    """Generates the store if it does not exist yet, else checks that it has the same recipe.

    Several processes (workers of a multi-worker run on a shared filesystem) may call this at once:
    each writes its own temporary directory, the first rename wins and the others discard theirs.
    Problems whose observations hold NaN/inf are drawn again (`sample_finite_problems`); the
    manifest records how many (`redrawn`).

    Raises:
      SimulatorError: more than `MAX_FAILED_FRACTION` of the problems failed, or some still failed
        after every redraw round (nothing is kept).
    """
    recipe = self.recipe(simulator, num_problems, num_obs, seed, stream, chunk_size)
    if not self.exists():
      if os.path.exists(self.path):
        raise ValueError(f"{self.path} exists but holds no {self.MANIFEST}: refusing to overwrite "
                         "it")
      self._remove_stale_partials()
      partial = f"{self.path}.partial-{socket.gethostname()}-{os.getpid()}"
      shutil.rmtree(partial, ignore_errors=True)
      problem_chunks(simulator, num_problems, num_obs, seed, stream, chunk_size, executor,
                     redraw_failed=True).save(partial)
      try:
        redrawn = self._check_failures(partial, simulator, num_problems)
      except SimulatorError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
      with open(os.path.join(partial, self.MANIFEST), "w") as stream_file:
        json.dump({**recipe, "redrawn": redrawn, "files": _file_sizes(partial, self.MANIFEST),
                   "digests": {name: _sha256(os.path.join(partial, name))
                               for name in self.PROTOBUF_FILES
                               if os.path.exists(os.path.join(partial, name))}},
                  stream_file, indent=2, sort_keys=True)
      try:
        os.rename(partial, self.path)
      except OSError:
        if not self.exists():
          raise
        shutil.rmtree(partial)   # another process completed the same store first
    self.check(recipe)
    return self

  @staticmethod
  def _check_failures(partial: str, simulator: Simulator, num_problems: int) -> int:
    """The number of problems a freshly written store redrew; refuses one whose simulator failed
    too often (the policy of `generate_problems`), naming parameters where it failed."""
    redrawn, failed = 0, []
    for theta, observations, chunk_redrawn in tf.data.Dataset.load(partial):   # one pass
      redrawn += int(chunk_redrawn)
      chunk = Problems(theta.numpy(), observations.numpy())
      failed.append(chunk.theta[_failed_rows(chunk)])
    # The failed draws were replaced in the store, so the fraction is reported without examples.
    _check_failures(simulator, np.empty((0, simulator.parameter_dim)), redrawn,
                    num_problems + redrawn)
    failed = np.concatenate(failed)
    if len(failed):
      raise _unrecovered(simulator, failed)
    return redrawn

  @property
  def redrawn(self) -> int:
    """How many problems were drawn again because the simulator returned NaN/inf for them."""
    return int(self.read_recipe().get("redrawn", 0))

  def _remove_stale_partials(self) -> None:
    """Deletes partial stores left by killed processes of this host."""
    for partial in leftovers_of_dead_processes(f"{self.path}.partial-{socket.gethostname()}-"):
      shutil.rmtree(partial, ignore_errors=True)

  def chunks(self) -> tf.data.Dataset:
    """The stored chunks `(theta [c, d], observations [c, n, d_x])`, in generation order.

    Iterating them raises TensorFlow's `DataLossError` where a file was corrupted in place: read
    them through `iterate_chunks` or `with_corruption_named` for the store's own error.
    """
    if not self.exists():
      raise FileNotFoundError(f"no problem store at {self.path}")
    with self._corruption_named():   # the dataset's spec is parsed here
      stored = tf.data.Dataset.load(self.path)
    return stored.map(lambda theta, observations, redrawn: (theta, observations))

  def problems(self) -> tf.data.Dataset:
    """The stored problems one by one, `(theta [d], observations [n, d_x])`, in order (see
    `chunks` for a corrupted file)."""
    return self.chunks().unbatch()

  def iterate_chunks(self) -> Iterator[Problems]:
    """The chunks as numpy `Problems` (e.g. to accumulate statistics in one streaming pass).

    Raises:
      ValueError: naming the store and its corrupted file (`with_corruption_named`).
    """
    for theta, observations in self.with_corruption_named(iter(self.chunks())):
      yield Problems(theta.numpy(), observations.numpy())

  def with_corruption_named(self, elements: Iterator[Element]) -> Iterator[Element]:
    """`elements`, read from this store (its chunks, or training batches streamed from it), with
    a file corrupted in place reported as the store's damage instead of TensorFlow's error.

    A corruption that keeps a file's size (bytes overwritten by a faulty disk or copy) passes the
    size check of `check_files`; it shows only when the file is read, maybe deep into training.

    Raises:
      ValueError: naming the store, its corrupted file and how to recover.
    """
    with self._corruption_named():
      yield from elements

  @contextlib.contextmanager
  def _corruption_named(self) -> Iterator[None]:
    try:
      yield
    except (tf.errors.DataLossError, DecodeError) as error:
      corrupted = self._corrupted_files()
      what = (f"{', '.join(corrupted)} {'is' if len(corrupted) == 1 else 'are'} corrupted"
              if corrupted else "a data file is corrupted")
      raise self._damaged(f"{what} (reading failed: {_reading_failure(error)})") from error

  def _corrupted_files(self) -> List[str]:
    """The data files that no longer read back, by their path in the store: each shard's records
    fail their checksums, or a small file fails to parse. Only run once a read failed: it reads
    every shard."""
    with tf.init_scope():   # eagerly, also when the failure came while a pipeline was traced
      return [name for name in sorted(_file_sizes(self.path, exclude=self.MANIFEST))
              if not self._reads_back(name)]

  def _reads_back(self, name: str) -> bool:
    path = os.path.join(self.path, name)
    try:
      if name.endswith(".snapshot"):   # TFRecord files (the store is written uncompressed)
        for _ in tf.data.TFRecordDataset(path):
          pass
      elif name in self.PROTOBUF_FILES:
        with open(path, "rb") as stream:
          self.PROTOBUF_FILES[name]().ParseFromString(stream.read())
    except (tf.errors.DataLossError, DecodeError):
      return False
    return True


#: What TensorFlow's errors say around the gist: the graph function, the tf.data function and
#: iterator, and the op that raised.
_TENSORFLOW_CONTEXT = re.compile(r"\{\{[^}]*\}\}\s*|Error in user-defined function passed to "
                                 r".*? with iterator: \S+: |\s*\[Op:.*$")


def _reading_failure(error: Exception) -> str:
  """The gist of TensorFlow's (or protobuf's) error for a corrupted file: its first line, without
  `_TENSORFLOW_CONTEXT`."""
  lines = (getattr(error, "message", None) or str(error)).strip().splitlines()
  return _TENSORFLOW_CONTEXT.sub("", lines[0] if lines else "").strip()

