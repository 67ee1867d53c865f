r"""Where the time of one meta-training step goes, for the paper configs.

  python -m benchmarks.profile_step [--configs=poisson_paper,weinberg_paper] [--calls=20] [--windows=3]

Times compiled sub-functions that do one step's worth of each part, with the step's shapes:

* the simulator alone: `T` calls on `batch * M` parameter vectors, `N` observations each;
* the set encoder, forward and backward: `T` calls on the simulated sets plus one on the observed data;
* the optimizer: one Adam update with fixed gradients (the step clips them before);
* the whole step (`Trainer.train_step`); "rest" is what the three parts leave of it: proposals,
  scores, the aggregator and the LSTM updater with their backward pass, the losses, the cross-replica
  sum and clipping of the gradients (the batch itself comes from the prefetched input pipeline).

The parts are timed interleaved, round-robin per window, and the median per window is reported, so
a load change on a shared machine affects them alike. Then a few steps are traced with tf.profiler
(to a temporary directory, offline) and the op time is summed by op type. The step runs without XLA,
as training does by default. Run it on an otherwise idle machine.
"""

import collections
import glob
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Tuple

from absl import app, flags
import tensorflow as tf
from tensorflow.core.profiler.protobuf import xplane_pb2  # pylint: disable=g-direct-tensorflow-import

from benchmarks.train_throughput import encoder_gflop_per_step, make_trainer, paper_configs

# --configs and --windows are train_throughput's flags (defined on import).
flags.DEFINE_integer("calls", 20, "calls of each part per timed window")
flags.DEFINE_integer("traced_steps", 5, "steps traced with tf.profiler for the op-type breakdown "
                     "(0 skips it)")
flags.DEFINE_integer("top_ops", 8, "op types listed in the breakdown")
FLAGS = flags.FLAGS


def median_milliseconds(parts: Dict[str, Callable[[], tf.Tensor]], calls: int,
                        windows: int) -> Dict[str, float]:
  """Median over `windows` of the mean time per call of each part, in ms, timed round-robin."""
  for part in parts.values():   # trace and warm up
    part()
  times = {name: [] for name in parts}
  for _ in range(windows):
    for name, part in parts.items():
      start = time.perf_counter()
      for _ in range(calls):
        result = part()
      tf.nest.map_structure(lambda t: t.numpy(), result)   # wait for the last call
      times[name].append((time.perf_counter() - start) / calls * 1e3)
  return {name: statistics.median(values) for name, values in times.items()}


def op_type_breakdown(step: Callable[[], tf.Tensor], num_steps: int) -> List[Tuple[str, float]]:
  """`(op type, share of the total op time)` of `num_steps` steps traced by tf.profiler, largest first.

  Sums the durations of the TensorFlow op events on the executor threads of the host plane (their
  display name is the op type). Ops run concurrently on the inter-op threads, so shares are of the
  summed op time, not of the wall time. A pseudo type "(set encoder, any op)" sums every op under the
  encoder's name scope, its gradient included.
  """
  with tempfile.TemporaryDirectory() as logdir:
    tf.profiler.experimental.start(logdir)
    for _ in range(num_steps):
      result = step()
    tf.nest.map_structure(lambda t: t.numpy(), result)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
      space.ParseFromString(f.read())
  durations = collections.Counter()
  encoder = 0.0
  for plane in space.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_Compute"):
        continue
      for event in line.events:
        metadata = plane.event_metadata[event.metadata_id]
        if metadata.display_name:   # an op event ("scope/name:Type"), not executor bookkeeping
          durations[metadata.display_name] += event.duration_ps
          encoder += event.duration_ps if "set_encoder" in metadata.name else 0.0
  total = sum(durations.values())
  shares = [(op_type, duration / total) for op_type, duration in durations.most_common()]
  return [("(set encoder, any op)", encoder / total)] + shares


def profile(name: str) -> Tuple[Dict[str, float], List[Tuple[str, float]]]:
  """Milliseconds per step of the whole step and of its parts (and the encoder's GFLOP/s), and the
  op-type breakdown of the step."""
  machine_config, train_config = paper_configs(name)
  with tempfile.TemporaryDirectory() as workdir:
    trainer, batches = make_trainer(machine_config, train_config, workdir, jit=False)
    machine, simulator = trainer.machine, trainer.simulator
    batch, mc = train_config.batch_size, machine_config
    theta = simulator.prior.sample(batch * mc.num_samples, seed=tf.constant([1, 2]))
    observations = next(batches)[1]
    simulated_sets = tf.random.stateless_normal(
        [mc.num_steps, batch, mc.num_samples, mc.num_simulated_obs, simulator.observation_dim],
        seed=[3, 4])
    encoder_variables = machine.encoder.trainable_variables
    variables = machine.trainable_variables
    gradients = [tf.fill(tf.shape(v), 1e-6) for v in variables]

    @tf.function
    def simulate_step():
      return [simulator.simulate(theta, mc.num_simulated_obs, tf.constant([t, 5]))
              for t in range(mc.num_steps)]

    @tf.function
    def encoder_step():
      with tf.GradientTape() as tape:
        encoded = [machine.encoder(machine.standardize_observations(observations))]
        encoded += [machine.encoder(simulated_sets[t]) for t in range(mc.num_steps)]
        total = tf.add_n([tf.reduce_sum(e) for e in encoded])
      return tape.gradient(total, encoder_variables)

    @tf.function
    def optimizer_step():
      trainer.optimizer.apply_gradients(zip(gradients, variables))
      return trainer.optimizer.iterations

    def train_step():
      return trainer.train_step(*next(batches)[:3])

    milliseconds = median_milliseconds({
        "step": train_step,
        "simulator": simulate_step,
        "encoder": encoder_step,
        "optimizer": optimizer_step,
    }, FLAGS.calls, FLAGS.windows)
    op_types = op_type_breakdown(train_step, FLAGS.traced_steps) if FLAGS.traced_steps else []
  milliseconds["rest"] = milliseconds["step"] - sum(
      milliseconds[part] for part in ("simulator", "encoder", "optimizer"))
  milliseconds["encoder_gflops"] = encoder_gflop_per_step(
      machine_config, train_config, simulator.observation_dim) / (milliseconds["encoder"] / 1e3)
  return milliseconds, op_types


def main(argv):
  del argv
  parts = ("simulator", "encoder", "optimizer", "rest")
  labels = {"simulator": "simulator alone", "encoder": "set encoder fwd+bwd",
            "optimizer": "Adam update", "rest": "rest of the step"}
  for name in FLAGS.configs:
    result, op_types = profile(name)
    print(f"{name}: {result['step']:.1f} ms per step ({1e3 / result['step']:.1f} steps/s), "
          f"median of {FLAGS.windows} interleaved windows of {FLAGS.calls} calls")
    for part in parts:
      print(f"  {labels[part]:<22}{result[part]:>8.2f} ms {100 * result[part] / result['step']:>6.1f}%")
    print(f"  set encoder: {result['encoder_gflops']:.1f} GFLOP/s (forward + backward)")
    if op_types:
      print(f"  op types, share of the op time of {FLAGS.traced_steps} traced steps:")
      for op_type, share in op_types[:FLAGS.top_ops + 1]:
        print(f"    {op_type:<30}{100 * share:>6.1f}%")
  print("(rest = proposals, scores, aggregator, LSTM updater and their backward, losses, gradient "
        "clipping; the parts are timed separately, so the shares are estimates)")


if __name__ == "__main__":
  app.run(main)
