"""The meta-dataset pipeline: parallel, on-disk and in-memory sets agree; batches are a pure
function of the step; stores are written atomically and checked against their recipe."""

import json
import os
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from alfi_tf.training import data as data_lib
from alfi_tf.training import pipeline
from alfi_tf.config import TrainConfig
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.model.normalization import Moments
from alfi_tf.simulators import get_simulator
from tests.test_training import TINY_MACHINE, TINY_TRAIN, seeded_trainer

CONFIG = TrainConfig(num_problems=40, num_obs=30, epochs=3, batch_size=8, seed=5,
                     shuffle_buffer=16)


def _assert_same_problems(a: data_lib.Problems, b: data_lib.Problems):
  np.testing.assert_array_equal(a.theta, b.theta)
  np.testing.assert_array_equal(a.observations, b.observations)


@pytest.mark.parametrize("name", ["poisson", "weinberg", "lotka_volterra"])
def test_store_streams_back_the_in_memory_problems(tmp_path, name):
  simulator = get_simulator(name)
  in_memory = data_lib.generate_problems(simulator, 50, 20, seed=2, stream=0, chunk_size=16)
  store = data_lib.ProblemStore(str(tmp_path / "train")).create(simulator, 50, 20, seed=2,
                                                                stream=0, chunk_size=16)
  streamed = [(theta.numpy(), obs.numpy()) for theta, obs in store.problems()]
  _assert_same_problems(in_memory, data_lib.Problems(np.stack([t for t, _ in streamed]),
                                                     np.stack([o for _, o in streamed])))
  # Reopening checks the recipe and reuses the files.
  again = data_lib.ProblemStore(store.path).create(simulator, 50, 20, seed=2, stream=0,
                                                   chunk_size=16)
  assert len(list(again.iterate_chunks())) == 4


def test_chunking_and_seeds_define_the_set():
  simulator = get_simulator("poisson")
  whole = data_lib.generate_problems(simulator, 30, 10, seed=1, stream=0, chunk_size=8)
  prefix = data_lib.generate_problems(simulator, 20, 10, seed=1, stream=0, chunk_size=8)
  # The first chunks do not depend on how many follow; another stream is another set.
  np.testing.assert_array_equal(whole.theta[:16], prefix.theta[:16])
  other = data_lib.generate_problems(simulator, 30, 10, seed=1, stream=1, chunk_size=8)
  assert not np.array_equal(whole.theta, other.theta)
  assert whole.theta.shape == (30, 1) and whole.observations.shape == (30, 10, 1)


def test_numpy_simulator_in_worker_processes_gives_the_same_problems():
  simulator = get_simulator("lotka_volterra")
  pool = data_lib.worker_pool(simulator, 2)
  assert pool is not None
  with pool:
    parallel = data_lib.generate_problems(simulator, 24, 5, seed=3, stream=0, chunk_size=6,
                                          executor=pool)
  _assert_same_problems(parallel, data_lib.generate_problems(simulator, 24, 5, seed=3, stream=0,
                                                             chunk_size=6))


def test_worker_pool_only_for_numpy_simulators():
  assert data_lib.worker_pool(get_simulator("weinberg"), 4) is None
  assert data_lib.worker_pool(get_simulator("lotka_volterra"), 1) is None
  with pytest.raises(ValueError, match="num_workers must be >= 0"):
    data_lib.worker_pool(get_simulator("lotka_volterra"), -1)


def test_store_with_another_recipe_is_refused(tmp_path):
  simulator = get_simulator("poisson")
  path = str(tmp_path / "train")
  data_lib.ProblemStore(path).create(simulator, 20, 10, seed=2, stream=0)
  with pytest.raises(ValueError, match=r"num_obs: store has 10, requested 12") as info:
    data_lib.ProblemStore(path).create(simulator, 20, 12, seed=3, stream=0)
  assert "seed: store has 2, requested 3" in str(info.value)


