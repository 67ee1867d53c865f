"""Configuration of the machine and of meta-training, validated at construction.

Both are plain dataclasses so that a run's configuration can be written to (and compared against)
`config.json` in its workdir.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from typing import Any, Dict

import numpy as np


BOUND_TYPES = ("tanh", "clip")
#: Where an inference run starts when no start is given (`MachineConfig.start`).
STARTS = ("prior_draw", "prior_mean")
LOSSES = ("nll", "mse", "l1")
TIME_WEIGHTS = ("exp", "constant", "last", "observed_improvement")
DATA_SOURCES = ("memory", "disk", "online")
#: Proposal families `q(theta | psi)` (`alfi_tf.model.proposals`).
PROPOSALS = ("diagonal_gaussian", "full_covariance_gaussian", "gaussian_mixture",
             "fixed_variance_gaussian", "point")
#: Elementwise transforms of observations before standardisation (`alfi_tf.model.normalization`).
OBSERVATION_TRANSFORMS = ("none", "log1p", "asinh")
#: The smallest observation each transform is defined for (`log1p` reads counts); others take any.
OBSERVATION_TRANSFORM_MINIMUM = {"log1p": 0.0}


#: Seeds become int32 stateless-seed tensors, and a few more seeds are derived as `seed + k`
#: (validation, test inference, robustness starts, predictive checks).
SEED_RANGE = (-2 ** 31, 2 ** 31 - 1 - 8)
#: What an integer setting may be: sizes become int32 shapes.
INT32_RANGE = (-2 ** 31, 2 ** 31 - 1)


#: The largest magnitude a float32 holds (larger finite numbers become inf when cast), and its
#: smallest normal one: a float setting (a learning rate, a bound) enters the graph as a float32,
#: so 1e300 would become inf and 1e-300 zero there.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def _float_expectation(value: Any) -> typing.Optional[str]:
  """None where `value` is a real number (no bool) that float32 holds, else what a float
  setting must be."""
  if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
    return "a finite number"
  if value != 0 and not FLOAT32_TINY <= abs(value) <= FLOAT32_MAX:
    return f"zero or of a magnitude that float32 holds ({FLOAT32_TINY:.4g} to {FLOAT32_MAX:.4g})"
  return None


def require_well_formed(owner: Any, int32: bool = False) -> None:
  """Raises a ValueError naming the first field of the dataclass `owner` whose value does not fit
  its annotation: a bool for `bool`, an integer for `int` (a seed within int32; with `int32`,
  every integer: sizes of the model's tensors, which beyond fail deep in TensorFlow), a finite
  number that float32 holds for `float` (NaN and inf pass `<= 0` checks and would hang or poison
  training), a string for `str`. numpy scalars become the Python numbers they hold."""
  hints = typing.get_type_hints(type(owner))
  for field in dataclasses.fields(owner):
    value, hint = getattr(owner, field.name), hints[field.name]
    if value is None and hint == typing.Optional[int]:
      continue
    if hint is bool:
      ok, expected = isinstance(value, (bool, np.bool_)), "true or false"
      plain = bool
    elif hint in (int, typing.Optional[int]):
      ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
      expected, plain = "an integer", int
      if ok and field.name == "seed" and not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        ok, expected = False, f"an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}] (an int32 seed)"
      if ok and int32 and not INT32_RANGE[0] <= value <= INT32_RANGE[1]:
        ok, expected = False, "an integer within int32"
    elif hint is float:
      expected, plain = _float_expectation(value), float
      ok = expected is None
    else:
      ok, expected = isinstance(value, hint), "a string" if hint is str else hint.__name__
      plain = None
    if not ok:
      raise ValueError(f"{field.name} must be {expected}, got {value!r}")
    if plain is not None and type(value) is not plain:
      # numpy scalars (a hyper-parameter grid's) as plain Python ones: the run's config.json
      # could not hold them.
      object.__setattr__(owner, field.name, plain(value))


def require_positive(owner: Any, *names: str) -> None:
  """Raises a ValueError naming the first of `owner`'s fields `names` that is not positive."""
  for name in names:
    value = getattr(owner, name)
    if value <= 0:
      raise ValueError(f"{name} must be positive, got {value}")


#: The longest horizon `T` anywhere (training, calibration, evaluation, export, inference). The
#: machine's loop is unrolled into the graph, so tracing time and graph size grow with every step
#: (a small machine's export: about 0.3 s of CPU and 0.1 MB per step), and a mistyped horizon of
#: 100,000 would trace for hours instead of failing.
MAX_STEPS = 500


#: The most training steps a run may have: its step counters and checkpoint numbers are int64.
MAX_TOTAL_STEPS = 2 ** 63 - 1


def require_horizon(name: str, num_steps: int) -> None:
  """Raises a ValueError naming `name` unless `num_steps <= MAX_STEPS`."""
  if num_steps > MAX_STEPS:
    raise ValueError(f"{name} must be at most {MAX_STEPS} (the machine's loop is unrolled into "
                     f"the graph, so every step adds tracing time and graph size), got {num_steps}")


def require_choice(owner: Any, name: str, choices: tuple) -> None:
  """Raises a ValueError unless `owner.name` is one of `choices`."""
  value = getattr(owner, name)
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class MachineConfig:
  """Architecture and per-step simulation budget of the inference machine (spec §2).

  Attributes:
    simulator: the simulator's spec: a registered name, `package.module:Attr` or
      `path/to/file.py:Attr` (`alfi_tf.simulators.get_simulator`).
    proposal: the proposal family `q(theta | psi)` the machine refines.
    num_steps: `T`, the unrolled horizon used for training (inference may run longer).
    num_samples: `M`, parameter samples drawn from `q(theta | psi_t)` per step.
    num_simulated_obs: `N`, observations simulated for each parameter sample.
    encoder_hidden, encoder_out: the set encoder `f` (tanh output, mean pooling).
    moment_features: append each set's per-dimension mean and log std to its encoding.
    cross_moment_features: append each set's mean of the products `x_j x_k` (standardised
      observations) to its encoding: the pooled second moments of regression-like models.
    relative_encoding: measure every set against the real data's mean and std before the set
      encoder (`SetEncoder`'s `relative`; needs `moment_features`).
    regression_features: give the updater each step's regression-adjustment step
      (`machine.regression_step`): over the step's M samples, the least-squares map from their
      simulated sets' mean (standardised) observation to the samples, applied to the real set's
      mean minus theirs; at the observed design, from their paired residual moments instead
      (`PairedSetEncoder.residual_moments`), which are zero for the real data. Needs
      `moment_features` (the real set's mean is read from them).
    regression_shortcut: also move the proposal directly to where the step's regression puts
      the real data (`InferenceMachine._regression_shortcut`: the mean of the parameters the
      samples were simulated at plus their regression step, minus the proposal's mean), through
      the proposal's `translation`, scaled by a per-entry gate the updater outputs from its
      LSTM state (zero at the start, like its other output), inside the bound: `Delta psi =
      b tanh((out + gate * translation(move)) / b)`. As an input only, the step has to pass
      through the updater's tanh and ReLU units, whose relative precision limits how closely
      the mean can follow it. Pays where the summaries move linearly with the parameters (a
      regression at the observed design; the linear-Gaussian model at d = 20), can cost on
      noisy nonlinear ones and where the updater alone is at the Bayes limit (linear-Gaussian
      d = 10; docs/results.md, "The regression shortcut"). Needs `regression_features`.
    raw_mean_features: append each set's mean on the raw scale, brought to the encoder's scale
      by the observation transform and the standardisation (`InferenceMachine.encode_sets`).
      Under a transform such as `log1p`, the set's mean count (Poisson's sufficient statistic)
      is otherwise only reachable by undoing the transform through the encoder's tanh units;
      a mean of `log1p(x)` alone is a less efficient statistic (docs/results.md). With
      `observation_transform=none` it repeats what `moment_features` gives.
    aggregator_hidden, aggregator_out: the per-sample network `g` (mean over samples).
    updater_hidden: MLP before the LSTM cell; lstm_units: LSTM state size.
    bound, bound_type: `Delta psi` is bounded to `[-bound, bound]` by `bound * tanh` or a hard clip.
    relative_updates: measure each bounded step in the proposal's own units
      (`Proposal.update_units`): the mean moves by at most `bound` proposal standard deviations,
      so steps shrink as the proposal narrows (a trust region), instead of by at most `bound`
      prior standard deviations whatever the proposal's width.
    initial_scale: `sigma_0` of the proposal, in standardised units (the fixed spread of
      `fixed_variance_gaussian`).
    mixture_components: `K`, the components of the `gaussian_mixture` proposal.
    score_features: give the aggregator each sample's score `grad_psi log q(theta | psi)` (the
      authors' `use_grad`); off, it sees only the encodings and the sample.
    observation_transform: elementwise transform of observations before standardisation.
    observed_design: for a simulator with design columns (`Simulator.design_dim`, a regression's
      covariates), simulate at the real data's design: each step, the `N` observations of every
      sample take their design from `N` rows of the real set (a fresh random choice per step,
      shared by the step's `M` samples, `InferenceMachine.design_rows`), so simulated and real
      sets differ only through the parameters and the noise. Off (the paper's), the simulator
      draws a fresh design for every simulated set. No effect on simulators without a design.
    unconstrained_parameters: propose in `u = b^-1(theta)`, with `b` the simulator's
      `parameter_bijector` (by default the prior's event-space bijector: the logit of a box
      prior's, `alfi_tf.model.parameter_space`), standardised, instead of in `theta` itself (the
      paper's, proposals clipped into the prior's box for simulation). Under the default `b` a
      Gaussian in `u` stays inside the prior's support, and its width follows a posterior that
      narrows towards the edge of the box. The answer's mean and std are then those of the
      pushed-forward proposal.
    tail_averaging: `f` in [0, 1], the fraction of the trajectory averaged into the answer (tail
      averaging of the iterates): after step `t` the answer is `q(theta | psi_bar_t)` with
      `psi_bar_t` the mean of the last `w_t = max(1, ceil(f t))` iterates `psi_s`. Once the
      machine has settled, `psi_t` moves about the posterior with each step's Monte-Carlo noise,
      which the average cuts at no simulation cost; a window growing with `t` keeps the early
      steps, still far from the posterior, out of it. 0 (the paper's) answers with the last
      proposal. The proposals the machine simulates from and the training loss are the same for
      every `f`, so it can be changed without retraining (the std calibration is refitted).
    start: where an inference run starts when no `initial_mean` is given: `prior_draw` (the
      paper's: `mu_0` a draw from the prior) or `prior_mean` (the mean of the meta-training
      parameters, an estimate of the prior's: at most half the prior's width from any `theta*`).
      Meta-training always starts from prior draws, so the machine learns to arrive from anywhere;
      like `tail_averaging`, this changes only inference (the calibration is refitted).
    answer_starts: `R`, the runs per data set, each from its own start, that the machine's answers
      pool by default (`inference.pool_starts`: `Inferrer`, `DeployedMachine.infer` and `run`,
      `alfi-infer`, `alfi-evaluate`; an explicit `num_starts` wins), and that the calibration fits
      pooled std factors for (`alfi_tf.training.calibration`): each run's factors make its own
      std cover its own error, so the pooled std, which adds the runs' spread, would over-cover.
      `R` times the simulations per answer; like `start`, only inference changes.
    answer_simulated_obs: `N` when the machine answers (inference, validation, calibration,
      evaluation, the export and ask/tell); 0 (the default) keeps the training's
      `num_simulated_obs`. Meta-training always simulates `num_simulated_obs`. The encoders pool
      over the `N` observations of a set, so a trained machine takes any `N`; more make each
      step's comparison less noisy (and, at the observed design, let a step compare at more of
      the real rows) at `N / num_simulated_obs` times the simulations per answer. Like `start`,
      only inference changes (the calibration is refitted).
  """

  simulator: str = "poisson"
  proposal: str = "diagonal_gaussian"
  num_steps: int = 15
  num_samples: int = 20
  num_simulated_obs: int = 20
  encoder_hidden: int = 50
  encoder_out: int = 40
  moment_features: bool = False
  cross_moment_features: bool = False
  relative_encoding: bool = False
  raw_mean_features: bool = False
  regression_features: bool = False
  regression_shortcut: bool = False
  aggregator_hidden: int = 50
  aggregator_out: int = 50
  updater_hidden: int = 50
  lstm_units: int = 40
  bound: float = 0.25
  bound_type: str = "tanh"
  relative_updates: bool = False
  initial_scale: float = 0.1
  observation_transform: str = "none"
  observed_design: bool = False
  unconstrained_parameters: bool = False
  mixture_components: int = 3
  score_features: bool = True
  tail_averaging: float = 0.0
  start: str = "prior_draw"
  answer_starts: int = 1
  answer_simulated_obs: int = 0

  def __post_init__(self):
    require_well_formed(self, int32=True)
    require_positive(self, "num_steps", "num_samples", "num_simulated_obs", "encoder_hidden",
                      "encoder_out", "aggregator_hidden", "aggregator_out", "updater_hidden",
                      "lstm_units", "bound", "initial_scale", "mixture_components",
                      "answer_starts")
    require_horizon("num_steps", self.num_steps)
    if self.answer_simulated_obs < 0:
      raise ValueError(f"answer_simulated_obs must be positive, or 0 for num_simulated_obs "
                       f"({self.num_simulated_obs}), got {self.answer_simulated_obs}")
    if not 0 <= self.tail_averaging <= 1:
      raise ValueError(f"tail_averaging must lie in [0, 1] (the fraction of the trajectory "
                       f"averaged into the answer), got {self.tail_averaging}")
    if self.num_samples < 2:
      raise ValueError(f"num_samples must be at least 2 (scores are standardised across samples), "
                       f"got {self.num_samples}")
    if self.regression_features and not self.moment_features:
      raise ValueError("regression_features needs moment_features (they carry the real data's "
                       "mean)")
    if self.regression_shortcut and not self.regression_features:
      raise ValueError("regression_shortcut needs regression_features (the step it adds)")
    if self.relative_encoding and not self.moment_features:
      raise ValueError("relative_encoding needs moment_features (they carry the real data's "
                       "reference mean and std)")
    require_choice(self, "proposal", PROPOSALS)
    require_choice(self, "start", STARTS)
    require_choice(self, "bound_type", BOUND_TYPES)
    require_choice(self, "observation_transform", OBSERVATION_TRANSFORMS)

  def simulated_obs(self, training: bool = False) -> int:
    """`N`, the observations a step simulates per sample: `num_simulated_obs` in meta-training,
    else `answer_simulated_obs` where it is set."""
    return self.num_simulated_obs if training or not self.answer_simulated_obs else (
        self.answer_simulated_obs)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Meta-training settings (spec §3).

  Attributes:
    num_problems: `K`, size of the fixed meta-training set.
    num_obs: `n`, observations per problem.
    epochs, batch_size, learning_rate: Adam over the meta-training set.
    loss: per-step loss `l(theta*, psi_t)`: Gaussian NLL, squared or absolute error of the mean.
    time_weights, beta: weighting of the per-step losses over `t = 1..T`.
    grad_clip_norm: global gradient-norm clipping (0 disables it).
    num_validation_problems: held-out problems (separate seed) for periodic validation.
    validate_every: validation period in training steps.
    checkpoint_every: checkpoint period in training steps.
    checkpoint_every_minutes: also checkpoint when this many minutes passed since the last one
      (0 disables the time-based cadence).
    seed: the run's seed; data, initial weights and every simulation derive from it.
    data_source: where the training batches come from (`alfi_tf.training.pipeline`):
      `memory`: the fixed meta-training set of K problems, held in memory;
      `disk`: the same set written to disk once and streamed back, for sets larger than memory
        (shuffled per epoch through a buffer of `shuffle_buffer` problems);
      `online`: a fresh batch of problems from the prior at every step (the fixed set then only
        provides the standardisation statistics and the length of an epoch), which removes any
        overfitting to the K training problems.
    shuffle_buffer: problems in the `disk` source's shuffle buffer.
    calibration_problems: fresh problems (a seed stream of their own) on which the answer's std
      are recalibrated once training ends (`alfi_tf.training.calibration`); 0 leaves them as the
      proposals give them.
    calibration_horizon: the steps calibrated (later steps use the last one's factors);
      0 means twice the training horizon.
  """

  num_problems: int = 10000
  num_obs: int = 500
  epochs: int = 100
  batch_size: int = 32
  learning_rate: float = 1e-3
  final_learning_rate_fraction: float = 1.0
  loss: str = "nll"
  time_weights: str = "exp"
  beta: float = 3.0
  grad_clip_norm: float = 1.0
  num_validation_problems: int = 256
  validate_every: int = 500
  checkpoint_every: int = 500
  checkpoint_every_minutes: float = 0.0
  seed: int = 0
  data_source: str = "memory"
  shuffle_buffer: int = 10000
  calibration_problems: int = 1024
  calibration_horizon: int = 0

  def __post_init__(self):
    require_well_formed(self)
    require_positive(self, "num_problems", "num_obs", "epochs", "batch_size", "learning_rate",
                      "num_validation_problems", "validate_every", "checkpoint_every",
                      "shuffle_buffer")
    if self.num_problems < self.batch_size:
      raise ValueError(f"num_problems ({self.num_problems}) must be at least batch_size "
                       f"({self.batch_size})")
    if self.total_steps > MAX_TOTAL_STEPS:   # the step counters are int64
      raise ValueError(f"epochs ({self.epochs}) x steps per epoch ({self.steps_per_epoch}) must "
                       f"be at most {MAX_TOTAL_STEPS} training steps, got {self.total_steps}")
    if not 0.0 < self.final_learning_rate_fraction <= 1.0:
      raise ValueError("final_learning_rate_fraction must be in (0, 1], got "
                       f"{self.final_learning_rate_fraction}")
    if self.checkpoint_every_minutes < 0:
      raise ValueError(f"checkpoint_every_minutes must be >= 0, got {self.checkpoint_every_minutes}")
    if self.grad_clip_norm < 0:
      raise ValueError(f"grad_clip_norm must be >= 0, got {self.grad_clip_norm}")
    for name in ("calibration_problems", "calibration_horizon"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    require_horizon("calibration_horizon", self.calibration_horizon)
    if self.calibration_problems == 1:
      raise ValueError("calibration_problems must be 0 (off) or at least 2, got 1")
    require_choice(self, "loss", LOSSES)
    require_choice(self, "time_weights", TIME_WEIGHTS)
    require_choice(self, "data_source", DATA_SOURCES)

  @property
  def steps_per_epoch(self) -> int:
    return max(1, self.num_problems // self.batch_size)

  @property
  def total_steps(self) -> int:
    return self.epochs * self.steps_per_epoch


#: The spec evaluates machines at T = 15; a machine trained for longer runs its own horizon.
DEFAULT_TEST_HORIZON = 15


#: The `MachineConfig` fields that shape only how the answer is read off a trained machine, not its
#: weights or its training: a run may change them after training (`Workdir.claim`), and its
#: calibration and evaluation record the values they were made with.
ANSWER_FIELDS = ("tail_averaging", "start", "answer_starts", "answer_simulated_obs")


def answer_settings(config: "MachineConfig") -> Dict[str, Any]:
  """`config`'s `ANSWER_FIELDS` by name."""
  return {name: getattr(config, name) for name in ANSWER_FIELDS}


def recorded_answer_settings(record: Dict[str, Any]) -> Dict[str, Any]:
  """The answer settings a record (`calibration.json`, `metrics.json`) was made with: its own, and
  for the fields it predates their defaults, which every run then had."""
  defaults = {field.name: field.default for field in dataclasses.fields(MachineConfig)}
  return {name: record.get(name, defaults[name]) for name in ANSWER_FIELDS}


def default_test_horizon(config: MachineConfig) -> int:
  """Horizon used at test time (evaluation, export, inference) when none is given."""
  return max(DEFAULT_TEST_HORIZON, config.num_steps)


def to_dict(config: Any) -> Dict[str, Any]:
  return dataclasses.asdict(config)
