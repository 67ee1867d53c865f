"""Running a (trained) machine on observed data, in raw parameter units, and the result type that
in-library inference and the deployed machine share."""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from alfi_tf.checks import check_observations, check_transform_domain, require_memory
from alfi_tf.config import default_test_horizon, require_horizon
from alfi_tf.model.arguments import (check_float_tensor, check_jit_compile, check_seed,
                                     require_positive_integer)
from alfi_tf.model.calibration import PooledStdScales
from alfi_tf.model.machine import InferenceMachine
from alfi_tf.model.normalization import transform_observations


class InferenceResult(NamedTuple):
  """The machine's answer for `B` observation sets, in raw parameter units.

  Attributes:
    mean, std: `[B, d]`, the final proposal's mean and marginal standard deviations (the latter
      times the run's calibration factors, `InferenceMachine.set_std_scales`), restricted to the
      prior's box where the proposal is not confined to it (`parameter_space`): the estimate and
      its uncertainty.
    trajectory_mean, trajectory_std: `[B, T, d]`, the same after each step 1..T.
    initial_mean: `[B, d]`, the start `mu_0`.
    psi: `[B, P]`, the final answer's own parameters (`psi_bar_T`, the average of the last
      iterates, `InferenceMachine.average_iterates`; standardised, for
      `machine.sample_final_proposal` and `answer_log_prob`), or None where there is no single
      final proposal (runs pooled by `pool_starts`, exports written before it was recorded).
    failed_sets: int `[B]`, how many of the data set's `T M` simulated sets (`R T M` with `R`
      pooled starts) held NaN/inf or values outside the observation transform's domain and were
      left out of the updates (`machine.usable_sets`); None from exports written before it was
      recorded. See `check_failed_simulations`.
    trajectory_psi: `[B, T, P]`, the answers' own parameters after each step (standardised, as
      `psi`), or None (pooled runs, exports written before it was recorded).
    extrapolations: per data set, why its answer is an extrapolation (the function
      `extrapolations`; empty: no sign of one), as a complete run (`Inferrer`,
      `DeployedMachine.infer` and `run`) found and warned about them; None where no run checked
      (ask/tell's answers, `pool_starts`'s pooled runs: `DeployedMachine.extrapolations` checks
      them).
    proposal_mean: `[B, d]`, the mean of the final answer's proposal itself, before its
      calibration and its restriction to the prior's box (`extrapolations` checks it: a machine
      that left the box says so), or None (exports written before it was recorded: `mean` stands
      in).
  """

  mean: np.ndarray
  std: np.ndarray
  trajectory_mean: np.ndarray
  trajectory_std: np.ndarray
  initial_mean: np.ndarray
  psi: Optional[np.ndarray] = None
  failed_sets: Optional[np.ndarray] = None
  trajectory_psi: Optional[np.ndarray] = None
  extrapolations: Optional[Tuple[Tuple[str, ...], ...]] = None
  proposal_mean: Optional[np.ndarray] = None

  @classmethod
  def from_outputs(cls, outputs: Dict[str, tf.Tensor]) -> "InferenceResult":
    """Picks the result out of `InferenceMachine.infer`'s (or an export signature's) outputs.

    `psi` is the answer's `answer_psi`; exports written before it existed answered with their
    last proposal, `psi`."""
    fields = {**outputs, "psi": outputs.get("answer_psi", outputs.get("psi")),
              "trajectory_psi": outputs.get("trajectory_answer_psi")}
    return cls(*(None if fields.get(key) is None else np.asarray(fields[key])
                 for key in cls._fields))

  @classmethod
  def concatenate(cls, results) -> "InferenceResult":
    """One result from the results of consecutive batches of observation sets."""
    return cls(*(_joined(parts) for parts in zip(*results)))


