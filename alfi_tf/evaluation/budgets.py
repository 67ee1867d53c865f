"""Simulation budgets, counted the same way for every method: simulated *observations* (one draw
`x ~ p(x | theta)`), split into what training spends once and what each data set then costs.

* ALFI trains on its meta-training problems (`num_problems * n`, plus `batch * n` fresh problems a
  step with `--data_source=online`) and the validation set (`num_validation_problems * n`), and
  simulates `T M N` observations per problem at every step (`batch * T M N` a step) and at every
  validation (`num_validation_problems * T M N_a`, `N_a` the answer's `N`,
  `MachineConfig.simulated_obs`); a finished run recalibrates its std on
  `calibration_problems * n` fresh problems, each run for the calibration horizon `T_c`
  (`calibration_problems * T_c M N_a`), and for a machine that answers with `R_a = answer_starts
  > 1` runs, `R_a` runs more of each (`calibration_problems * R_a T_c M N_a`). A data set then
  costs `R T_test M N_a` (R starts, by default `R_a`).
* NPE trains on `num_problems * n` and costs nothing per data set.
* Rejection ABC trains nothing and costs `J N_ABC` per data set (`J` candidate draws).

A run resumed after an interruption simulates its fixed sets again; these counts are those of one
uninterrupted run.
"""

from __future__ import annotations

from typing import Dict

from alfi_tf.config import MachineConfig, TrainConfig
from alfi_tf.training.calibration import calibration_horizon


def alfi_training_simulations(machine_config: MachineConfig, train_config: TrainConfig,
                              steps: int) -> Dict[str, int]:
  """What `steps` meta-training steps simulate, by item, and their `total`.

  Validation runs every `validate_every` steps and after the last one (as `Trainer.train` does),
  at the training horizon; the calibration once the run reaches its last step.
  """
  n, batch = train_config.num_obs, train_config.batch_size
  # Validation runs the machine as it answers: at `answer_simulated_obs` where that is set.
  training_run, answer_run = (machine_config.num_steps * machine_config.num_samples
                              * machine_config.simulated_obs(training)
                              for training in (True, False))
  validations = steps // train_config.validate_every + (steps % train_config.validate_every > 0)
  counts = {
      "meta_training_problems": train_config.num_problems * n,
      "online_problems": steps * batch * n if train_config.data_source == "online" else 0,
      "validation_problems": train_config.num_validation_problems * n,
      "training_steps": steps * batch * training_run,
      "validation_runs": validations * train_config.num_validation_problems * answer_run,
      "calibration_problems": 0, "calibration_runs": 0,
  }
  if steps == train_config.total_steps:
    horizon = calibration_horizon(machine_config, train_config)
    counts["calibration_problems"] = train_config.calibration_problems * n
    # One single run of each problem, and R more for the pooled factors (`calibrate`).
    runs = 1 + (machine_config.answer_starts if machine_config.answer_starts > 1 else 0)
    counts["calibration_runs"] = (train_config.calibration_problems * runs * horizon
                                  * machine_config.num_samples * machine_config.simulated_obs())
  counts["total"] = sum(counts.values())
  return counts


def alfi_inference_simulations(machine_config: MachineConfig, num_steps: int,
                               num_starts: int = 1) -> int:
  """Simulated observations per data set: `num_starts * num_steps * M * N` (`N` the answer's,
  `MachineConfig.simulated_obs`)."""
  return num_starts * num_steps * machine_config.num_samples * machine_config.simulated_obs()
