"""Recalibrating a trained machine's std on fresh problems (`alfi_tf.model.calibration`), and the
run's record of it, `calibration.json`, which `load_machine` applies."""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from alfi_tf import metrics
from alfi_tf.config import (DEFAULT_TEST_HORIZON, MAX_STEPS, MachineConfig, TrainConfig,
                            answer_settings)
from alfi_tf.model.calibration import PooledStdScales, fit_mean_shifts, fit_std_scales
from alfi_tf.model.inference import Inferrer
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.training import data as data_lib
from alfi_tf.workdir import (CALIBRATION_FILE, REFIT_ADVICE, Workdir, apply_calibration,
                             calibration_fits)

#: Offset of the calibration runs' inference seed from the run's seed (evaluation uses 1..5)...
INFERENCE_SEED_OFFSET = 7
#: ... and of the pooled runs' (`MachineConfig.answer_starts`), whose starts and simulations are
#: then not those the per-run factors were fitted on.
POOLED_INFERENCE_SEED_OFFSET = 8


def calibration_horizon(machine_config: MachineConfig, train_config: TrainConfig) -> int:
  """The steps calibrated: `train_config.calibration_horizon`, or by default twice the training
  horizon and at least twice the test horizon, so that running on past `T` stays calibrated."""
  return (train_config.calibration_horizon
          or min(max(2 * machine_config.num_steps, 2 * DEFAULT_TEST_HORIZON), MAX_STEPS))


def calibrate(machine: InferenceMachine, train_config: TrainConfig,
              batch_size: int = 256) -> Dict[str, Any]:
  """Fits and sets `machine`'s std factors on `train_config.calibration_problems` problems drawn
  from the prior on the run's calibration seed stream (never trained or validated on).

  With `machine.config.answer_starts = R > 1` it then fits the factors of answers pooled over
  `R` runs on the same problems (`_calibrate_pooled`).

  Returns:
    The record for `calibration.json`: the shifts and factors (`[C, d]` each), what they were
    fitted on, and the 68% / 95% coverage per step on those problems before and after (`[C, d]`
    each); with `R > 1` also the pooled factors and their coverage before and after
    (`pooled_*`).
  """
  started = time.time()
  horizon = calibration_horizon(machine.config, train_config)
  problems = data_lib.generate_problems(machine.simulator, train_config.calibration_problems,
                                        train_config.num_obs, train_config.seed,
                                        data_lib.CALIBRATION_STREAM)
  machine.set_std_scales(None)
  machine.set_mean_shifts(None)
  machine.set_pooled_std_scales(None)
  # Calibrated past the test horizon (twice the training horizon by default) by design, so that
  # longer inference has factors too: no warning about a horizon the user did not choose.
  inferrer = functools.partial(Inferrer, machine, num_steps=horizon, batch_size=batch_size,
                               warn_past_horizon=False)
  result = inferrer()(
      problems.observations, seed=train_config.seed + INFERENCE_SEED_OFFSET, num_starts=1)
  # The shifts and factors move and rescale the proposal in its own standardised space (the same
  # as in raw units where the map between them is affine: `alfi_tf.model.parameter_space`).
  # A tensor, not the result's numpy array: some families slice psi, which keeps numpy numpy.
  trajectory_psi = tf.constant(result.trajectory_psi)
  mean = machine.proposal.mean(trajectory_psi).numpy()                       # [K, C, d]
  std = machine.proposal.stddev(trajectory_psi).numpy()
  theta = machine.parameter_space.forward(problems.theta).numpy()            # [K, d]
  shifts = fit_mean_shifts(mean, std, theta)
  shifted = mean + shifts * std
  scales = fit_std_scales(shifted, std, theta)
  machine.set_mean_shifts(shifts)
  machine.set_std_scales(scales)
  record = {"std_scales": scales.tolist(), "mean_shifts": shifts.tolist(),
            "num_problems": train_config.calibration_problems,
            "num_obs": train_config.num_obs, "horizon": horizon, "seed": train_config.seed,
            "coverage_before": _coverage(mean, std, theta),
            "coverage_after": _coverage(shifted, std * scales, theta)}
  if machine.config.answer_starts > 1:
    # A new Inferrer: the first one's graph holds the machine's factors as they were (none).
    record.update(_calibrate_pooled(inferrer(),
                                    problems, train_config.seed + POOLED_INFERENCE_SEED_OFFSET))
  record["seconds"] = time.time() - started
  logging.info("recalibrated the std on %d fresh problems in %.0fs: factors at step %d: %s",
               train_config.calibration_problems, record["seconds"], machine.config.num_steps,
               np.array2string(scales[machine.config.num_steps - 1], precision=3))
  return record


