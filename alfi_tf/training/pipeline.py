"""Meta-training batches as `tf.data` pipelines: one global batch per step, a function of the step.

Every element (the batch's problems and the seed of the machine's simulations) is determined by the
run's seed and the step number alone, so a run resumed at step `s` sees exactly the batches an
uninterrupted run sees from step `s` on, whatever the parallelism of the pipeline. Three sources:

* `memory`: the fixed meta-training set in memory, a fresh stateless permutation per epoch.
* `disk`: the fixed set streamed from a `ProblemStore`, shuffled per epoch through a buffer of
  `shuffle_buffer` problems (a full permutation when the buffer holds the whole set); for
  meta-datasets larger than memory.
* `online`: fresh problems from the prior at every step, simulated ahead of the training step.

`meta_training_data` creates a run's data before the first step (the fixed meta-training set and the
validation set) and `adapt_machine` sets the machine's standardisation statistics from it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from typing import NamedTuple, Optional, Tuple

import tensorflow as tf

from alfi_tf.checks import require_memory
from alfi_tf.config import TrainConfig
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.model.normalization import Moments
from alfi_tf.simulators import Simulator
from alfi_tf.training import data as data_lib


def training_step_seeds(seed: int, step: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """`(machine_seed, problem_seed)` of training step `step` (0-based).

  The machine's proposals and simulations use `machine_seed`; online problems use `problem_seed`.
  """
  pair = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(
      tf.constant([seed, 1], tf.int32), tf.cast(step, tf.int32)), 2)
  return pair[0], pair[1]


def _epoch_seed(config: TrainConfig, epoch: tf.Tensor) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(
      data_lib.stream_seed(config.seed, data_lib.TRAIN_STREAM), tf.cast(epoch, tf.int32))


def batch_indices(config: TrainConfig, step: tf.Tensor) -> tf.Tensor:
  """Problems of the `memory` batch at `step`: a fresh stateless permutation per epoch."""
  step = tf.cast(step, tf.int32)
  position = step % config.steps_per_epoch
  # argsort of uniforms rather than stateless_shuffle, which XLA cannot compile.
  order = tf.argsort(tf.random.stateless_uniform(
      [config.num_problems], seed=_epoch_seed(config, step // config.steps_per_epoch)))
  return order[position * config.batch_size:(position + 1) * config.batch_size]


def _with_seeds(batches: tf.data.Dataset, config: TrainConfig,
                start_step: int) -> tf.data.Dataset:
  seeds = tf.data.Dataset.range(start_step, config.total_steps).map(
      lambda step: training_step_seeds(config.seed, step)[0])
  return tf.data.Dataset.zip(batches, seeds).map(
      lambda batch, seed: (batch[0], batch[1], seed, batch[2]))


def training_batches(config: TrainConfig, simulator: Simulator, start_step: int = 0,
                     problems: Optional[data_lib.Problems] = None,
                     store: Optional[data_lib.ProblemStore] = None,
                     executor: Optional[concurrent.futures.Executor] = None) -> tf.data.Dataset:
  """The batches of steps `start_step .. total_steps - 1`.

  Args:
    config: the run's training settings; `config.data_source` picks the source.
    simulator: the simulator (online problems).
    start_step: the first step, e.g. the step a resumed run restored.
    problems: the in-memory meta-training set (`memory`).
    store: the on-disk meta-training set (`disk`).
    executor: optional process pool for a numpy simulator's online problems.

  Returns:
    Elements `(theta [B, d], observations [B, n, d_x], machine_seed [2], redrawn)`, prefetched;
    `redrawn` (int32) counts the online problems drawn again because the simulator returned NaN/inf
    for them (0 for the fixed sets, whose redraws happen when they are generated).
  """
  if not 0 <= start_step <= config.total_steps:
    raise ValueError(f"start_step must be in [0, {config.total_steps}], got {start_step}")
  steps = tf.data.Dataset.range(start_step, config.total_steps)
  source = config.data_source
  if source == "memory":
    if problems is None:
      raise ValueError("data_source='memory' needs the meta-training problems")
    theta_all = tf.constant(problems.theta)
    observations_all = tf.constant(problems.observations)

    def gather(step):
      indices = batch_indices(config, step)
      return tf.gather(theta_all, indices), tf.gather(observations_all, indices), tf.constant(0)

    batches = steps.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  elif source == "online":
    batches = data_lib.with_worker_threads(steps.map(
        lambda step: data_lib.sample_finite_problems(
            simulator, config.batch_size, config.num_obs,
            training_step_seeds(config.seed, step)[1], executor),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), executor)
  elif source == "disk":
    if store is None:
      raise ValueError("data_source='disk' needs a ProblemStore")
    batches = _streamed_batches(config, store, start_step)
  else:
    raise ValueError(f"unknown data_source {source!r}")
  return _with_seeds(batches, config, start_step).prefetch(tf.data.AUTOTUNE)


def _streamed_batches(config: TrainConfig, store: data_lib.ProblemStore,
                      start_step: int) -> tf.data.Dataset:
  """Epochs of buffered-shuffled batches from disk, from the batch of `start_step` on."""
  first_epoch, position = divmod(start_step, config.steps_per_epoch)

  # Plain graph code: AutoGraph would try (and warn that it fails) to convert the store's checks.
  @tf.autograph.experimental.do_not_convert
  def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
    seed = _epoch_seed(config, epoch)
    # A 63-bit op seed from the stateless epoch seed: the order depends on the run seed and the
    # epoch only. This function's graph forgets the global seed: `shuffle` would otherwise mix it
    # into the order, and with a global seed of 0 (`set_global_seed(0)`, the default run seed) it
    # compares the tensor seed with 0 in Python and fails (tensorflow/tensorflow#17284).
    tf.compat.v1.get_default_graph().seed = None
    shuffle_seed = tf.cast(seed[0], tf.int64) * (2 ** 31) + tf.cast(seed[1], tf.int64) % (2 ** 31)
    return (store.problems()
            .shuffle(min(config.shuffle_buffer, config.num_problems), seed=shuffle_seed,
                     reshuffle_each_iteration=False)
            .batch(config.batch_size, drop_remainder=True)
            .take(config.steps_per_epoch)
            .map(lambda theta, observations: (theta, observations, tf.constant(0))))

  return (tf.data.Dataset.range(first_epoch, config.epochs)
          .flat_map(epoch_batches)
          .skip(position))


class MetaTrainingData(NamedTuple):
  """The problems of a run, determined by its seed (see `meta_training_data`).

  Attributes:
    problems: the fixed meta-training set in memory (sources `memory` and `online`), else None.
    store: the fixed meta-training set on disk (source `disk`), else None.
    validation: the validation problems, in memory.
  """

  problems: Optional[data_lib.Problems]
  store: Optional[data_lib.ProblemStore]
  validation: data_lib.Problems

  @property
  def redrawn(self) -> int:
    """Problems drawn again because the simulator returned NaN/inf for them."""
    fixed = self.problems.redrawn if self.problems is not None else self.store.redrawn
    return fixed + self.validation.redrawn


def require_memory_for(config: TrainConfig, simulator: Simulator) -> None:
  """Refuses, before anything is simulated, a meta-training set that cannot fit in memory.

  Every source holds a chunk of problems and the validation set at once; the `memory` and `online`
  sources also hold the whole fixed set (twice while it is assembled).

  Raises:
    ValueError: with the estimate and the alternatives.
  """
  per_set = functools.partial(data_lib.problems_bytes, simulator, num_obs=config.num_obs)
  needed = per_set(min(config.num_problems, data_lib.DEFAULT_CHUNK_SIZE)) + per_set(
      config.num_validation_problems)
  if config.data_source != "disk":
    needed += 2 * per_set(config.num_problems)
  require_memory(
      needed, f"a meta-training set of {config.num_problems} problems x {config.num_obs} "
      f"observations ({config.data_source} source)",
      "use --data_source=disk (streamed from disk) or --data_source=online with fewer "
      "--num_problems, or fewer --num_obs")


def problem_store(data_dir: str) -> data_lib.ProblemStore:
  """The `disk` source's store of the meta-training set in `data_dir`."""
  return data_lib.ProblemStore(os.path.join(data_dir, "train"))