def _joined(parts: Sequence) -> Any:
  """One field of `InferenceResult.concatenate`: the batches' arrays (or `extrapolations`' tuples)
  one after the other, None if a batch has none."""
  if any(part is None for part in parts):
    return None
  if isinstance(parts[0], tuple):
    return sum(parts, ())
  return np.concatenate(parts)


def pool_starts(result: InferenceResult, num_starts: int,
                pooled_std_scales: Optional[PooledStdScales] = None) -> InferenceResult:
  """Combines `R = num_starts` runs per data set into one answer per data set.

  The runs' final proposals are pooled as an equal-weight mixture, summarised by its mean and
  marginal standard deviation (the law of total variance):

      mean = (1/R) sum_r mean_r,     std^2 = (1/R) sum_r std_r^2 + (1/R) sum_r (mean_r - mean)^2,

  at every step of the trajectory alike. Where the runs agree this is their common answer; where
  some start has not settled, the spread between the runs widens `std`, so the answer says so
  instead of reporting one run's overconfident `std`. Each run's std is calibrated to cover its
  own error, so the pooled std over-covers; `pooled_std_scales` fitted for this `R` rescale it
  (step `t`'s factors for step `t`, step C's after the last calibrated step C).

  Args:
    result: `B * R` rows, the `R` runs of data set `b` in rows `b R .. b R + R - 1`.
    num_starts: `R`.
    pooled_std_scales: the machine's pooled factors (`InferenceMachine.pooled_std_scales`), or
      None; applied only where fitted for `R` (otherwise a warning says the pool is not
      recalibrated).

  Returns:
    `B` rows; `initial_mean` is the runs' average start, and `psi` None (a mixture of R
    proposals is not one of the family's).
  """
  if num_starts == 1:
    return result
  # A run's extrapolations are about its own answer, not the pooled one: left out.
  fields = {name: np.reshape(field, (-1, num_starts) + field.shape[1:])
            for name, field in result._asdict().items()
            if field is not None and name != "extrapolations"}

  def pooled(mean: np.ndarray, std: np.ndarray):
    pooled_mean = mean.mean(axis=1)
    variance = np.mean(np.square(std), axis=1) + np.var(mean, axis=1)
    return pooled_mean.astype(np.float32), np.sqrt(variance).astype(np.float32)

  mean, std = pooled(fields["mean"], fields["std"])
  trajectory_mean, trajectory_std = pooled(fields["trajectory_mean"], fields["trajectory_std"])
  factors = _pooled_factors(pooled_std_scales, num_starts, trajectory_std.shape[1])
  if factors is not None:
    std, trajectory_std = std * factors[-1], trajectory_std * factors
  failed_sets, proposal_mean = fields.get("failed_sets"), fields.get("proposal_mean")
  return InferenceResult(mean, std, trajectory_mean, trajectory_std,
                         fields["initial_mean"].mean(axis=1),
                         failed_sets=None if failed_sets is None else failed_sets.sum(axis=1),
                         proposal_mean=(None if proposal_mean is None
                                        else proposal_mean.mean(axis=1)))


def _pooled_factors(pooled_std_scales: Optional[PooledStdScales], num_starts: int,
                    num_steps: int) -> Optional[np.ndarray]:
  """`[T, d]` the factors of steps 1..T (past the calibrated C: step C's, as the machine reads its
  per-run factors, `InferenceMachine.std_scale_at`) where `pooled_std_scales` were fitted for
  pools of `num_starts` runs; else None."""
  if pooled_std_scales is None:
    return None
  if pooled_std_scales.num_starts != num_starts:
    logging.warning("answers pooled over %d starts are not recalibrated (the machine's pooled std "
                    "factors were fitted for %d starts): their std over-covers", num_starts,
                    pooled_std_scales.num_starts)
    return None
  scales = np.asarray(pooled_std_scales.scales, np.float32)
  return scales[np.minimum(np.arange(num_steps), len(scales) - 1)]