def test_store_never_overwrites_a_foreign_directory(tmp_path):
  (tmp_path / "train").mkdir()
  (tmp_path / "train" / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="holds no alfi_problems.json"):
    data_lib.ProblemStore(str(tmp_path / "train")).create(get_simulator("poisson"), 20, 10, 2, 0)
  with pytest.raises(FileNotFoundError, match="no problem store"):
    data_lib.ProblemStore(str(tmp_path / "missing")).chunks()


def test_partial_store_of_a_killed_generation_is_discarded(tmp_path):
  path = str(tmp_path / "train")
  dead = f"{path}.partial-{os.uname().nodename}-999999999"   # no such process
  os.makedirs(dead)
  store = data_lib.ProblemStore(path).create(get_simulator("poisson"), 20, 10, 2, 0)
  assert store.exists() and not os.path.exists(dead)
  assert sorted(os.listdir(tmp_path)) == ["train"]


def _damage_manifest(store, text):
  with open(os.path.join(store.path, store.MANIFEST), "w") as stream:
    stream.write(text)


def _truncate_a_data_file(store, keep):
  shard = next(os.path.join(root, name) for root, _, names in os.walk(store.path)
               for name in names if name.endswith(".snapshot"))
  with open(shard, "rb") as stream:
    content = stream.read()
  with open(shard, "wb") as stream:
    stream.write(content[:keep])
  return os.path.relpath(shard, store.path)


@pytest.mark.parametrize("damage, message", [
    (lambda store: _damage_manifest(store, "not json{"), "alfi_problems.json is not valid JSON"),
    (lambda store: _damage_manifest(store, "[1, 2]"), "holds a list, not a JSON object"),
    (lambda store: _truncate_a_data_file(store, 100), ".snapshot has 100 bytes"),
    (lambda store: _truncate_a_data_file(store, 0) and os.remove(
        os.path.join(store.path, "snapshot.metadata")), "snapshot.metadata is missing"),
])
def test_a_damaged_store_is_named_when_it_is_opened(tmp_path, damage, message):
  """A store changed after its generation (a partial copy, a truncated file, an edited manifest)
  is refused when a run opens it, naming the store and what is damaged, before any batch."""
  simulator = get_simulator("poisson")
  path = str(tmp_path / "train")
  damage(data_lib.ProblemStore(path).create(simulator, 20, 10, 2, 0))
  with pytest.raises(ValueError, match=f"problem store {path} is damaged") as error:
    data_lib.ProblemStore(path).create(simulator, 20, 10, 2, 0)
  assert message in str(error.value) and "Delete it" in str(error.value)
  assert os.path.exists(path)   # refused, never deleted: it may be the user's only copy


def overwrite_in_place(store, suffix, offset=None):
  """Inverts 8 bytes of the store's file ending in `suffix` (at `offset`, default its middle), as
  a faulty disk or copy does: its size, which the manifest records, stays the same. Returns the
  file's path in the store."""
  path = next(os.path.join(root, name) for root, _, names in os.walk(store.path)
              for name in names if name.endswith(suffix))
  offset = os.path.getsize(path) // 2 if offset is None else offset
  with open(path, "r+b") as stream:
    stream.seek(offset)
    content = stream.read(8)
    stream.seek(offset)
    stream.write(bytes(byte ^ 0xFF for byte in content))
  return os.path.relpath(path, store.path)


