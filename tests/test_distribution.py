"""tf.distribute training: TF_CONFIG validation, the mirrored step's arithmetic, mirrored and
two-worker runs that train as well as one device."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from alfi_tf.training import data as data_lib
from alfi_tf.training import distribute, rendezvous
from alfi_tf.config import TrainConfig
from alfi_tf.model.inference import Inferrer
from alfi_tf.training import Trainer
from alfi_tf.workdir import load_machine
from tests.binary_runs import ROOT, binary_env
from tests.test_training import TINY_TRAIN, seeded_trainer

GOOD = {"cluster": {"worker": ["localhost:2222", "localhost:2223"]},
        "task": {"type": "worker", "index": 1}}


def test_a_valid_tf_config_parses():
  assert distribute.parse_tf_config(json.dumps(GOOD)) == GOOD


@pytest.mark.parametrize("raw, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("  ", "needs the TF_CONFIG environment variable"),
    ("{cluster: 1}", "not JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    (json.dumps({"task": GOOD["task"]}), "'cluster' must be an object"),
    (json.dumps({**GOOD, "cluster": {"ps": ["a:1"], "worker": ["b:2"]}}), "unsupported job 'ps'"),
    (json.dumps({**GOOD, "cluster": {"worker": []}}), "cluster.worker must be a non-empty list"),
    (json.dumps({**GOOD, "cluster": {"worker": ["localhost"]}}),
     "cluster.worker[0] must be a 'host:port' string"),
    (json.dumps({**GOOD, "cluster": {"worker": ["localhost:http"]}}),
     "cluster.worker[0] has no valid port"),
    (json.dumps({**GOOD, "cluster": {"worker": ["a:1", "a:1"]}}),
     "addresses used by more than one task: a:1"),
    (json.dumps({**GOOD, "cluster": {"chief": ["a:1", "b:2"], "worker": ["c:3"]}}),
     "at most one chief"),
    (json.dumps({"cluster": GOOD["cluster"]}), "'task' must be an object"),
    (json.dumps({**GOOD, "task": {"type": "chief", "index": 0}}),
     "task.type 'chief' is not a job of the cluster"),
    (json.dumps({**GOOD, "task": {"type": "worker", "index": "1"}}),
     "task.index must be an integer"),
    (json.dumps({**GOOD, "task": {"type": "worker", "index": 2}}),
     "task.index 2 is out of range for the 2 worker address(es)"),
])
def test_invalid_tf_config_is_named(raw, message):
  with pytest.raises(ValueError, match="TF_CONFIG") as info:
    distribute.parse_tf_config(raw)
  assert message in str(info.value)


def test_multi_worker_strategy_refuses_invalid_tf_config(monkeypatch):
  monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1"]}}')
  with pytest.raises(ValueError, match="'task' must be an object"):
    distribute.make_strategy("multi_worker")
  with pytest.raises(ValueError, match="strategy must be one of"):
    distribute.make_strategy("tpu")


def _mirrored() -> tf.distribute.Strategy:
  return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def test_batch_must_split_evenly_across_replicas(tmp_path):
  config = TrainConfig(**{**TINY_TRAIN.__dict__, "batch_size": 15})
  with pytest.raises(ValueError, match=r"batch_size \(15\) must be a multiple of the number of "
                                       r"replicas \(2\)"):
    seeded_trainer(config, str(tmp_path / "run"), strategy=_mirrored())


def test_mirrored_step_sums_the_replicas_gradients_and_clips_once(tmp_path):
  """One mirrored step equals, on one device: each replica's half of the batch with its own seed,
  the mean of their losses, the gradient of that mean clipped by its global norm, one Adam update."""
  config = TrainConfig(**{**TINY_TRAIN.__dict__, "grad_clip_norm": 0.05})   # so clipping acts
  mirrored = seeded_trainer(config, str(tmp_path / "mirrored"), strategy=_mirrored())
  single = seeded_trainer(config, str(tmp_path / "single"))
  assert (mirrored.replicas, single.replicas) == (2, 1)
  problems = data_lib.generate_problems(single.simulator, 16, 50, seed=4, stream=0)
  single.machine.adapt(problems.theta, problems.observations)
  for target, source in zip(mirrored.machine.weights, single.machine.weights):
    target.assign(source)
  theta, observations = tf.constant(problems.theta), tf.constant(problems.observations)
  seed = tf.constant([7, 8])

  loss, norm, _ = mirrored.train_step(theta, observations, seed)

  variables = single.machine.trainable_variables
  with tf.GradientTape() as tape:
    expected_loss = tf.add_n([
        single.meta_loss(theta[r * 8:(r + 1) * 8], observations[r * 8:(r + 1) * 8],
                         tf.random.experimental.stateless_fold_in(seed, r)) for r in range(2)]) / 2
  gradients = tape.gradient(expected_loss, variables)
  clipped, expected_norm = tf.clip_by_global_norm(gradients, 0.05)
  single.optimizer.apply_gradients(zip(clipped, variables))
  np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-5)
  np.testing.assert_allclose(float(norm), float(expected_norm), rtol=1e-4)
  assert float(expected_norm) > 0.05
  for a, b in zip(mirrored.machine.trainable_variables, variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def _fixed_batch_loss(trainer: Trainer) -> float:
  problems = data_lib.generate_problems(trainer.simulator, 64, 50, seed=11, stream=0)
  return float(trainer.meta_loss(tf.constant(problems.theta), tf.constant(problems.observations),
                                 tf.constant([5, 6])))


def test_mirrored_training_reaches_the_single_device_loss(tmp_path):
  single = seeded_trainer(TINY_TRAIN, str(tmp_path / "single"), log_every=1000)
  single_result = single.train()
  mirrored = seeded_trainer(TINY_TRAIN, str(tmp_path / "mirrored"), log_every=1000,
                            strategy=_mirrored())
  before = _fixed_batch_loss(mirrored)
  mirrored_result = mirrored.train()
  assert mirrored.step == single.step == TINY_TRAIN.total_steps
  after, reference = _fixed_batch_loss(mirrored), _fixed_batch_loss(single)
  assert after < before - 1.0, (before, after)
  # Within half a nat per problem of one device's NLL, and a held-out RMSE no more than 1.5x.
  assert after < reference + 0.5, (after, reference)
  rmse, single_rmse = (result.validation_rmse["log_rate"]
                       for result in (mirrored_result, single_result))
  assert rmse < 1.5 * single_rmse, (rmse, single_rmse)


def _free_ports(count: int):
  sockets = [socket.socket() for _ in range(count)]
  for sock in sockets:
    sock.bind(("localhost", 0))
  ports = [sock.getsockname()[1] for sock in sockets]
  for sock in sockets:
    sock.close()
  return ports


TINY_FLAGS = [
    "--simulator=poisson", "--num_problems=64", "--num_obs=50", "--epochs=20", "--batch_size=16",
    "--num_steps=3", "--num_samples=4", "--num_simulated_obs=8", "--encoder_hidden=16",
    "--encoder_out=8", "--aggregator_hidden=16", "--aggregator_out=8", "--updater_hidden=16",
    "--lstm_units=8", "--bound=1.0", "--observation_transform=log1p", "--learning_rate=3e-3",
    "--num_validation_problems=16", "--validate_every=40", "--checkpoint_every=20", "--seed=3",
    "--calibration_problems=32", "--calibration_horizon=4",
]


def _train_command(workdir, *flags):
  return [sys.executable, "-m", "experiments.train", *TINY_FLAGS, f"--workdir={workdir}", *flags]


def _validation_rmse(workdir) -> float:
  with open(os.path.join(workdir, "training_summary.json")) as stream:
    return json.load(stream)["validation_rmse"]["log_rate"]


@pytest.fixture(scope="module")
def single_device_rmse(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("single") / "run"
  result = subprocess.run(_train_command(workdir), cwd=ROOT, env=binary_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return _validation_rmse(workdir)


def test_two_worker_training_on_localhost(tmp_path, single_device_rmse):
  workdir = tmp_path / "run"
  cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
  # A time-based cadence that is always due: the workers agree to save at every step.
  workers = [subprocess.Popen(
      _train_command(workdir, "--strategy=multi_worker", "--checkpoint_every_minutes=1e-6"),
      cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env=binary_env(TF_CONFIG=json.dumps({"cluster": cluster,
                                           "task": {"type": "worker", "index": index}})))
      for index in range(2)]
  try:
    outputs = [worker.communicate(timeout=300) for worker in workers]
  finally:   # a worker left alone would wait for its peer forever
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
  for worker, (_, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-3000:]
  chief_stdout = outputs[0][0]
  assert "trained 80 steps on 2 replica(s)" in chief_stdout
  assert outputs[1][0] == "", "only the chief reports"
  assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-80")
  assert not os.path.exists(workdir / "workers" / "worker-1"), "the worker's scratch copy is gone"
  rmse = _validation_rmse(workdir)
  assert rmse < 1.5 * single_device_rmse, (rmse, single_device_rmse)


def test_a_worker_whose_peer_never_starts_stops_naming_it(tmp_path):
  """MultiWorkerMirroredStrategy would wait for the peer for ever, deaf to Ctrl-C and SIGTERM."""
  ports = _free_ports(2)
  cluster = {"worker": [f"localhost:{port}" for port in ports]}
  result = subprocess.run(
      _train_command(tmp_path / "run", "--strategy=multi_worker", "--worker_timeout=2"),
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=binary_env(TF_CONFIG=json.dumps({"cluster": cluster,
                                           "task": {"type": "worker", "index": 0}})))
  assert result.returncode == 1, result.stderr[-3000:]
  assert (f"error: multi-worker rendezvous: worker:1 (localhost:{ports[1]}) did not answer within "
          f"2 s (--worker_timeout); is every task started, with the same TF_CONFIG cluster? "
          f"(this task: worker:0, localhost:{ports[0]})") in result.stderr
  assert "Traceback" not in result.stderr


def test_the_rendezvous_meets_every_task_and_frees_their_ports():
  ports = _free_ports(3)
  cluster = {"chief": [f"localhost:{ports[0]}"],
             "worker": [f"localhost:{port}" for port in ports[1:]]}
  tasks = [("chief", 0), ("worker", 0), ("worker", 1)]
  errors = []

  def meet(job, index, delay):
    time.sleep(delay)   # tasks start at different times
    try:
      rendezvous.wait_for_peers({"cluster": cluster, "task": {"type": job, "index": index}}, 30)
    except Exception as error:   # pylint: disable=broad-except
      errors.append(error)

  threads = [threading.Thread(target=meet, args=(job, index, 0.7 * order))
             for order, (job, index) in enumerate(tasks)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(60)
  assert errors == [] and not any(thread.is_alive() for thread in threads)
  for port in ports:   # the strategy's servers bind them next
    with socket.create_server(("", port)):
      pass


def test_a_rendezvous_on_a_port_in_use_is_named():
  with socket.create_server(("", 0)) as taken:
    port = taken.getsockname()[1]
    config = {"cluster": {"worker": [f"localhost:{port}", "localhost:1"]},
              "task": {"type": "worker", "index": 0}}
    with pytest.raises(RuntimeError, match=f"this task \\(worker:0\\) cannot listen on its "
                                           f"TF_CONFIG address localhost:{port}"):
      rendezvous.wait_for_peers(config, 5)


def test_mirrored_binary_over_two_cpu_devices(tmp_path, single_device_rmse):
  workdir = tmp_path / "run"
  result = subprocess.run(_train_command(workdir, "--strategy=mirrored", "--cpu_devices=2"),
                          cwd=ROOT, env=binary_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "trained 80 steps on 2 replica(s)" in result.stdout
  rmse = _validation_rmse(workdir)
  assert rmse < 1.5 * single_device_rmse, (rmse, single_device_rmse)
  # The mirrored run's checkpoint serves single-device inference.
  machine = load_machine(str(workdir))
  problems = data_lib.generate_problems(machine.simulator, 16, 50, seed=3, stream=1)
  result = Inferrer(machine)(problems.observations, seed=0)
  assert np.sqrt(np.mean((result.mean - problems.theta) ** 2)) < 1.5 * rmse + 0.1


def test_binary_names_an_invalid_tf_config(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(_train_command(workdir, "--strategy=multi_worker"), cwd=ROOT,
                          env=binary_env(TF_CONFIG='{"cluster": {"worker": ["localhost:99999"]}, '
                                                   '"task": {"type": "worker", "index": 0}}'),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "invalid TF_CONFIG: cluster.worker[0] has no valid port" in result.stderr
  assert not workdir.exists()