def resolve_starts(num_starts: Optional[int], answer_starts: int) -> int:
  """The runs per data set: `num_starts` where given, else the machine's default
  `answer_starts` (`MachineConfig.answer_starts`); a positive integer either way."""
  return require_positive_integer("num_starts", answer_starts if num_starts is None else num_starts)


def check_failed_simulations(result: InferenceResult, sets_per_data_set: int) -> InferenceResult:
  """Refuses answers no simulation informed, and warns about answers some failures thinned.

  A simulated set with a NaN/inf value, or one outside the observation transform's domain, is left
  out of its step's update (a failed simulation, `machine.usable_sets`).
  Where every set of a data set failed, the machine only drifted from its start: such an answer
  looks like one but carries no information, so it is an error, not a result.

  Args:
    result: the answer, with its `failed_sets` (None: not recorded, nothing to check).
    sets_per_data_set: simulated sets per data set over the whole run, `R T M`.

  Returns:
    `result`, unchanged.

  Raises:
    RuntimeError: naming the data sets where every simulated set failed.
  """
  if result.failed_sets is None or not result.failed_sets.any():
    return result
  hopeless = np.flatnonzero(result.failed_sets >= sets_per_data_set)
  if hopeless.size:
    raise RuntimeError(
        f"the simulator returned NaN/inf (or values outside the observation transform's domain) "
        f"in all {sets_per_data_set} simulated sets of data set(s) {hopeless.tolist()[:10]}, so no "
        f"simulation informed their answers; check the simulator at the parameters it was asked "
        f"for")
  failed = np.flatnonzero(result.failed_sets)
  logging.warning("%d of %d data sets had simulated sets with NaN/inf (or values outside the "
                  "observation transform's domain), left out of the updates "
                  "(at most %.0f%% of a data set's %d sets; per data set: failed_sets)",
                  failed.size, result.failed_sets.size,
                  100 * result.failed_sets.max() / sets_per_data_set, sets_per_data_set)
  return result


#: A data set whose mean standardised observation lies further than this from the training
#: data's mean (in some dimension) is unlike anything the machine was trained on: standardised
#: over the training observations pooled, the training sets' own means have a variance of at most
#: 1 (the between-set part of the pooled variance), so a set this far out lies beyond the prior's
#: predictive range.
UNFAMILIAR_SET_MEAN = 10.0
#: An answer further outside the prior's box than this fraction of the box's width is no
#: posterior mean of that prior; a settled answer at the box's edge is within it.
OUTSIDE_BOX_FRACTION = 0.05


def standardized_set_means(observations: np.ndarray, transform: str, mean: np.ndarray,
                           std: np.ndarray) -> np.ndarray:
  """`[B, d_x]`: each data set's mean transformed observation `observations [B, n, d_x]`, in the
  units that standardise the training observations (`mean`, `std` `[d_x]`)."""
  transformed = transform_observations(tf.constant(observations, tf.float32), transform).numpy()
  return (transformed.mean(axis=1) - mean) / std