@pytest.mark.parametrize("suffix, offset, failure", [
    (".snapshot", None, "corrupted record at"),   # a shard's records fail their checksums
    ("dataset_spec.pb", 10, "Wire format was corrupt"),   # the protobuf that Dataset.load parses
    ("snapshot.metadata", 5, "as binary proto"),   # ... and the one its op parses
])
def test_a_store_corrupted_in_place_is_named_when_it_is_read(tmp_path, suffix, offset, failure):
  """Bytes overwritten in place pass the size check of the store's opening (and, in a store
  written before its manifest kept digests, the small files' too); reading the store (the
  streaming pass of the statistics, the training batches) used to die with TensorFlow's
  DataLossError, naming neither the store nor its file."""
  simulator = get_simulator("poisson")
  path = str(tmp_path / "train")
  corrupted = overwrite_in_place(data_lib.ProblemStore(path).create(simulator, 40, 30, 5, 0),
                                 suffix, offset)
  _forget_digests(path)
  store = data_lib.ProblemStore(path).create(simulator, 40, 30, 5, 0)   # sizes still match
  config = TrainConfig(**{**CONFIG.__dict__, "data_source": "disk"})
  readers = {
      "statistics": lambda: list(store.iterate_chunks()),
      "training batches": lambda: list(store.with_corruption_named(iter(
          pipeline.training_batches(config, simulator, 0, store=store)))),
  }
  for reader, read in readers.items():
    with pytest.raises(ValueError, match=f"^problem store {path} is damaged: {corrupted} is "
                                         "corrupted") as error:
      read()
    assert failure in str(error.value) and "Delete it" in str(error.value), reader
  assert os.path.exists(path)   # refused, never deleted: it may be the user's only copy


def _forget_digests(path: str) -> None:
  """Makes the store at `path` one written before its manifest recorded digests."""
  manifest_path = os.path.join(path, data_lib.ProblemStore.MANIFEST)
  with open(manifest_path) as stream:
    manifest = json.load(stream)
  del manifest["digests"]
  with open(manifest_path, "w") as stream:
    json.dump(manifest, stream)


@pytest.mark.parametrize("name", sorted(data_lib.ProblemStore.PROTOBUF_FILES))
@pytest.mark.parametrize("offset", [0, 5, 10])
def test_a_small_store_file_overwritten_in_place_is_refused_at_opening(tmp_path, name, offset):
  """Some overwrites of the small protocol-buffer files still parse (and would be read as another
  layout, or not at all): their digests refuse them as soon as the store is opened."""
  simulator = get_simulator("poisson")
  path = str(tmp_path / "train")
  store = data_lib.ProblemStore(path).create(simulator, 40, 30, 5, 0)
  assert sorted(store.read_recipe()["digests"]) == sorted(data_lib.ProblemStore.PROTOBUF_FILES)
  overwrite_in_place(store, name, offset)
  with pytest.raises(ValueError, match=f"^problem store {path} is damaged: {name} was "
                                       "overwritten in place .* Delete it"):
    data_lib.ProblemStore(path).create(simulator, 40, 30, 5, 0)
  assert os.path.exists(path)


def test_a_resumed_run_names_its_store_corrupted_in_place(tmp_path):
  """A resumed run reads its store first in the training steps (its statistics are restored, not
  streamed again): the Trainer names the corrupted file there too."""
  config = TrainConfig(**{**TINY_TRAIN.__dict__, "data_source": "disk"})
  workdir = str(tmp_path / "run")
  seeded_trainer(config, workdir, log_every=1000).train(stop_at_step=1)   # checkpointed
  store = pipeline.problem_store(os.path.join(workdir, "data"))
  corrupted = overwrite_in_place(store, ".snapshot")
  with pytest.raises(ValueError, match=f"^problem store {store.path} is damaged: {corrupted} is "
                                       "corrupted"):
    seeded_trainer(config, workdir, log_every=1000).train()


def test_worker_processes_leave_ctrl_c_to_the_training_process():
  """A Ctrl-C reaches the whole process group: the workers neither die of it (a broken pool) nor
  print a KeyboardInterrupt traceback each; the training process stops the run."""
  with data_lib.WorkerPool(1) as pool:
    worker = pool.submit(os.getpid).result(timeout=120)
    simulating = pool.submit(time.sleep, 2.0)   # a simulator call under way
    time.sleep(0.5)
    os.kill(worker, signal.SIGINT)
    try:
      assert simulating.result(timeout=60) is None
    except KeyboardInterrupt:   # the worker's own, carried back with its call
      pytest.fail("the worker process was interrupted by the Ctrl-C")
    assert pool.submit(os.getpid).result(timeout=60) == worker


