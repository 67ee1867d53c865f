r"""Infers parameters for observed data with an exported (or trained) machine.

  python -m experiments.infer --model=exports/weinberg --observations=data.npy
  python -m experiments.infer --model=exports/lv --observations=data.csv \
      --simulator_command="./my_simulator --fast" --output=result.json --plot=trajectory.png

Prints, per data set and parameter, the estimate, std and central 68%/95% intervals of the final
proposal; writes JSON with the whole trajectory. Without --simulator_command the simulator runs
inside the graph (TF-native simulators) or, for a simulator registered in alfi_tf, in this process.
See alfi_tf/simulators/command.py for the --simulator_command protocol.
"""

import functools
import json
import os

from absl import app, flags
import numpy as np

from alfi_tf.config import SEED_RANGE
from alfi_tf.evaluation.plots import is_own_figure, plot_trajectory
from alfi_tf.serving.deploy import DeployedMachine
from alfi_tf.metrics import central_interval_z
from alfi_tf.model.inference import resolve_starts
from alfi_tf.simulators.command import CommandSimulator, split_command
from alfi_tf.serving.observation_files import load_observations
from alfi_tf.simulators import get_simulator
from alfi_tf.workdir import write_json_atomically
from experiments import cli

flags.DEFINE_string("model", None, "an export directory (or a training workdir)")
flags.DEFINE_string("observations", None, "observations: .npy, .npz or .csv")
flags.DEFINE_integer("seed", 0, "seed of the inference run (an int32)")
flags.register_validator("seed", lambda seed: SEED_RANGE[0] <= seed <= SEED_RANGE[1],
                         message=f"--seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] "
                                 "(an int32 seed)")
flags.DEFINE_string("simulator_command", None, "external simulator executable, run once per step")
cli.define_simulator_timeout()
flags.declare_key_flag("simulator_timeout")   # defined in cli, listed by --helpshort
flags.DEFINE_integer("num_starts", None, "runs per data set from independent starts, combined as "
                     "an equal-weight mixture (alfi_tf.model.inference.pool_starts); R times the "
                     "simulations (default: the machine's answer_starts, 1 for older exports)")
flags.register_validator("num_starts", lambda starts: starts is None or starts >= 1,
                         message="--num_starts must be a positive integer")
flags.DEFINE_string("output", "inference.json", "JSON file for the estimates and trajectory (an "
                    "existing file is replaced only if it is an earlier result)")
flags.DEFINE_string("plot", None, "optional PNG of the trajectory of mean +- std (an existing file "
                    "is replaced only if it is an earlier figure)")
flags.mark_flags_as_required(["model", "observations"])
FLAGS = flags.FLAGS

_LEVELS = (0.68, 0.95)
#: The keys every result file has; an existing --output is replaced only if it has them all.
_RESULT_KEYS = frozenset({"model", "observations", "seed", "num_steps", "parameter_names",
                          "datasets"})


def _is_result_file(path: str) -> bool:
  """Whether `path` holds the JSON result of an earlier `alfi-infer` (and may be replaced)."""
  try:
    with open(path) as stream:
      content = json.load(stream)
  except (OSError, ValueError):
    return False
  return isinstance(content, dict) and _RESULT_KEYS <= content.keys()


def _check_flags() -> None:
  """Refuses --output and --plot before the model loads where writing them could lose a file, or
  where they name no file at all, and an empty --model, --observations or --simulator_command."""
  for name, what in (("model", "an export directory or a training workdir"),
                     ("observations", "a .npy, .npz or .csv file"),
                     ("output", "a JSON file for the result")):
    if not FLAGS[name].value:   # an unset shell variable: --model="$EXPORT"
      raise app.UsageError(f"--{name} must name {what}, got an empty path")
  if FLAGS.simulator_command is not None:
    if not FLAGS.simulator_command.strip():
      # An unset shell variable (--simulator_command="$SIM") must not quietly mean the machine's
      # own simulator.
      raise app.UsageError("--simulator_command must name a program, got an empty one; leave the "
                           "flag out to run the machine's own simulator")
    try:
      split_command(FLAGS.simulator_command)
    except ValueError as error:
      raise app.UsageError(f"--simulator_command: {error}") from None
  cli.check_output_file("output", FLAGS.output, _is_result_file, "an inference result (JSON)")
  if FLAGS.plot is None:
    return
  if not FLAGS.plot.lower().endswith(".png"):
    raise app.UsageError(f"--plot must name a .png file, got {FLAGS.plot!r}")
  if os.path.abspath(FLAGS.plot) == os.path.abspath(FLAGS.output):
    raise app.UsageError(f"--plot and --output name the same file ({FLAGS.plot})")
  cli.check_output_file("plot", FLAGS.plot, functools.partial(is_own_figure, plot=plot_trajectory),
                        "a trajectory figure (PNG)")


