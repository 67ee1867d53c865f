"""Validation of the configuration dataclasses: every bad value is refused by name at construction,
non-finite floats included (they pass `<= 0` checks and would hang or poison training)."""

import dataclasses
import json
import math
import re
import typing

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from alfi_tf.config import (MAX_STEPS, SEED_RANGE, MachineConfig, TrainConfig, answer_settings,
                            recorded_answer_settings, to_dict)
from alfi_tf.training.calibration import calibration_horizon
from alfi_tf.workdir import Workdir
from tests.binary_runs import assert_rejected

CONFIGS = (MachineConfig, TrainConfig)


def _fields_of_type(config_class, hint):
  hints = typing.get_type_hints(config_class)
  return [(config_class, field.name) for field in dataclasses.fields(config_class)
          if hints[field.name] is hint]


FLOAT_FIELDS = [pair for config in CONFIGS for pair in _fields_of_type(config, float)]
INT_FIELDS = [pair for config in CONFIGS for pair in _fields_of_type(config, int)]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("config_class, name", FLOAT_FIELDS,
                         ids=[f"{c.__name__}.{n}" for c, n in FLOAT_FIELDS])
def test_non_finite_floats_are_refused_by_name(config_class, name, value):
  with pytest.raises(ValueError, match=f"^{name} must be a finite number, got {value}"):
    config_class(**{name: value})


@pytest.mark.parametrize("value", [1e300, -1e39, 1e-300], ids=["huge", "-huge", "tiny"])
@pytest.mark.parametrize("config_class, name", FLOAT_FIELDS,
                         ids=[f"{c.__name__}.{n}" for c, n in FLOAT_FIELDS])
def test_floats_float32_cannot_hold_are_refused_by_name(config_class, name, value):
  """1e300 became inf in the graph (a NaN loss at step 2), 1e-300 zero."""
  with pytest.raises(ValueError, match=f"^{name} must be zero or of a magnitude that float32 "
                                       rf"holds .*, got {re.escape(repr(value))}$"):
    config_class(**{name: value})


@pytest.mark.parametrize("config_class, name", INT_FIELDS,
                         ids=[f"{c.__name__}.{n}" for c, n in INT_FIELDS])
def test_int_fields_refuse_fractions_and_booleans(config_class, name):
  # A machine's beyond int32 (num_samples=10**30, say) failed deep in TensorFlow; the training
  # sizes beyond memory are named by the memory checks, with what they need.
  beyond_int32 = (2 ** 31, -2 ** 31 - 1, 10 ** 30) if config_class is MachineConfig else ()
  for value in (2.5, True, np.bool_(True)) + beyond_int32:
    with pytest.raises(ValueError, match=f"^{name} must be an integer"):
      config_class(**{name: value})


def test_numpy_scalars_become_python_numbers_that_a_run_can_record():
  """`np.int64(3)` passed, then the Trainer died writing config.json ("Object of type int64 is not
  JSON serializable"), leaving an empty workdir."""
  machine = MachineConfig(num_steps=np.int64(3), bound=np.float32(0.5), moment_features=np.True_)
  train = TrainConfig(epochs=np.int32(2), learning_rate=np.float64(1e-3))
  assert (type(machine.num_steps), type(machine.bound), type(machine.moment_features)) == (
      int, float, bool)
  assert (machine.num_steps, machine.bound, train.epochs, train.learning_rate) == (3, 0.5, 2, 1e-3)
  json.dumps([dataclasses.asdict(machine), dataclasses.asdict(train)])


@pytest.mark.parametrize("seed", [SEED_RANGE[0] - 1, SEED_RANGE[1] + 1, 2 ** 40])
def test_seed_outside_int32_is_refused(seed):
  with pytest.raises(ValueError, match=r"^seed must be an integer in .* \(an int32 seed\)"):
    TrainConfig(seed=seed)


def test_wrong_types_are_named():
  with pytest.raises(ValueError, match="^moment_features must be true or false, got 1"):
    MachineConfig(moment_features=1)
  with pytest.raises(ValueError, match="^loss must be a string, got 3"):
    TrainConfig(loss=3)


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(FLOAT_FIELDS),
       value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10 ** 6, 10 ** 6))