def _coverage(mean: np.ndarray, std: np.ndarray, theta: np.ndarray) -> Dict[str, Any]:
  """Level -> `[C, d]` coverage of the answers `mean`, `std` `[K, C, d]` of `theta [K, d]`."""
  per_level = metrics.interval_coverage(mean, std, theta[:, None])
  return {level: np.asarray(value).tolist() for level, value in per_level.items()}


def _calibrate_pooled(inferrer: Inferrer, problems: data_lib.Problems,
                      seed: int) -> Dict[str, Any]:
  """Fits and sets the factors of answers pooled over `R = answer_starts` runs of the calibrated
  machine (its per-run factors applied, `inference.pool_starts`) on `problems`; `inferrer` runs
  it for the calibration horizon `C`.

  Pooling happens in raw units, so they are fitted there, to the pooled answers' trajectories.

  Returns:
    The `calibration.json` entries: `pooled_std_scales` (`PooledStdScales.to_json`, `[C, d]`
    factors) and the pooled answers' coverage per step before and after (`[C, d]` each).
  """
  machine = inferrer.machine
  num_starts = machine.config.answer_starts
  result = inferrer(problems.observations, seed=seed, num_starts=num_starts)
  mean, std = result.trajectory_mean, result.trajectory_std                 # [K, C, d]
  scales = fit_std_scales(mean, std, problems.theta)
  pooled = PooledStdScales(num_starts, scales)
  machine.set_pooled_std_scales(pooled)
  logging.info("recalibrated the std of answers pooled over %d starts: factors at step %d: %s",
               num_starts, machine.config.num_steps,
               np.array2string(scales[machine.config.num_steps - 1], precision=3))
  return {"pooled_std_scales": pooled.to_json(),
          "pooled_coverage_before": _coverage(mean, std, problems.theta),
          "pooled_coverage_after": _coverage(mean, std * scales, problems.theta)}


def calibrate_run(workdir: Workdir, machine: InferenceMachine, train_config: TrainConfig,
                  checkpoint: Optional[str]) -> None:
  """Calibrates the run's final `checkpoint` (restored into `machine`) unless `calibration.json`
  already holds factors fitted to it with these settings, and records them."""
  if not train_config.calibration_problems or checkpoint is None:
    return
  fitted_on = {"num_problems": train_config.calibration_problems,
               "horizon": calibration_horizon(machine.config, train_config)}
  recorded = workdir.read_calibration()
  if (recorded is not None and calibration_fits(machine, recorded, checkpoint)
      and all(recorded.get(key) == value for key, value in fitted_on.items())):
    try:
      apply_calibration(machine, recorded, checkpoint, workdir.file(CALIBRATION_FILE))
      return
    except ValueError as error:   # our own record, damaged: fitted again
      logging.warning("%s; refitting it", str(error).removesuffix(REFIT_ADVICE))
  workdir.write_calibration({**calibrate(machine, train_config), **fitted_on,
                             "checkpoint": os.path.basename(checkpoint),
                             **answer_settings(machine.config)})


def warn_if_unfinished(workdir: str) -> None:
  """Logs a warning when `workdir`'s newest checkpoint is not a finished, calibrated run: training
  stopped before its last step (killed, or a time-boxed session), or ended before calibration.

  `evaluate` and `export` still use such a machine (a partly trained machine is worth a look),
  but its answers are not what the finished run would give, and their std are not recalibrated.
  """
  run = Workdir(workdir)
  _, train_config = run.read_config()
  state = tf.train.get_checkpoint_state(run.checkpoints)
  if state is None:
    return   # nothing to load: load_machine names the problem
  # CheckpointKeeper numbers checkpoints by their training step: `ckpt-STEP`.
  step = os.path.basename(state.model_checkpoint_path).rpartition("-")[2]
  if not step.isdigit():
    return
  reached, planned = int(step), train_config.total_steps
  if reached < planned:
    logging.warning("%s is an unfinished run: training stopped at step %d of %d, and the std is "
                    "not calibrated (calibration runs when training ends); rerun the training "
                    "command to finish it", workdir, reached, planned)
  elif train_config.calibration_problems and run.read_calibration() is None:
    logging.warning("%s finished training (step %d of %d) but its calibration is missing (the "
                    "run stopped while calibrating): the std is not calibrated; rerun the "
                    "training command to fit it", workdir, reached, planned)