def extrapolations(result: InferenceResult, set_means: np.ndarray,
                   bounds: Optional[Tuple[np.ndarray, np.ndarray]],
                   names: Sequence[str]) -> List[List[str]]:
  """Per data set, why its answer is an extrapolation (an empty list: no sign of one).

  A machine answers any input, also data unlike its training data (another experiment's units, a
  unit error, a faulty detector), where its answer extrapolates. Two signs: observations whose
  standardised mean `set_means [B, d_x]` lies beyond `UNFAMILIAR_SET_MEAN`, and a final proposal
  centred outside the prior's box `bounds` by more than `OUTSIDE_BOX_FRACTION` of its width (also
  a machine that did not settle): its `proposal_mean`, since the answer's `mean` is restricted to
  the box.

  Raises:
    ValueError: `set_means` and `result` are of different numbers of data sets (a result checked
      against other observations than it answers, which would pair them up wrongly).
  """
  if len(set_means) != len(result.mean):
    raise ValueError(f"the observations hold {len(set_means)} data set(s), but the result answers "
                     f"{len(result.mean)}: pass the observations the result was inferred from")
  notes: List[List[str]] = [[] for _ in range(len(result.mean))]
  for row in np.flatnonzero(np.any(np.abs(set_means) > UNFAMILIAR_SET_MEAN, axis=1)):
    notes[row].append(f"observations far outside the training data (mean standardised "
                      f"observation {np.round(set_means[row], 1).tolist()}, beyond "
                      f"+-{UNFAMILIAR_SET_MEAN:g})")
  if bounds is not None:
    low, high = (np.asarray(b, np.float64) for b in bounds)
    margin = OUTSIDE_BOX_FRACTION * (high - low)
    centre = result.mean if result.proposal_mean is None else result.proposal_mean    # [B, d]
    outside = (centre < low - margin) | (centre > high + margin)
    for row, column in zip(*np.nonzero(outside)):
      notes[row].append(f"the machine's answer for {names[column]} is centred at "
                        f"{centre[row, column]:.4g}, outside the prior's support "
                        f"[{low[column]:.4g}, {high[column]:.4g}]")
  return notes


def flag_extrapolations(result: InferenceResult, notes: List[List[str]]) -> InferenceResult:
  """`result` carrying `notes`, its `extrapolations`, and one warning naming the data sets whose
  answers they found to be ones."""
  rows = [row for row, reasons in enumerate(notes) if reasons]
  if rows:
    logging.warning("%d of %d answer(s) are extrapolations, do not trust them (data set %d: %s). "
                    "Data sets: %s", len(rows), len(notes), rows[0], "; ".join(notes[rows[0]]),
                    rows[:10])
  return result._replace(extrapolations=tuple(tuple(reasons) for reasons in notes))


def repeat_for_starts(observations: np.ndarray, num_starts: int) -> np.ndarray:
  """`[B, ...] -> [B * R, ...]`, each data set repeated `R` times in a row (see `pool_starts`).

  Raises:
    ValueError: `R` is not a positive integer, or the copies would not fit in memory (named, where
      numpy would raise a bare MemoryError).
  """
  num_starts = require_positive_integer("num_starts", num_starts)
  require_memory(observations.nbytes * num_starts,
                 f"num_starts={num_starts} copies of {len(observations)} data set(s)",
                 "use fewer num_starts, or split the data sets over several calls")
  return np.repeat(observations, num_starts, axis=0)


