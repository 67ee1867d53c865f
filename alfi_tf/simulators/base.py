"""The simulator interface that ALFI infers the parameters of.

A simulator draws i.i.d. observations `x ~ p(x | theta)` for a batch of parameter vectors. Users bring
their own by subclassing one of two bases:

* `Simulator` for simulators written with TensorFlow / TFP ops. They stay inside the graph, so the whole
  unrolled inference loop compiles into one `tf.function` (and can be exported to a SavedModel).
* `NumpySimulator` for black-box numpy code. `simulate_numpy` is bridged into TensorFlow with
  `tf.numpy_function`, with the output shape and dtype declared, so it also runs inside the unrolled loop.

All randomness is driven by *stateless* seeds (int32 tensors of shape `[2]`), so a simulation is a pure
function of `(theta, num_obs, seed)`: runs are reproducible and training can resume bit for bit.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import re
from typing import Any, Dict, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf.checks import require_real_numbers
from alfi_tf.config import FLOAT32_MAX
from alfi_tf.simulators import calls

tfd = tfp.distributions


def check_box(low, high, where: str) -> Tuple[np.ndarray, np.ndarray]:
  """Validates a box `[low, high]` of `d` parameters and returns its bounds as float32 `[d]` each.

  Raises:
    ValueError: naming `where`, unless `low` and `high` are equally long non-empty lists of
      finite numbers within float32's range with `low < high` everywhere (after the cast to
      float32, whose rounding can make close bounds equal, and with `high - low` finite too).
  """
  try:
    low64, high64 = np.asarray(low, np.float64), np.asarray(high, np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: low and high must be lists of numbers, got {low!r} and "
                     f"{high!r}") from None
  if low64.ndim != 1 or low64.shape != high64.shape or not low64.size:
    raise ValueError(f"{where}: low and high must be two equally long lists of numbers, one per "
                     f"parameter, got {low64.tolist()} and {high64.tolist()}")
  with np.errstate(over="ignore", invalid="ignore"):   # the overflows are what is checked
    low32, high32 = low64.astype(np.float32), high64.astype(np.float32)
    usable = (np.isfinite(low64) & np.isfinite(high64) & (np.abs(low64) <= FLOAT32_MAX)
              & (np.abs(high64) <= FLOAT32_MAX) & (low32 < high32)
              & np.isfinite(high32 - low32))
  if not usable.all():
    raise ValueError(f"{where}: the prior's box needs finite low < high as float32 numbers "
                     f"(bounds and width at most {FLOAT32_MAX:.4g}), got low={low64.tolist()}, "
                     f"high={high64.tolist()} (not so for parameter(s) "
                     f"{', '.join(map(str, np.flatnonzero(~usable)))})")
  return low32, high32


def box_prior(low: Sequence[float], high: Sequence[float]) -> tfd.Distribution:
  """A uniform prior on the box `[low, high]`, with event shape `[d]`.

  Raises:
    ValueError: the bounds are not two equally long lists of finite float32 numbers with
      `low < high` (see `check_box`).
  """
  low32, high32 = check_box(low, high, "box_prior")
  return tfd.Independent(tfd.Uniform(low=tf.constant(low32), high=tf.constant(high32)),
                         reinterpreted_batch_ndims=1)


#: The sources `observations_as_float32` has warned about in this process.
_NAMED_BEYOND_FLOAT32 = set()


def observations_as_float32(observations: np.ndarray, theta: np.ndarray,
                            parameter_names: Sequence[str], where: str,
                            source: str) -> np.ndarray:
  """A simulator's real-valued `observations [K, n, d_x]` for `theta [K, d]`, cast to float32.

  A finite value beyond float32's range (an overflow in float64 code, say) becomes inf like the
  cast makes it, but knowingly: it marks a failed set, as NaN/inf do, which the callers leave out
  or redraw (a simulator that blows up on part of its prior need not stop a run). The first time
  for each `source` (a simulator, the told simulations), a warning names `where`, the value and
  its parameter vector, since the failure counts alone would read as NaN/inf.
  """
  with np.errstate(over="ignore"):   # the overflow is the point, not a numpy warning
    cast = observations.astype(np.float32)
  beyond = np.isinf(cast) & np.isfinite(observations)
  if beyond.any() and source not in _NAMED_BEYOND_FLOAT32:
    _NAMED_BEYOND_FLOAT32.add(source)
    first = tuple(np.argwhere(beyond)[0])
    logging.warning(
        "%s returned %d value(s) beyond float32's range (±%.4g), e.g. %.6g at %s; they count as "
        "failed simulations, like NaN/inf", where, int(beyond.sum()), FLOAT32_MAX,
        observations[first], describe_parameters(theta[first[0]:first[0] + 1], parameter_names))
  return cast


def require_design_kept(observations: np.ndarray, design: np.ndarray, design_dim: int,
                        where: str) -> None:
  """Raises a ValueError naming `where` unless `observations [..., n, d_x]` begin with `design
  [..., n, design_dim]` (compared as float32): a simulation at a design must return it."""
  if not np.array_equal(np.asarray(observations)[..., :design_dim],
                        np.asarray(design, np.float32)):
    raise ValueError(f"{where} must return the design it was given as the first {design_dim} "
                     "column(s) of each observation")


#: What `Simulator.__init__` stores (`_prior` is left out of the pickled copies workers get).
_DECLARED_MEMBERS = ("_parameter_names", "_observation_dim", "_prior")


class Simulator(abc.ABC):
  """A stochastic simulator `x ~ p(x | theta)` with a prior `p(theta)`.

  Subclasses set the class attribute `name`, call `super().__init__(...)` with their
  `parameter_names`, `observation_dim` and `prior`, and implement `simulate`. Where the likelihood is
  tractable they may also implement `log_likelihood` and `maximum_likelihood`, which the evaluation
  uses as exact references (grid posterior, MLE), and `summary_statistics`, for the ABC baseline.

  Shapes: `theta` is `[batch, d]` with `d = len(parameter_names)`; observations are
  `[batch, num_obs, observation_dim]`. Everything is float32.

  **Designs.** Where part of each observation is set by the experiment rather than drawn by
  nature (a regression's covariates, a detector setting, the time of a measurement), a simulator
  declares those columns as the *design*: the first `design_dim` columns of an observation, and
  implements `simulate_at_design`, which draws the rest given them. The machine can then simulate
  at the real data's own design (`MachineConfig.observed_design`), so that a simulated set differs
  from the real one only through the parameters and the noise, not through a fresh draw of the
  design, whose spread would otherwise swamp the comparison (`docs/results.md`, linear regression).
  """

  #: Registry name, used by `--simulator=NAME`.
  name: str = ""

  #: How many leading columns of an observation are its design (0: none); see the class docstring.
  design_dim: int = 0

  def __init__(self, parameter_names: Sequence[str], observation_dim: int,
               prior: tfd.Distribution):
    """Validates and stores what every simulator declares.

    Args:
      parameter_names: names of the `d` parameters, non-empty and unique.
      observation_dim: `d_x`, a positive int.
      prior: a TFP distribution over `theta` with event shape `[d]`.

    Raises:
      ValueError: if an argument is malformed or the prior's event shape is not `[d]`.
    """
    if isinstance(parameter_names, str):
      raise ValueError(f"parameter_names must be a sequence of strings, not the string "
                       f"{parameter_names!r}")
    names = tuple(parameter_names)
    if not names:
      raise ValueError("parameter_names must not be empty")
    for parameter_name in names:
      if not isinstance(parameter_name, str) or not parameter_name:
        raise ValueError(f"parameter_names must be non-empty strings, got {parameter_name!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
      raise ValueError(f"parameter_names must be unique; repeated: {', '.join(duplicates)}")
    if (isinstance(observation_dim, (bool, np.bool_))
        or not isinstance(observation_dim, (int, np.integer)) or observation_dim < 1):
      raise ValueError(f"observation_dim must be a positive int, got {observation_dim!r}")
    if not isinstance(prior, tfd.Distribution):
      raise ValueError(f"prior must be a tfp.distributions.Distribution, got {type(prior).__name__}")
    event_shape = tf.TensorShape(prior.event_shape)
    if event_shape != tf.TensorShape([len(names)]):
      raise ValueError(f"prior event shape must be [{len(names)}] (one entry per name in "
                       f"parameter_names), got {event_shape}")
    if tf.TensorShape(prior.batch_shape) != tf.TensorShape([]):
      # A batch of priors drew theta [K, *batch, d]: parameters of the wrong rank.
      raise ValueError(f"prior must be one distribution (batch shape []), got batch shape "
                       f"{tf.TensorShape(prior.batch_shape)}; tfd.Independent makes a batch of "
                       "per-parameter distributions one over the vector")
    self._check_design(int(observation_dim))
    self._parameter_names = names
    self._observation_dim = int(observation_dim)
    self._prior = prior
    if self.parameter_bounds is not None:   # a box built without box_prior is checked here
      check_box(*self.parameter_bounds, f"simulator {self.name or type(self).__name__!r}: prior")

  def _check_design(self, observation_dim: int) -> None:
    """Raises a ValueError naming the class unless `design_dim` is an int in
    `[0, observation_dim)` and, when positive, `simulate_at_design` is implemented."""
    design_dim, where = self.design_dim, f"simulator class {type(self).__name__}"
    if (isinstance(design_dim, (bool, np.bool_)) or not isinstance(design_dim, (int, np.integer))
        or not 0 <= design_dim < observation_dim):
      raise ValueError(f"{where}: design_dim must be an int from 0 to observation_dim - 1 = "
                       f"{observation_dim - 1} (the leading observation columns the experiment "
                       f"sets), got {design_dim!r}")
    if design_dim and not self.has_design_simulation:
      method = ("simulate_numpy_at_design" if isinstance(self, NumpySimulator)
                else "simulate_at_design")
      raise ValueError(f"{where} declares design_dim={design_dim} but does not implement "
                       f"{method} (the simulation given the design columns)")

  def __getattr__(self, attribute: str):
    """Only reached for attributes the instance lacks: names a subclass whose `__init__` skipped
    `Simulator.__init__`, instead of an AttributeError about a private member."""
    if attribute in _DECLARED_MEMBERS and "_parameter_names" not in self.__dict__:
      raise ValueError(f"simulator class {type(self).__name__}: its __init__ must call "
                       "super().__init__(parameter_names=..., observation_dim=..., prior=...)")
    raise AttributeError(f"{type(self).__name__!r} object has no attribute {attribute!r}")

  @property
  def parameter_names(self) -> Tuple[str, ...]:
    """Names of the `d` parameters, in the order of the last axis of `theta`."""
    return self._parameter_names

  @property
  def observation_dim(self) -> int:
    """`d_x`, the size of one observation."""
    return self._observation_dim

  @property
  def prior(self) -> tfd.Distribution:
    """A TFP distribution over `theta` with event shape `[d]`."""
    return self._prior

  @property
  def spec(self) -> str:
    """How `get_simulator` finds this simulator again: its registered name, or the import spec it
    was built from. Machines record it."""
    return getattr(self, "_spec", None) or self.name

  @spec.setter
  def spec(self, value: str) -> None:
    self._spec = value

  @property
  def parameter_dim(self) -> int:
    """`d`, the number of parameters."""
    return len(self.parameter_names)

  @property
  def parameter_bounds(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """`(low, high)` of the prior's support when it is a box, else None.

    Proposals are Gaussian and can land outside the prior's support; the machine clips parameter
    samples into these bounds before calling `simulate`, so a simulator is only ever run where it is
    defined. Box priors built with `box_prior` are detected automatically.
    """
    prior = self.prior
    if isinstance(prior, tfd.Independent) and isinstance(prior.distribution, tfd.Uniform):
      return tuple(np.broadcast_arrays(np.asarray(prior.distribution.low, np.float32),
                                       np.asarray(prior.distribution.high, np.float32)))
    return None

  @property
  def parameter_bijector(self) -> tfp.bijectors.Bijector:
    """`b`, an elementwise bijector from `R^d` onto (at least) the prior's support: with
    `MachineConfig.unconstrained_parameters` the machine's proposals live in `u = b^-1(theta)`
    (`alfi_tf.model.parameter_space`).

    By default the prior's `experimental_default_event_space_bijector()`: for a box prior
    `low + (high - low) sigmoid(u)`, for a log-normal one `exp(u)`. Override it where another
    parameterisation makes the posterior's width more even over the prior (it must map each
    parameter on its own: `forward_min_event_ndims == 0`).
    """
    return self.prior.experimental_default_event_space_bijector()

  @abc.abstractmethod
  def simulate(self, theta: tf.Tensor, num_obs: int, seed: tf.Tensor) -> tf.Tensor:
    """Draws `num_obs` i.i.d. observations for each parameter vector.

    Args:
      theta: `[batch, d]` float32 parameters, in raw (unstandardised) units.
      num_obs: number of observations per parameter vector (a Python int).
      seed: int32 `[2]` stateless seed; the same seed gives the same observations.

    Returns:
      `[batch, num_obs, observation_dim]` float32 observations.
    """

  def simulate_at_design(self, theta: tf.Tensor, design: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Draws one observation at each design point, for simulators with `design_dim > 0`.

    Args:
      theta: `[batch, d]` float32 parameters, in raw units.
      design: `[batch, num_obs, design_dim]` float32 design columns, one row per observation.
      seed: int32 `[2]` stateless seed; the same seed gives the same observations.

    Returns:
      `[batch, num_obs, observation_dim]` float32 observations whose first `design_dim` columns
      are `design`.
    """
    raise NotImplementedError(f"simulator {self.name!r} has no design (design_dim = 0)")

  def checked_simulations(self, simulated: Any, count: Any, num_obs: Any,
                          method: str = "simulate") -> tf.Tensor:
    """`simulated`, what `method` returned for `count` parameter vectors and `num_obs`
    observations each, behind checks of its dtype (when traced) and shape (when run): called
    directly, not through a spec's trial call, a TF-native simulate of another shape was reshaped
    into scrambled observations, and one of another dtype failed deep in the machine.

    Raises:
      ValueError: not float32 observations, or not of rank 3.
      tf.errors.InvalidArgumentError: when run, a shape other than `[count, num_obs, d_x]`.
    """
    where = f"simulator {self.name or type(self).__name__!r}: {method}"
    simulated = tf.convert_to_tensor(simulated)
    if simulated.dtype != tf.float32 or simulated.shape.rank not in (None, 3):
      raise ValueError(f"{where} returned {simulated.dtype.name} observations of shape "
                       f"{simulated.shape}; expected float32 [parameter vectors, num_obs, "
                       f"{self.observation_dim}]")
    expected = tf.stack([tf.cast(count, tf.int32), tf.cast(num_obs, tf.int32),
                         self.observation_dim])
    shape_ok = tf.debugging.assert_equal(
        tf.shape(simulated), expected,
        message=f"{where} returned observations of another shape than [parameter vectors, "
                f"num_obs, observation_dim={self.observation_dim}] (got, expected)")
    with tf.control_dependencies([shape_ok]):
      return tf.identity(simulated)

  @property
  def has_design_simulation(self) -> bool:
    """Whether `simulate_at_design` is implemented."""
    return type(self).simulate_at_design is not Simulator.simulate_at_design

  def log_likelihood(self, theta: tf.Tensor, observations: tf.Tensor) -> tf.Tensor:
    """Total log-likelihood of each observation set under each candidate parameter.

    Args:
      theta: `[batch, k, d]` candidate parameters for each of `batch` problems.
      observations: `[batch, n, observation_dim]`.

    Returns:
      `[batch, k]`: `sum_i log p(x_i | theta)`, float32 or (where float32 rounding would matter)
      float64.
    """
    raise NotImplementedError(f"simulator {self.name!r} has no tractable likelihood")

  def maximum_likelihood(self, observations: tf.Tensor) -> tf.Tensor:
    """The maximum-likelihood (or the spec's reference) estimate, `[batch, d]`."""
    raise NotImplementedError(f"simulator {self.name!r} has no reference estimator")

  def summary_statistics(self, observations: tf.Tensor) -> tf.Tensor:
    """Hand-chosen (ideally sufficient) summary statistics of each observation set, for the ABC
    baseline (`alfi_tf.baselines.abc`).

    They must depend on the set only through averages over its observations (sample moments and
    functions of them, not sums or extremes), so that a set of `N` simulated observations and an
    observed set of `n` are comparable.

    Args:
      observations: `[batch, n, observation_dim]`.

    Returns:
      `[batch, s]` float32.
    """
    raise NotImplementedError(f"simulator {self.name!r} has no summary statistics")

  def derived_parameters(self, theta: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Identifiable functions of `theta [batch, d]` worth reporting errors for, each `[batch]`.

    For example the Weinberg data depend on its two parameters only through the asymmetry `A`.
    """
    del theta
    return {}

  @property
  def has_likelihood(self) -> bool:
    """Whether `log_likelihood` is implemented (enables the exact grid posterior)."""
    return type(self).log_likelihood is not Simulator.log_likelihood

  def posterior_mean(self, observations: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The exact Bayes posterior mean `[batch, d]`, where it has a closed form or an exact sampler.

    Simulators with a likelihood, a box prior and `d <= 2` need not implement it: the evaluation
    integrates their posterior on a grid.
    """
    raise NotImplementedError(f"simulator {self.name!r} has no exact posterior mean")

  def posterior_std(self, observations: tf.Tensor) -> tf.Tensor:
    """The exact posterior's marginal standard deviations `[batch, d]`, where they have a closed
    form (simulators whose posterior the evaluation integrates on a grid need not implement it)."""
    raise NotImplementedError(f"simulator {self.name!r} has no exact posterior std")

  @property
  def has_reference_estimator(self) -> bool:
    """Whether `maximum_likelihood` is implemented."""
    return type(self).maximum_likelihood is not Simulator.maximum_likelihood

  @property
  def has_summary_statistics(self) -> bool:
    """Whether `summary_statistics` is implemented."""
    return type(self).summary_statistics is not Simulator.summary_statistics

  @property
  def has_posterior_mean(self) -> bool:
    """Whether `posterior_mean` is implemented."""
    return type(self).posterior_mean is not Simulator.posterior_mean

  @property
  def has_posterior_std(self) -> bool:
    """Whether `posterior_std` is implemented."""
    return type(self).posterior_std is not Simulator.posterior_std

  def sample_problems(self, num_problems: int, num_obs: int, seed: tf.Tensor,
                      executor: Optional[concurrent.futures.Executor] = None
                      ) -> Tuple[tf.Tensor, tf.Tensor]:
    """Draws `theta* ~ prior` and `X ~ p(x | theta*)^num_obs`.

    Args:
      num_problems: how many problems (a Python int or a scalar int tensor).
      num_obs: observations per problem.
      seed: int32 `[2]` stateless seed.
      executor: optional process pool in which a `NumpySimulator` runs its numpy code (the draws
        are the same as without it); TF-native simulators ignore it.

    Returns:
      `(theta [num_problems, d], observations [num_problems, num_obs, d_x])`.
    """
    prior_seed, sim_seed = tfp.random.split_seed(seed, n=2)
    theta = tf.cast(self.prior.sample(num_problems, seed=prior_seed), tf.float32)
    return theta, self._simulate_problems(theta, num_obs, sim_seed, executor)

  def _simulate_problems(self, theta: tf.Tensor, num_obs: int, seed: tf.Tensor,
                         executor: Optional[concurrent.futures.Executor]) -> tf.Tensor:
    del executor   # TF-native simulators already run in TensorFlow's own thread pools.
    return self.checked_simulations(self.simulate(theta, num_obs, seed), tf.shape(theta)[0],
                                    num_obs)


class SimulatorError(RuntimeError):
  """A simulator failed (raised, or returned output of the wrong shape), with the parameters it was
  called with. Raised inside `tf.numpy_function` it reaches the caller wrapped in a TensorFlow
  error; `simulator_error_message` digs the message out again."""


_SIMULATOR_ERROR_LINE = re.compile(r"SimulatorError: (.*)")


def simulator_error_message(error: BaseException) -> Optional[str]:
  """The `SimulatorError` message inside a TensorFlow error from a numpy simulator, or None."""
  match = _SIMULATOR_ERROR_LINE.search(str(getattr(error, "message", "") or error))
  return match.group(1).strip() if match else None


def describe_parameters(theta: np.ndarray, names: Sequence[str], shown: int = 3) -> str:
  """`(a=1, b=2); (a=3, b=4) (and K more)`: the first `shown` parameter vectors, for messages."""
  rows = [", ".join(f"{name}={value:.6g}" for name, value in zip(names, row))
          for row in np.asarray(theta)[:shown]]
  more = f" (and {len(theta) - shown} more)" if len(theta) > shown else ""
  return "; ".join(f"({row})" for row in rows) + more


def _op_name(simulator_name) -> str:
  """`NAME_simulator` as a TensorFlow op name: a simulator's name may hold any character (`my sim
  (v2)`), where an op name that does not match `[A-Za-z0-9.][A-Za-z0-9_./>-]*` fails to trace."""
  name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{simulator_name or 'numpy'}_simulator")
  return name if re.match(r"[A-Za-z0-9.]", name) else f"numpy{name}"


def _is_tensorflow_object(value) -> bool:
  return isinstance(value, (tf.Module, tf.Tensor, tf.Variable, tfd.Distribution))


class NumpySimulator(Simulator):
  """A simulator written in numpy, bridged into TensorFlow with `tf.numpy_function`.

  Implement `simulate_numpy`; `simulate` then works in eager mode and inside `tf.function` (the
  unrolled inference loop). The numpy code receives a `numpy.random.Generator` seeded from the
  stateless TF seed, so it is exactly as reproducible as a TF-native simulator.

  Meta-training data can be generated in worker processes (`sample_problems(..., executor=pool)`,
  `--data_workers`), which sidesteps the GIL. Workers receive a pickled copy of the simulator without
  its TensorFlow members (the prior), so `simulate_numpy` must use only plain Python/numpy state.
  """

  #: Whether every call ends by itself (an external program's, at its own timeout). Other calls
  #: are registered while they run (`alfi_tf.simulators.calls`), for a watchdog to name one that
  #: does not return.
  limits_its_own_calls = False

  @abc.abstractmethod
  def simulate_numpy(self, theta: np.ndarray, num_obs: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Draws observations; `theta` is `[batch, d]` float64, returns `[batch, num_obs, d_x]`."""

  def simulate_numpy_at_design(self, theta: np.ndarray, design: np.ndarray,
                               rng: np.random.Generator) -> np.ndarray:
    """For `design_dim > 0`: draws one observation per design row (`Simulator.simulate_at_design`).

    `theta` is `[batch, d]` and `design` `[batch, num_obs, design_dim]`, both float64; returns
    `[batch, num_obs, d_x]` whose first `design_dim` columns are `design`.
    """
    raise NotImplementedError(f"simulator {self.name!r} has no design (design_dim = 0)")

  @property
  def has_design_simulation(self) -> bool:
    return (type(self).simulate_numpy_at_design
            is not NumpySimulator.simulate_numpy_at_design)

  def __getstate__(self) -> Dict[str, object]:
    # TF/TFP objects do not pickle; the workers only ever call `simulate_numpy`.
    return {key: value for key, value in self.__dict__.items()
            if not _is_tensorflow_object(value)}

  def simulate_checked(self, theta: np.ndarray, num_obs: int, seed: np.ndarray,
                       design: Optional[np.ndarray] = None) -> np.ndarray:
    """`simulate_numpy` (or, given a `design`, `simulate_numpy_at_design`) with its generator
    seeded from the stateless `seed` and its output checked.

    Args:
      theta: `[batch, d]` parameters.
      num_obs: observations per parameter vector (the design's rows, when one is given).
      seed: int32 `[2]` stateless seed.
      design: optional `[batch, num_obs, design_dim]` design columns to simulate at.

    Returns:
      `[batch, num_obs, d_x]` float32.
    """
    rng = np.random.default_rng(np.asarray(seed, np.int64).view(np.uint64))
    where = f"simulator {self.name or type(self).__name__!r}"
    method = self._method_name(design is not None)
    try:
      theta64 = np.asarray(theta, np.float64)
      out = np.asarray(self.simulate_numpy(theta64, num_obs, rng) if design is None else
                       self.simulate_numpy_at_design(theta64, np.asarray(design, np.float64),
                                                     rng))
    except (Exception, SystemExit) as error:   # a user's code, sys.exit() included
      # Left alone, SystemExit escaped tf.numpy_function as an UnknownError about a dataset map.
      raised = (f"called sys.exit({error.code!r})" if isinstance(error, SystemExit)
                else f"raised {type(error).__name__}: {error}")
      raise SimulatorError(
          f"{where} {raised} (for {theta.shape[0]} parameter "
          f"vector(s): {describe_parameters(theta, self.parameter_names)})") from error
    want = (theta.shape[0], num_obs, self.observation_dim)
    if out.shape != want:
      raise SimulatorError(f"{where}: {method} returned shape {out.shape}, expected {want}")
    try:   # strings would fail the cast below with an unrelated message; complex would pass it
      require_real_numbers(out, f"{where}: {method}'s output")
    except ValueError as error:
      raise SimulatorError(str(error)) from None
    out = observations_as_float32(out, theta, self.parameter_names, f"{where}: {method}",
                                  source=f"{type(self).__module__}.{method}")
    if design is not None:
      try:
        require_design_kept(out, design, self.design_dim, f"{where}: {method}")
      except ValueError as error:
        raise SimulatorError(str(error)) from None
    return out

  def _method_name(self, at_design: bool) -> str:
    """`MySimulator.simulate_numpy` (or `..._at_design`): the user's method, as messages name it."""
    return f"{type(self).__name__}.simulate_numpy" + ("_at_design" if at_design else "")

  def simulate(self, theta: tf.Tensor, num_obs: int, seed: tf.Tensor,
               executor: Optional[concurrent.futures.Executor] = None) -> tf.Tensor:
    """`simulate_checked` as a TF op; with `executor`, the numpy code runs in its processes."""
    return self._bridge(theta, int(num_obs), seed, None, executor)

  def simulate_at_design(self, theta: tf.Tensor, design: tf.Tensor,
                         seed: tf.Tensor) -> tf.Tensor:
    """`simulate_checked` at a design, as a TF op."""
    design = tf.convert_to_tensor(design, tf.float32)
    return self._bridge(theta, design.shape[1], seed, design, None)

  def _bridge(self, theta: tf.Tensor, num_obs: Optional[int], seed: tf.Tensor,
              design: Optional[tf.Tensor],
              executor: Optional[concurrent.futures.Executor]) -> tf.Tensor:
    """The `tf.numpy_function` around `simulate_checked` (`num_obs` None: the design's rows, not
    known until it runs)."""
    theta = tf.convert_to_tensor(theta, tf.float32)

    @tf.autograph.experimental.do_not_convert   # plain Python, called by TF with numpy arrays
    def _call(theta_np: np.ndarray, seed_np: np.ndarray, *design_np: np.ndarray) -> np.ndarray:
      design_np = design_np[0] if design_np else None
      rows = num_obs if design_np is None else design_np.shape[1]
      watched = (contextlib.nullcontext() if self.limits_its_own_calls else
                 calls.in_flight(self.name or type(self).__name__,
                                 self._method_name(design_np is not None), theta_np,
                                 self.parameter_names))
      with watched:
        if executor is None:
          return self.simulate_checked(theta_np, rows, seed_np, design_np)
        # Waiting on the worker releases the GIL, so tf.data's parallel calls run concurrently.
        try:
          return executor.submit(self.simulate_checked, theta_np, rows, seed_np,
                                 design_np).result()
        except concurrent.futures.BrokenExecutor as error:
          raise SimulatorError(
              f"simulator {self.name or type(self).__name__!r}: a data worker process died "
              f"while simulating (killed, out of memory, or the simulator's code exited the "
              f"process) for {theta_np.shape[0]} parameter vector(s): "
              f"{describe_parameters(theta_np, self.parameter_names)}; run with "
              f"--data_workers=0 to simulate in this process and see its own error") from error

    inputs = [theta, tf.convert_to_tensor(seed, tf.int32)] + ([] if design is None else [design])
    out = tf.numpy_function(_call, inputs, tf.float32, stateful=False,
                            name=_op_name(self.name))
    out.set_shape([theta.shape[0], num_obs, self.observation_dim])
    return out

  def _simulate_problems(self, theta: tf.Tensor, num_obs: int, seed: tf.Tensor,
                         executor: Optional[concurrent.futures.Executor]) -> tf.Tensor:
    return self.simulate(theta, num_obs, seed, executor=executor)