def meta_training_data(config: TrainConfig, simulator: Simulator, data_dir: str,
                       executor: Optional[concurrent.futures.Executor] = None) -> MetaTrainingData:
  """Creates (or, for a store, reuses) a run's meta-training and validation sets.

  The `online` source trains on fresh problems, but its standardisation statistics still come from
  the fixed set, generated in memory.

  Args:
    config: the run's training settings.
    simulator: the simulator.
    data_dir: where the `disk` source keeps its store (in `data_dir/train`).
    executor: optional process pool for a numpy simulator.
  """
  # The (small) validation set first: a simulator broken on much of its prior stops the run there,
  # with examples of where, before a large meta-training set is simulated.
  validation = data_lib.generate_problems(simulator, config.num_validation_problems,
                                          config.num_obs, config.seed, data_lib.VALIDATION_STREAM)
  problems, store = None, None
  recipe = (simulator, config.num_problems, config.num_obs, config.seed, data_lib.TRAIN_STREAM)
  if config.data_source == "disk":
    store = problem_store(data_dir).create(*recipe, executor=executor)
  else:
    problems = data_lib.generate_problems(*recipe, executor=executor)
  return MetaTrainingData(problems, store, validation)


def adapt_machine(machine: InferenceMachine, data: MetaTrainingData) -> None:
  """Sets the standardisation statistics from the meta-training set (one streaming pass over a
  store)."""
  if data.problems is not None:
    machine.adapt(data.problems.theta, data.problems.observations)
    return
  per_chunk = [machine.problem_moments(chunk.theta, chunk.observations)
               for chunk in data.store.iterate_chunks()]   # small: two Moments per chunk
  machine.set_moments(*(functools.reduce(Moments.merge, moments) for moments in zip(*per_chunk)))