class Inferrer:
  """Runs `machine` over many problems in batches with one compiled graph per input shape.

  Args:
    machine: the (trained) machine.
    num_steps: horizon `T`, a positive integer up to `MAX_STEPS`; may exceed the training
      horizon (None: the training horizon).
    batch_size: problems per call, a positive integer.
    jit_compile: compile the unrolled loop with XLA (TF-native simulators only).
    warn_past_horizon: warn when `num_steps` exceeds the default test horizon (off where the
      library itself chose the horizon, as the calibration does, not the user).
  """

  def __init__(self, machine: InferenceMachine, num_steps: Optional[int] = None,
               batch_size: int = 256, jit_compile: bool = False, warn_past_horizon: bool = True):
    if not isinstance(machine, InferenceMachine):
      raise TypeError(f"machine must be an InferenceMachine, got {type(machine).__name__} (a "
                      "trained run's: alfi_tf.load_machine(workdir))")
    self.machine = machine
    self.num_steps = require_positive_integer(
        "num_steps", machine.config.num_steps if num_steps is None else num_steps)
    require_horizon("num_steps", self.num_steps)
    tested_horizon = default_test_horizon(machine.config)
    if warn_past_horizon and self.num_steps > tested_horizon:
      # More steps are not always better: a machine learns to approach the answer within its
      # training horizon, and some drift away past it (docs/results.md, linear regression).
      logging.warning("num_steps=%d runs the machine past its training horizon T=%d (and the "
                      "default test horizon %d); some machines drift there: measure yours at "
                      "this horizon (alfi-evaluate --num_steps=%d) before trusting its answers",
                      self.num_steps, machine.config.num_steps, tested_horizon, self.num_steps)
    self.batch_size = require_positive_integer("batch_size", batch_size)
    check_jit_compile(jit_compile, machine.simulator)
    self._run = tf.function(self._run_batch, jit_compile=jit_compile, reduce_retracing=True)

  def _run_batch(self, observations: tf.Tensor, seed: tf.Tensor,
                 initial_mean: tf.Tensor) -> Dict[str, tf.Tensor]:
    return self.machine.infer(observations, seed, self.num_steps, initial_mean)

  def __call__(self, observations: np.ndarray, seed: int,
               initial_mean: Optional[np.ndarray] = None,
               num_starts: Optional[int] = None) -> InferenceResult:
    """Infers parameters for `observations [B, n, d_x]` (raw).

    Args:
      observations: `B` observation sets of `n` observations each.
      seed: integer seed; batch `i` splits `fold_in([seed, 0], i)` into the seed of its prior-drawn
        starts and the seed of the machine's run.
      initial_mean: optional `[B, d]` raw starts; default `machine.default_starts` (prior draws, or
        the prior's mean for every run under `start = prior_mean`).
      num_starts: `R` runs per data set, each from its own start (one start for all under
        `start = prior_mean`) and with its own simulations, batched together and combined by
        `pool_starts` with the machine's pooled std factors (`R` times the simulations); None:
        the machine's `answer_starts`.
    """
    seed = check_seed(seed)
    num_starts = resolve_starts(num_starts, self.machine.config.answer_starts)
    simulator = self.machine.simulator
    observations = check_transform_domain(
        check_observations(observations, simulator.observation_dim),
        self.machine.config.observation_transform)
    if initial_mean is not None:
      # NaN/inf starts are refused here: they would otherwise surface as a simulator failure.
      shape = (observations.shape[0], simulator.parameter_dim)
      initial_mean = repeat_for_starts(check_float_tensor(initial_mean, "initial_mean", shape,
                                                          str(shape)).numpy(), num_starts)
    result = check_failed_simulations(
        pool_starts(self._run_all(repeat_for_starts(observations, num_starts), seed,
                                  initial_mean), num_starts, self.machine.pooled_std_scales),
        num_starts * self.num_steps * self.machine.config.num_samples)
    standardizer = self.machine.observation_standardizer
    set_means = standardized_set_means(observations, self.machine.config.observation_transform,
                                       standardizer.mean.numpy(), standardizer.std.numpy())
    return flag_extrapolations(result, extrapolations(result, set_means,
                                                      simulator.parameter_bounds,
                                                      simulator.parameter_names))

  def _run_all(self, observations: np.ndarray, seed: int,
               initial_mean: Optional[np.ndarray]) -> InferenceResult:
    """Every row of `observations [B, n, d_x]`, `batch_size` rows per call."""
    results = []
    base_seed = tf.constant([seed, 0], tf.int32)
    for index, start in enumerate(range(0, observations.shape[0], self.batch_size)):
      chunk = slice(start, start + self.batch_size)
      start_seed, run_seed = tf.unstack(tf.random.experimental.stateless_split(
          tf.random.experimental.stateless_fold_in(base_seed, index), 2))
      # Starts are always passed explicitly, so one graph serves default and user starts.
      start_mean = (initial_mean[chunk] if initial_mean is not None else
                    self.machine.default_starts(observations[chunk].shape[0],
                                                start_seed).numpy())
      results.append(InferenceResult.from_outputs(self._run(
          tf.constant(observations[chunk]), run_seed, tf.constant(start_mean))))
    return InferenceResult.concatenate(results)
