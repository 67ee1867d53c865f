r"""What the answer settings buy: tail averaging (`--tail_averaging`) and where inference starts
(`--start`), which change how the answer is read off a trained machine, not its weights.

  python -m benchmarks.answer_settings --workdirs=runs/poisson,runs/gaussian --fractions=0,0.5 \
      --starts=prior_draw,prior_mean

Each trained run is read off with every fraction `f` and start `s`: a copy of the run under
--output_root gets `tail_averaging = f`, `start = s` and its std recalibrated by the library's own
`calibrate_run` (what rerunning the training command with `--tail_averaging=f --start=s` does). On
--num_problems held-out problems (the run's test stream), per inference seed and parameter: the
RMSE of the answer at t = 10, at --report_step and at the horizon divided by the reference's (the
exact posterior mean where the simulator has one, else its reference estimator), the flatness of the
RMSE from t = 10 on (largest / smallest), how many problems are more than 4 exact posterior std
from theta* at some t >= 10, and the coverage of the 68% / 95% intervals at --report_step.
"""

import dataclasses
import os
import shutil

from absl import app, flags
import numpy as np
import tensorflow as tf

from alfi_tf import Inferrer, load_machine, metrics
from alfi_tf.evaluation.references import reference_estimates
from alfi_tf.training import data as data_lib
from alfi_tf.training.calibration import calibrate_run
from alfi_tf.workdir import Workdir

flags.DEFINE_list("workdirs", None, "trained runs (read only)")
flags.DEFINE_list("fractions", ["0", "0.5"], "tail_averaging values to compare")
flags.DEFINE_list("starts", ["prior_draw"], "start values to compare")
flags.DEFINE_string("output_root", "runs/answer_settings", "where the recalibrated copies go")
flags.DEFINE_integer("num_problems", 500, "held-out problems")
flags.DEFINE_integer("num_steps", 30, "inference horizon")
flags.DEFINE_integer("report_step", 15, "the step whose coverage is reported")
flags.DEFINE_list("seeds", ["0", "1", "2"], "inference seeds")
flags.mark_flag_as_required("workdirs")
FLAGS = flags.FLAGS

FIRST_STEP = 10


def read_off_with(workdir: str, fraction: float, start: str) -> str:
  """`workdir` itself if it already answers with `fraction` and `start`, else a recalibrated copy
  of it."""
  machine_config, train_config = Workdir(workdir).read_config()
  if (machine_config.tail_averaging, machine_config.start) == (fraction, start):
    return workdir
  # Named after the run's last two path components: runs/comparison/<simulator>/alfi_1 differ in
  # the simulator only.
  name = "_".join(os.path.normpath(os.path.abspath(workdir)).split(os.sep)[-2:])
  copy = os.path.join(FLAGS.output_root, f"{name}_tail_averaging_{fraction:g}_{start}")
  if not os.path.exists(copy):
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("tb", "lock", "*.png"))
  run = Workdir(copy)
  run.claim(dataclasses.replace(machine_config, tail_averaging=fraction, start=start),
            train_config)
  machine = load_machine(copy)
  calibrate_run(run, machine, train_config, tf.train.latest_checkpoint(run.checkpoints))
  return copy


def report(workdir: str, label: str) -> None:
  machine = load_machine(workdir)
  _, train_config = Workdir(workdir).read_config()
  test = data_lib.generate_problems(machine.simulator, FLAGS.num_problems, train_config.num_obs,
                                    train_config.seed, data_lib.TEST_STREAM)
  references = reference_estimates(machine.simulator, test.observations)
  name = "posterior_mean" if "posterior_mean" in references else "mle"
  reference_rmse = metrics.rmse(references[name], test.theta)
  inferrer = Inferrer(machine, num_steps=FLAGS.num_steps, batch_size=FLAGS.num_problems)
  t = FLAGS.report_step
  for seed in map(int, FLAGS.seeds):
    result = inferrer(test.observations, seed=seed)
    ratio = metrics.rmse_per_step(result.trajectory_mean, test.theta) / reference_rmse  # [T, d]
    coverage = metrics.interval_coverage(result.trajectory_mean[:, t - 1],
                                         result.trajectory_std[:, t - 1], test.theta)
    stragglers = (metrics.far_from_truth(result.trajectory_mean, test.theta,
                                         references["posterior_std"], FIRST_STEP).sum(axis=0)
                  if "posterior_std" in references else None)
    flatness = metrics.flatness(ratio, FIRST_STEP)
    for j, parameter in enumerate(machine.simulator.parameter_names):
      far = "" if stragglers is None else f"; >4 posterior std at t>={FIRST_STEP}: {stragglers[j]}"
      print(f"{workdir} {label} seed={seed} {parameter}: RMSE / {name} "
            f"t={FIRST_STEP} {ratio[FIRST_STEP - 1, j]:.3f} t={t} {ratio[t - 1, j]:.3f} "
            f"t={FLAGS.num_steps} {ratio[-1, j]:.3f}; flatness {flatness[j]:.3f}{far}; "
            f"coverage t={t} {coverage['0.68'][j]:.3f} / {coverage['0.95'][j]:.3f}", flush=True)


def main(argv):
  del argv
  fractions = [float(value) for value in FLAGS.fractions]
  if not FIRST_STEP <= FLAGS.report_step <= FLAGS.num_steps:
    raise app.UsageError(f"--report_step must lie in [{FIRST_STEP}, --num_steps]")
  for workdir in FLAGS.workdirs:
    for fraction in fractions:
      for start in FLAGS.starts:
        report(read_off_with(workdir, fraction, start), f"f={fraction:g} start={start}")


if __name__ == "__main__":
  app.run(main)