def test_streaming_a_store_raises_no_autograph_warning(tmp_path, caplog):
  """The disk source's per-epoch dataset is not converted by AutoGraph, which cannot read the
  source of the store's file checks (`os.path.exists`, frozen in Python 3.11) and warned of it
  on every run."""
  store = data_lib.ProblemStore(str(tmp_path / "train")).create(get_simulator("poisson"), 40, 30,
                                                                 5, 0)
  config = TrainConfig(**{**CONFIG.__dict__, "data_source": "disk"})
  next(iter(pipeline.training_batches(config, get_simulator("poisson"), 3, store=store)))
  assert "AutoGraph could not transform" not in caplog.text


def test_streamed_moments_equal_the_whole_set_moments():
  data = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 3))
  merged = Moments.of(data[:1], 3)
  for start in range(1, 1000, 97):
    merged = merged.merge(Moments.of(data[start:start + 97], 3))
  whole = Moments.of(data, 3)
  assert merged.count == whole.count == 1000
  np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
  np.testing.assert_allclose(merged.sum_squares, whole.sum_squares, rtol=1e-10)


def _batches(config, start, **sources):
  dataset = pipeline.training_batches(config, get_simulator("poisson"), start, **sources)
  return [tuple(t.numpy() for t in element) for element in dataset]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  simulator = get_simulator("poisson")
  path = str(tmp_path_factory.mktemp("store") / "train")
  args = (simulator, CONFIG.num_problems, CONFIG.num_obs, CONFIG.seed, data_lib.TRAIN_STREAM)
  return {"memory": {"problems": data_lib.generate_problems(*args)},
          "disk": {"store": data_lib.ProblemStore(path).create(*args)},
          "online": {}}


def test_disk_batches_do_not_depend_on_the_global_seed(sources):
  """A global seed of 0 (the default run seed) used to crash `shuffle`'s tensor seed; any other
  one used to change the order."""
  config = TrainConfig(**{**CONFIG.__dict__, "data_source": "disk"})
  orders = []
  try:
    for global_seed in (0, 7, None):
      tf.random.set_seed(global_seed)
      orders.append(np.concatenate([batch[0] for batch in _batches(config, 0, **sources["disk"])]))
  finally:
    tf.random.set_seed(None)
  for order in orders[1:]:
    np.testing.assert_array_equal(order, orders[0])


@pytest.mark.parametrize("source", ["memory", "disk", "online"])
def test_batches_are_a_pure_function_of_the_step(sources, source):
  config = TrainConfig(**{**CONFIG.__dict__, "data_source": source})
  everything = _batches(config, 0, **sources[source])
  assert len(everything) == config.total_steps == 15
  theta, observations, seed, redrawn = everything[0]
  assert theta.shape == (8, 1) and observations.shape == (8, 30, 1) and seed.shape == (2,)
  assert all(element[3] == 0 for element in everything)   # Poisson never returns NaN
  for start in (7, 11):   # resuming mid-epoch gives the uninterrupted run's batches
    resumed = _batches(config, start, **sources[source])
    for expected, actual in zip(everything[start:], resumed):
      for a, b in zip(expected, actual):
        np.testing.assert_array_equal(a, b)
  if source != "online":   # each epoch visits 5 * 8 = 40 distinct problems: all of them
    for epoch in range(3):
      thetas = np.concatenate([batch[0] for batch in everything[epoch * 5:(epoch + 1) * 5]])
      np.testing.assert_array_equal(np.sort(thetas[:, 0]),
                                    np.sort(sources["memory"]["problems"].theta[:, 0]))
    first, second = (np.concatenate([b[0] for b in everything[e * 5:(e + 1) * 5]])
                     for e in range(2))
    assert not np.array_equal(first, second), "epochs are reshuffled"