def test_any_float_setting_builds_or_fails_naming_the_field(field, value):
  """Whatever number a user passes, the result is a valid config or a ValueError naming the field
  (never another exception, never a silently accepted non-finite value)."""
  config_class, name = field
  try:
    config = config_class(**{name: value})
  except ValueError as error:
    assert str(error).startswith(name), error
  else:
    assert math.isfinite(getattr(config, name))


@pytest.mark.parametrize("config_class, name", [(MachineConfig, "num_steps"),
                                                (TrainConfig, "calibration_horizon")])
def test_horizons_beyond_the_unrolling_limit_are_refused(config_class, name):
  assert getattr(config_class(**{name: MAX_STEPS}), name) == MAX_STEPS
  with pytest.raises(ValueError, match=rf"^{name} must be at most {MAX_STEPS} \(the machine's loop "
                                       rf"is unrolled into the graph.*got 100000$"):
    config_class(**{name: 100000})


def test_the_default_calibration_horizon_stays_within_the_limit():
  assert calibration_horizon(MachineConfig(num_steps=MAX_STEPS), TrainConfig()) == MAX_STEPS
  assert calibration_horizon(MachineConfig(num_steps=10), TrainConfig()) == 30


def test_answer_starts_must_be_a_positive_integer():
  with pytest.raises(ValueError, match="^answer_starts must be positive, got 0$"):
    MachineConfig(answer_starts=0)
  for value in (math.nan, 2.5, True):
    with pytest.raises(ValueError, match="^answer_starts must be an integer"):
      MachineConfig(answer_starts=value)


def test_answer_starts_flags_outside_the_positive_integers_are_refused_by_name(tmp_path):
  assert_rejected("experiments.train", [
      (["--answer_starts=0"], "answer_starts must be positive, got 0"),
      (["--answer_starts=nan"], "flag --answer_starts=nan: invalid literal for int()"),
      (["--answer_starts=2.5"], "flag --answer_starts=2.5: invalid literal for int()"),
  ], ["--flagfile=experiments/configs/poisson.cfg"], tmp_path)


def test_answer_simulated_obs_replaces_the_trainings_n_only_outside_training(tmp_path):
  config = MachineConfig(num_simulated_obs=20, answer_simulated_obs=500)
  assert (config.simulated_obs(), config.simulated_obs(training=True)) == (500, 20)
  assert MachineConfig(num_simulated_obs=20).simulated_obs() == 20   # 0: the training's
  with pytest.raises(ValueError, match=r"^answer_simulated_obs must be positive, or 0 for "
                                       r"num_simulated_obs \(20\), got -1$"):
    MachineConfig(answer_simulated_obs=-1)
  assert_rejected("experiments.train", [
      (["--answer_simulated_obs=-5"], "answer_simulated_obs must be positive, or 0 for "
                                      "num_simulated_obs (20), got -5"),
      (["--answer_simulated_obs=1e3"], "flag --answer_simulated_obs=1e3: invalid literal"),
  ], ["--flagfile=experiments/configs/poisson.cfg"], tmp_path)


def test_records_written_before_answer_starts_read_as_one_start(tmp_path):
  """config.json and calibration.json of runs older than the setting: every run then answered
  with single runs."""
  machine = to_dict(MachineConfig())
  del machine["answer_starts"]
  (tmp_path / "config.json").write_text(json.dumps({"machine": machine,
                                                    "train": to_dict(TrainConfig())}))
  machine_config, _ = Workdir(str(tmp_path)).read_config()
  assert machine_config.answer_starts == 1
  assert recorded_answer_settings({"tail_averaging": 0.5})["answer_starts"] == 1
  assert answer_settings(MachineConfig(answer_starts=8))["answer_starts"] == 8
  # ... and before answer_simulated_obs, as answering with the training's N.
  assert recorded_answer_settings({})["answer_simulated_obs"] == 0
