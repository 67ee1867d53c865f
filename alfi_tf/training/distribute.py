"""`tf.distribute` strategies for meta-training, and validation of a multi-worker `TF_CONFIG`.

* `default`: one device (the default strategy).
* `mirrored`: `MirroredStrategy` over every GPU of this host, or, on a host without GPUs, over its
  logical CPU devices (`configure_cpu_devices` splits the CPU into several, e.g. to test).
* `multi_worker`: `MultiWorkerMirroredStrategy` across hosts (or processes), configured by the
  `TF_CONFIG` environment variable, which every worker sets with the same cluster and its own task:

      TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                  "task": {"type": "worker", "index": 0}}'

Each training step's global batch is split evenly across all replicas (`batch_size` must be a
multiple of their number) and the gradients are summed across them before the update.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from absl import logging
import tensorflow as tf

from alfi_tf.training import rendezvous

STRATEGIES = ("default", "mirrored", "multi_worker")
#: Job names of a synchronous multi-worker cluster (parameter servers are another strategy; a
#: side-car evaluator does not train).
_JOBS = ("chief", "worker")


def configure_cpu_devices(count: int) -> None:
  """Splits the host CPU into `count` logical devices (before TensorFlow initialises its runtime).

  With several logical CPUs, `mirrored` runs that many replicas on a host without GPUs: a way to
  exercise data-parallel training on any machine (it does not add compute).
  """
  if count < 1:
    raise ValueError(f"the number of CPU devices must be positive, got {count}")
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
  except RuntimeError as error:
    raise RuntimeError("CPU devices must be configured before TensorFlow runs its first "
                       f"operation: {error}") from None


def _fail(message: str) -> None:
  raise ValueError(f"invalid TF_CONFIG: {message}")


def _check_address(job: str, index: int, address: Any) -> None:
  where = f"cluster.{job}[{index}]"
  if not isinstance(address, str) or address.count(":") < 1:
    _fail(f"{where} must be a 'host:port' string, got {address!r}")
  host, _, port = address.rpartition(":")
  if not host:
    _fail(f"{where} has no host: {address!r}")
  if not port.isdigit() or not 0 < int(port) < 65536:
    _fail(f"{where} has no valid port (1-65535): {address!r}")


def parse_tf_config(raw: Optional[str]) -> Dict[str, Any]:
  """Parses and validates a multi-worker `TF_CONFIG`, naming the first problem found.

  Args:
    raw: the variable's value (None or empty when it is not set).

  Returns:
    The parsed `{"cluster": {...}, "task": {"type": ..., "index": ...}}`.

  Raises:
    ValueError: it is missing, not JSON, or does not describe this task in a worker cluster.
  """
  example = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
             '"task": {"type": "worker", "index": 0}}')
  if not raw or not raw.strip():
    raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable, set on "
                     f"every worker with the same cluster and its own task, e.g. {example}")
  try:
    config = json.loads(raw)
  except json.JSONDecodeError as error:
    raise ValueError(f"invalid TF_CONFIG: not JSON ({error}); expected e.g. {example}") from None
  if not isinstance(config, dict):
    _fail(f"expected a JSON object, got {type(config).__name__}")
  cluster, task = config.get("cluster"), config.get("task")
  if not isinstance(cluster, dict) or not cluster:
    _fail(f"'cluster' must be an object mapping job names to address lists, e.g. {example}")
  for job, addresses in cluster.items():
    if job not in _JOBS:
      _fail(f"unsupported job {job!r} in cluster (multi_worker uses {', '.join(_JOBS)})")
    if not isinstance(addresses, list) or not addresses:
      _fail(f"cluster.{job} must be a non-empty list of 'host:port' addresses")
    for index, address in enumerate(addresses):
      _check_address(job, index, address)
  if "worker" not in cluster and "chief" not in cluster:
    _fail("the cluster has no 'worker' (or 'chief') job")
  if len(cluster.get("chief", [])) > 1:
    _fail(f"at most one chief, got {len(cluster['chief'])}")
  addresses = [address for job in cluster.values() for address in job]
  repeated = sorted({address for address in addresses if addresses.count(address) > 1})
  if repeated:
    _fail(f"addresses used by more than one task: {', '.join(repeated)}")
  if not isinstance(task, dict):
    _fail("'task' must be an object like {\"type\": \"worker\", \"index\": 0}")
  task_type, index = task.get("type"), task.get("index")
  if task_type not in cluster:
    _fail(f"task.type {task_type!r} is not a job of the cluster ({', '.join(cluster)})")
  if isinstance(index, bool) or not isinstance(index, int):
    _fail(f"task.index must be an integer, got {index!r}")
  if not 0 <= index < len(cluster[task_type]):
    _fail(f"task.index {index} is out of range for the {len(cluster[task_type])} "
          f"{task_type} address(es)")
  return config


def make_strategy(name: str, worker_timeout: float = 900.0) -> tf.distribute.Strategy:
  """Creates the named strategy (see the module docstring). Call before building any model.

  Args:
    name: one of `STRATEGIES`.
    worker_timeout: for `multi_worker`, the seconds every task of the cluster has to answer
      (`rendezvous.wait_for_peers`) before the strategy, which would wait for a missing one for
      ever, is created.

  Raises:
    ValueError: an unknown name, or an invalid `TF_CONFIG` for `multi_worker`.
    RuntimeError: some task of the cluster did not answer within `worker_timeout`.
  """
  if name not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
  if name == "multi_worker":
    rendezvous.wait_for_peers(parse_tf_config(os.environ.get("TF_CONFIG")), worker_timeout)
    return tf.distribute.MultiWorkerMirroredStrategy()
  if os.environ.get("TF_CONFIG"):
    logging.warning("TF_CONFIG is set but --strategy=%s ignores it (use multi_worker)", name)
  if name == "default":
    return tf.distribute.get_strategy()
  gpus = tf.config.list_logical_devices("GPU")
  devices = [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]
  return tf.distribute.MirroredStrategy(devices)


def task(strategy: tf.distribute.Strategy) -> Optional[Dict[str, Any]]:
  """`{"type", "index", "has_chief"}` of this process in a multi-worker cluster, else None."""
  resolver = strategy.cluster_resolver
  if resolver is None or not resolver.task_type:
    return None
  return {"type": resolver.task_type, "index": int(resolver.task_id),
          "has_chief": "chief" in resolver.cluster_spec().jobs}


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run's checkpoints, summaries and logs of record.

  The chief is the `chief` task if the cluster has one, else worker 0; single-host runs are chiefs.
  """
  this = task(strategy)
  if this is None:
    return True
  return this["type"] == "chief" or (this["type"] == "worker" and this["index"] == 0
                                     and not this["has_chief"])


def worker_name(strategy: tf.distribute.Strategy) -> str:
  """`chief`, or `worker-<index>` etc., for logs and per-worker scratch directories."""
  this = task(strategy)
  return "chief" if this is None else f"{this['type']}-{this['index']}"