def test_machine_seeds_match_the_training_step_seeds():
  config = TrainConfig(**{**CONFIG.__dict__, "data_source": "online"})
  batches = _batches(config, 3)
  machine_seed, problem_seed = pipeline.training_step_seeds(config.seed, 3)
  np.testing.assert_array_equal(batches[0][2], machine_seed.numpy())
  theta, observations = get_simulator("poisson").sample_problems(8, 30, problem_seed)
  np.testing.assert_array_equal(batches[0][0], theta.numpy())


def test_memory_and_disk_runs_get_the_same_data_and_statistics(tmp_path):
  """`meta_training_data` holds the same problems in memory as on disk, and `adapt_machine`'s
  streaming pass over the store gives the statistics of the whole set."""
  simulator = get_simulator("poisson")
  runs = {}
  for source in ("memory", "disk"):
    config = TrainConfig(**{**CONFIG.__dict__, "data_source": source})
    data = pipeline.meta_training_data(config, simulator, str(tmp_path / source))
    machine = InferenceMachine(simulator, TINY_MACHINE)
    pipeline.adapt_machine(machine, data)
    runs[source] = data, machine
  (in_memory, memory_machine), (on_disk, disk_machine) = runs["memory"], runs["disk"]
  assert in_memory.store is None and on_disk.problems is None
  assert os.path.isdir(tmp_path / "disk" / "train")
  streamed = list(on_disk.store.iterate_chunks())
  _assert_same_problems(in_memory.problems,
                        data_lib.Problems(np.concatenate([c.theta for c in streamed]),
                                          np.concatenate([c.observations for c in streamed])))
  _assert_same_problems(in_memory.validation, on_disk.validation)
  assert in_memory.validation.theta.shape == (CONFIG.num_validation_problems, 1)
  for memory_weight, disk_weight in zip(memory_machine.non_trainable_weights,
                                        disk_machine.non_trainable_weights):
    np.testing.assert_allclose(np.asarray(memory_weight), np.asarray(disk_weight), rtol=1e-5)
  assert float(memory_machine.theta_standardizer.std[0]) != 1.0


def test_pipeline_requires_its_source():
  with pytest.raises(ValueError, match="needs the meta-training problems"):
    pipeline.training_batches(CONFIG, get_simulator("poisson"))
  with pytest.raises(ValueError, match="needs a ProblemStore"):
    pipeline.training_batches(TrainConfig(**{**CONFIG.__dict__, "data_source": "disk"}),
                              get_simulator("poisson"))
  with pytest.raises(ValueError, match=r"start_step must be in \[0, 15\]"):
    pipeline.training_batches(CONFIG, get_simulator("poisson"), 16)


def test_concurrent_generation_keeps_the_first_complete_store(tmp_path, monkeypatch):
  """Workers of a multi-worker run may generate the same store at once on a shared filesystem."""
  simulator = get_simulator("poisson")
  path = str(tmp_path / "train")
  rename, getpid = os.rename, os.getpid

  def lose_the_race(source, target):
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "getpid", lambda: 1)       # another process (pid 1 is alive)...
    data_lib.ProblemStore(target).create(simulator, 20, 10, 2, 0)   # ...completes it first
    monkeypatch.setattr(os, "getpid", getpid)
    rename(source, target)

  monkeypatch.setattr(os, "rename", lose_the_race)
  store = data_lib.ProblemStore(path).create(simulator, 20, 10, 2, 0)
  assert sorted(os.listdir(tmp_path)) == ["train"], "the losing partial store is removed"
  expected = data_lib.generate_problems(simulator, 20, 10, 2, 0)
  np.testing.assert_array_equal(np.concatenate([c.theta for c in store.iterate_chunks()]),
                                expected.theta)
