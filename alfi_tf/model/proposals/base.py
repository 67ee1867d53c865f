"""The interface of a proposal family `q(theta | psi)`, the distribution the machine refines.

The machine never sees a proposal's internals: it asks for an initial `psi_0`, draws samples,
computes score features, and reads the mean and standard deviation of the answer. A family is one
subclass of `Proposal` in a file of its own, registered by name in `alfi_tf.model.proposals`.

Everything lives in *standardised* parameter space; `alfi_tf.model.parameter_space` maps a
proposal's mean and standard deviation back to the parameters' own units.

Shapes: `d` parameters, `P = psi_size` proposal parameters; `psi` is `[batch, P]` (or with a time
axis, `[batch, T, P]`), samples are `[batch, M, d]`.
"""

from __future__ import annotations

import abc
from typing import Tuple

import tensorflow as tf


class Proposal(abc.ABC):
  """A parametric family `q(theta | psi)` over `d` standardised parameters.

  Args:
    parameter_dim: `d`.
    initial_scale: the spread `sigma_0` of the initial proposal (`initial_psi`), standardised.
  """

  #: Registry name, used by `MachineConfig.proposal`.
  name: str = ""
  #: Whether `log_prob` is a density (False for a point mass, which the NLL loss cannot train).
  has_density: bool = True

  def __init__(self, parameter_dim: int, initial_scale: float = 0.1):
    if parameter_dim < 1:
      raise ValueError(f"parameter_dim must be positive, got {parameter_dim}")
    if not initial_scale > 0:
      raise ValueError(f"initial_scale must be positive, got {initial_scale}")
    self.parameter_dim = parameter_dim
    self.initial_scale = initial_scale

  @classmethod
  def create(cls, parameter_dim: int, initial_scale: float, mixture_components: int) -> "Proposal":
    """The family from the machine's settings; families with more settings override this."""
    del mixture_components   # only mixtures have components
    return cls(parameter_dim, initial_scale)

  @property
  @abc.abstractmethod
  def psi_size(self) -> int:
    """`P`, the number of proposal parameters."""

  @abc.abstractmethod
  def initial_psi(self, mean: tf.Tensor) -> tf.Tensor:
    """`psi_0 [batch, P]` of a proposal centred on `mean [batch, d]`, spread `initial_scale`."""

  @abc.abstractmethod
  def sample(self, psi: tf.Tensor, num_samples: int, seed: tf.Tensor) -> tf.Tensor:
    """Draws `M` samples per problem: `psi [batch, P]`, int32 `[2]` seed -> `[batch, M, d]`.

    Samples carry no gradient to `psi` (spec §2.1): the simulator they feed is not differentiable,
    so the machine learns from the score features instead.
    """

  @abc.abstractmethod
  def log_prob(self, theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
    """`log q(theta | psi)`: `theta [..., d]` and `psi [..., P]` broadcast -> `[...]`."""

  def score(self, theta: tf.Tensor, psi: tf.Tensor) -> tf.Tensor:
    """`grad_psi log q(theta | psi)`: `theta [batch, M, d]`, `psi [batch, P]` -> `[batch, M, P]`.

    By automatic differentiation of `log_prob` (one copy of `psi` per sample, so the gradient of
    the sum with respect to a copy is that sample's score); families override it with their
    closed form, which the tests check against this.
    """
    tiled = tf.repeat(psi[:, tf.newaxis], tf.shape(theta)[1], axis=1)      # [batch, M, P]
    with tf.GradientTape() as tape:
      tape.watch(tiled)
      total = tf.reduce_sum(self.log_prob(theta, tiled))
    return tape.gradient(total, tiled)

  @abc.abstractmethod
  def mean(self, psi: tf.Tensor) -> tf.Tensor:
    """The proposal's mean, `[..., P] -> [..., d]`."""

  @abc.abstractmethod
  def stddev(self, psi: tf.Tensor) -> tf.Tensor:
    """The proposal's marginal standard deviations, `[..., P] -> [..., d]`."""

  def marginal_components(self, psi: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Each parameter's marginal as a mixture of `C` normals (scale 0: a point), for the answer's
    moments through a nonlinear map (`alfi_tf.model.parameter_space`): `psi [..., P]` ->
    `(weights [..., C], means [..., C, d], stds [..., C, d])`. One component, the family's mean
    and marginal std, unless the family is a mixture."""
    return (tf.ones_like(psi[..., :1]), self.mean(psi)[..., tf.newaxis, :],
            self.stddev(psi)[..., tf.newaxis, :])

  def translation(self, step: tf.Tensor) -> tf.Tensor:
    """The change of `psi` that shifts `q` by `step`: `q(theta | psi + translation(step)) =
    q(theta - step | psi)`, `[..., d] -> [..., P]` (the machine's `regression_shortcut` adds a
    gated regression step to `psi` through it).

    The default suits families whose `psi` begins with the `d` location entries and whose
    other entries (spreads, shapes) do not move with the location; a mixture overrides it.
    """
    padding = tf.zeros(tf.concat([tf.shape(step)[:-1], [self.psi_size - self.parameter_dim]],
                                 axis=0), step.dtype)
    return tf.concat([step, padding], axis=-1)

  def update_units(self, psi: tf.Tensor) -> tf.Tensor:
    """The unit of each entry of `psi [..., P]` for steps relative to the proposal (the machine's
    `relative_updates`): the proposal's own spread for its location entries, 1 for the rest.

    The default, all ones, suits families without a spread (a point) and entries already on a
    relative scale (log standard deviations, logits, Cholesky entries).
    """
    return tf.ones_like(psi)


class LocationProposal(Proposal):
  """A family whose only parameters are its location: `psi = mu`, `P = d` (its spread is fixed)."""

  @property
  def psi_size(self) -> int:
    return self.parameter_dim

  def initial_psi(self, mean: tf.Tensor) -> tf.Tensor:
    return tf.identity(mean)

  def mean(self, psi: tf.Tensor) -> tf.Tensor:
    return psi


def sample_shape(psi: tf.Tensor, num_samples: int, parameter_dim: int) -> tf.Tensor:
  """`[batch, M, d]`, the shape of `sample`'s result for `psi [batch, P]`."""
  return tf.stack([tf.shape(psi)[0], num_samples, parameter_dim])