def _run(machine: DeployedMachine, observations: np.ndarray, num_starts: int):
  if FLAGS.simulator_command:
    if machine.design_dim:
      raise app.UsageError(
          f"--simulator_command: this machine simulates at the observed data's design (its "
          f"simulator's first {machine.design_dim} observation column(s)), which an external "
          "command cannot be given; run without --simulator_command (the export's own simulator)")
    simulate = CommandSimulator(FLAGS.simulator_command, machine.parameter_names,
                                machine.observation_dim, timeout=FLAGS.simulator_timeout)
    return machine.run(observations, simulate, FLAGS.seed, num_starts)
  if machine.can_infer:
    return machine.infer(observations, FLAGS.seed, num_starts)
  spec = machine.metadata.get("simulator_spec", machine.metadata["simulator"])
  try:
    simulator = get_simulator(spec)
  except ValueError as error:
    raise app.UsageError(f"the export's simulator is not TF-native, so it runs here, but it cannot "
                         f"be built ({error}); repair or restore it, or pass --simulator_command "
                         "to simulate with an external program") from None
  machine.check_simulator(simulator, f"--model={FLAGS.model}")
  simulate = simulator.simulate_at_design if machine.design_dim else simulator.simulate
  return machine.run(observations, simulate, FLAGS.seed, num_starts)


def _summary(machine: DeployedMachine, result) -> list:
  datasets = []
  for index in range(result.mean.shape[0]):
    parameters = {}
    for p, name in enumerate(machine.parameter_names):
      mean, std = float(result.mean[index, p]), float(result.std[index, p])
      entry = {"estimate": mean, "std": std}
      for level in _LEVELS:
        z = central_interval_z(level)
        entry[f"interval_{round(level * 100)}"] = [mean - z * std, mean + z * std]
      parameters[name] = entry
    datasets.append({
        "parameters": parameters,
        "trajectory_mean": result.trajectory_mean[index].tolist(),
        "trajectory_std": result.trajectory_std[index].tolist(),
        # Simulated sets with NaN/inf, left out of the updates (None: an export without the count).
        "failed_simulated_sets": (None if result.failed_sets is None
                                  else int(result.failed_sets[index])),
        # Why the answer is an extrapolation, not to trust (empty: no sign of one).
        "extrapolation": list(result.extrapolations[index]),
    })
  return datasets


def main(argv):
  del argv   # checked by cli.run
  _check_flags()
  machine = DeployedMachine.load(FLAGS.model)
  observations = load_observations(FLAGS.observations, machine.observation_dim,
                                   machine.metadata["machine_config"]["observation_transform"])
  num_starts = resolve_starts(FLAGS.num_starts, machine.answer_starts)
  machine.require_memory_for_starts(observations, num_starts, name="--num_starts")
  result = _run(machine, observations, num_starts)
  datasets = _summary(machine, result)
  for index, dataset in enumerate(datasets):
    print(f"data set {index} ({observations.shape[1]} observations):")
    print(f"  {'parameter':<18}{'estimate':>12}{'std':>11}{'68% interval':>26}{'95% interval':>26}")
    for name, entry in dataset["parameters"].items():
      low68, high68 = entry["interval_68"]
      low95, high95 = entry["interval_95"]
      print(f"  {name:<18}{entry['estimate']:>12.5g}{entry['std']:>11.3g}"
            f"{f'[{low68:.5g}, {high68:.5g}]':>26}{f'[{low95:.5g}, {high95:.5g}]':>26}")
  write_json_atomically(FLAGS.output, {
      "model": FLAGS.model, "observations": FLAGS.observations, "seed": FLAGS.seed,
      "num_starts": num_starts,
      "simulator": machine.metadata["simulator"], "num_steps": machine.num_steps,
      "parameter_names": list(machine.parameter_names), "datasets": datasets})
  print(f"wrote {FLAGS.output}")
  if FLAGS.plot:
    plot_trajectory(FLAGS.plot, machine.parameter_names, result.trajectory_mean,
                    result.trajectory_std)
    print(f"wrote {FLAGS.plot}")


def entry_point() -> None:
  """The installed `alfi-infer` command."""
  cli.run(main)


if __name__ == "__main__":
  entry_point()
