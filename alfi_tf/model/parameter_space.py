"""The space the machine's proposals live in, and the way back to the parameters' own units.

Raw parameters `theta` reach the proposals through two maps:

    theta  --(b^-1, optional)-->  u  --(standardise)-->  z = (u - m) / s,

where `b` is the simulator's `parameter_bijector` (`MachineConfig.unconstrained_parameters`; by
default the prior's `experimental_default_event_space_bijector()`: for a box prior
`b(u) = low + (high - low) sigmoid(u)`, the transform sbi and BayesFlow apply to bounded
parameters), and `m`, `s` the meta-training parameters' mean and std in `u`. Without `b` the first
map is the identity (the paper's: proposals on the box, clipped into it for simulation).

Why: a Gaussian proposal has one width per parameter, but a posterior's width in raw units can
vary by orders of magnitude over the prior. A regression slope parameterised as an angle `alpha`
has posterior std `~ sigma_beta / (1 + tan(alpha)^2)` in `alpha`: 100 times narrower at
`tan(alpha) = 10` than at 0. Under the logit of the box it is `~ sigma_beta / tan(alpha)` near the
upper bound, which halves that range in orders of magnitude, and a proposal can no longer step
past the box's edge. A simulator may give a `b` onto more than the box (`linear_regression`'s
`asinh(slope)`); samples beyond the box are then clipped for simulation, as without `b`.

With `b` nonlinear, a proposal's mean and std in raw units are those of the push-forward `b(u)`:
`b` maps each parameter on its own, so they follow from each parameter's marginal (a normal, or a
mixture of normals), by `QUADRATURE_NODES`-point Gauss-Hermite quadrature per component:
deterministic, and the same for a data set whatever batch it is answered in. The answer's
calibration factors (`std_scales`) rescale the proposal's spread in `z` about its mean, where it
is Gaussian, and the raw answer is the push-forward of that rescaled proposal: the same
distribution `sample_final_proposal` draws from and `answer_log_prob` scores. So do its calibration
shifts (`mean_shifts`), which move the proposal by a multiple of its std in `z`.

Without `b` a proposal is not confined to the prior's box, but the posterior is zero outside it:
for a data set whose parameters lie at the box's edge, a proposal centred beyond the edge can be
the machine's best fit (it only ever simulates at the box's clipped samples), and its mean is
then an estimate outside the prior's support. The answer's mean and std are therefore those of
the proposal restricted to the box, `q(theta) 1[theta in box] / Z`, in closed form
(`box_restricted_moments`): exact for families whose components are diagonal (a diagonal
Gaussian, a mixture of them, a point, which is clipped), each marginal restricted on its own for
a full covariance. `proposal_mean` keeps the unrestricted mean, which says whether the machine
left the box (`alfi_tf.model.inference.extrapolations`). Draws and densities
(`sample_final_proposal`, `answer_log_prob`) are the proposal's own; those outside the box are
where the restriction cuts.

Shapes: `d` parameters; `theta`, `z`: `[..., d]`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from alfi_tf.model.normalization import Moments, Standardizer
from alfi_tf.model.proposals import Proposal

#: Gauss-Hermite nodes per normal for the answer's raw moments under a nonlinear `b` (exact for
#: polynomials of degree < 2K; sigmoids and exponentials of a normal converge long before).
QUADRATURE_NODES = 24
#: Raw parameters are moved this fraction of the box's width inside it before `b^-1`: a prior
#: draw on the box's edge (float32 rounding makes them) would map to an infinite `u`.
_EDGE_MARGIN = 1e-6


class ParameterSpace:
  """Maps between raw parameters and the proposals' standardised space `z`.

  Args:
    standardizer: the statistics `m`, `s` of `u` (the machine's weights; set by `set_moments`).
    bijector: `b`, an elementwise `tfp.bijectors.Bijector` from `R^d` onto (at least) the prior's
      support, or None for the identity.
    bounds: the prior's box `(low, high)`, `[d]` each, or None.
  """

  def __init__(self, standardizer: Standardizer, bijector: Optional[tfp.bijectors.Bijector],
               bounds: Optional[Tuple[tf.Tensor, tf.Tensor]]):
    self.standardizer = standardizer
    self.bijector = bijector
    self._bounds = bounds

  def _inside(self, theta: tf.Tensor) -> tf.Tensor:
    """`theta`, its entries on or next to the box's edges moved `_EDGE_MARGIN` of the box's width
    inside it; entries beyond the box are left for `b^-1` to map (a `b` may map onto more than
    the box) or to refuse (NaN)."""
    if self._bounds is None:
      return theta
    low, high = self._bounds
    margin = _EDGE_MARGIN * (high - low)
    in_box = (theta >= low) & (theta <= high)
    return tf.where(in_box, tf.clip_by_value(theta, low + margin, high - margin), theta)

  def unconstrained(self, theta) -> tf.Tensor:
    """Raw `theta [..., d]` -> `u = b^-1(theta)` (float32; `theta` itself without `b`)."""
    theta = tf.cast(theta, tf.float32)
    return theta if self.bijector is None else self.bijector.inverse(self._inside(theta))

  def moments_of(self, theta: np.ndarray) -> Moments:
    """The statistics of `u` over some raw parameters `[K, d]`, for `Standardizer.set_moments`."""
    return Moments.of(self.unconstrained(theta).numpy(), self.standardizer.size)

  def forward(self, theta) -> tf.Tensor:
    """Raw `theta [..., d]` -> standardised `z`."""
    return self.standardizer.forward(self.unconstrained(theta))

  def inverse(self, z: tf.Tensor) -> tf.Tensor:
    """Standardised `z [..., d]` -> raw `theta` (in `b`'s image)."""
    u = self.standardizer.inverse(z)
    return u if self.bijector is None else self.bijector.forward(u)

  def forward_log_det_jacobian(self, theta) -> tf.Tensor:
    """`log |det dz / dtheta|` at raw `theta [..., d]` -> `[...]`: added to a log-density of `z`,
    it gives one of raw `theta`; -inf outside `b`'s image, where that density is zero."""
    theta = tf.cast(theta, tf.float32)
    log_det = tf.broadcast_to(self.standardizer.forward_log_det_jacobian(), tf.shape(theta)[:-1])
    if self.bijector is None:
      return log_det
    log_det += self.bijector.inverse_log_det_jacobian(self._inside(theta), event_ndims=1)
    return tf.where(tf.math.is_finite(log_det), log_det, tf.constant(-np.inf, tf.float32))

  def moments(self, proposal: Proposal, psi: tf.Tensor, scale: tf.Tensor,
              shift: Optional[tf.Tensor] = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """The raw mean and marginal std of `q(z | psi)` moved by `shift` of its std and spread
    about its mean by `scale`, pushed forward to raw units (and, without `b`, restricted to the
    prior's box): `psi [..., P]`, `scale` and `shift` (None: 0) broadcasting to `[..., d]` ->
    `[..., d]` each."""
    mean_z, std_z = proposal.mean(psi), proposal.stddev(psi)
    scale = tf.broadcast_to(scale, tf.shape(mean_z))
    centre = mean_z if shift is None else mean_z + shift * std_z
    if self.bijector is None and self._bounds is None:   # affine, unbounded: closed form
      return self.standardizer.inverse(centre), self.standardizer.std * std_z * scale
    weights, means, stds = _spread_components(proposal, psi, mean_z, centre, scale)
    if self.bijector is None:
      means, stds = self.standardizer.inverse(means), self.standardizer.std * stds
      return box_restricted_moments(weights, means, stds, *self._bounds)
    nodes, node_weights = _quadrature()                           # [K, 1], [K, 1]
    z = means[..., tf.newaxis, :] + stds[..., tf.newaxis, :] * nodes           # [..., C, K, d]
    theta = tf.cast(self.inverse(z), tf.float64)
    weight = tf.cast(weights, tf.float64)[..., tf.newaxis, tf.newaxis] * node_weights
    mean = tf.reduce_sum(weight * theta, axis=[-3, -2])                        # [..., d]
    variance = tf.reduce_sum(weight * tf.square(theta - mean[..., tf.newaxis, tf.newaxis, :]),
                             axis=[-3, -2])
    return tf.cast(mean, tf.float32), tf.cast(tf.sqrt(variance), tf.float32)

  def proposal_mean(self, proposal: Proposal, psi: tf.Tensor) -> tf.Tensor:
    """The raw mean of `q(z | psi)` itself, `[..., P] -> [..., d]`: `moments`' mean before the
    restriction to the prior's box (the same where `b` maps onto the box)."""
    if self.bijector is None:
      return self.standardizer.inverse(proposal.mean(psi))
    return self.moments(proposal, psi, tf.ones_like(proposal.mean(psi)))[0]


def _spread_components(proposal: Proposal, psi: tf.Tensor, mean_z: tf.Tensor, centre: tf.Tensor,
                       scale: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Each parameter's marginal of `q(z | psi)` as normal components (`marginal_components`:
  `weights [..., C]`, `means`, `stds` `[..., C, d]`), mapped by `z -> centre + scale (z - mean_z)`
  (the proposal's mean `mean_z`; `[..., d]` each)."""
  weights, means, stds = proposal.marginal_components(psi)
  mean_z, centre, scale = (x[..., tf.newaxis, :] for x in (mean_z, centre, scale))
  return weights, centre + scale * (means - mean_z), scale * stds


def box_restricted_moments(weights: tf.Tensor, means: tf.Tensor, stds: tf.Tensor, low: tf.Tensor,
                           high: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """The mean and marginal std of a mixture of diagonal normals restricted to a box.

  The mixture `sum_c w_c prod_j N(theta_j; m_cj, s_cj^2)` times `1[low <= theta <= high]`,
  renormalised, is again a mixture, of truncated normals `TN(m_cj, s_cj; low_j, high_j)`, with
  weights `w_c Z_c / sum_c' w_c' Z_c'`, where `Z_c = prod_j (Phi(beta_cj) - Phi(alpha_cj))` is
  component `c`'s mass in the box, `alpha = (low - m) / s`, `beta = (high - m) / s`. A truncated
  normal has, with `r_a = phi(alpha) / Z_j` and `r_b = phi(beta) / Z_j`,

      mean = m + s (r_a - r_b),     var = s^2 [1 + alpha r_a - beta r_b - (r_a - r_b)^2].

  Computed in float64 with every ratio in log space (`_log_box_mass`), so that a component far
  outside the box gives a narrow answer just inside its nearest edge instead of 0 / 0. A
  component with `s = 0` (a point) is clipped into the box. Bounds may be infinite.

  Args:
    weights: `[..., C]`, summing to 1.
    means, stds: `[..., C, d]`, raw units.
    low, high: the box, broadcasting to `[d]`.

  Returns:
    `(mean, std)`, `[..., d]` each, float32.
  """
  means, stds = tf.cast(means, tf.float64), tf.cast(stds, tf.float64)
  low, high = tf.cast(low, tf.float64), tf.cast(high, tf.float64)
  point = stds <= 0
  safe_stds = tf.where(point, tf.ones_like(stds), stds)
  alpha, beta = (low - means) / safe_stds, (high - means) / safe_stds
  log_mass = tf.where(point, tf.zeros_like(alpha), _log_box_mass(alpha, beta))   # [..., C, d]
  # phi(bound) / Z_j, and bound phi(bound) / Z_j with 0 for an infinite bound (where phi is 0).
  ratio_low = tf.exp(_log_normal_pdf(alpha) - log_mass)
  ratio_high = tf.exp(_log_normal_pdf(beta) - log_mass)
  tilt_low = tf.where(tf.math.is_finite(alpha), alpha * ratio_low, tf.zeros_like(alpha))
  tilt_high = tf.where(tf.math.is_finite(beta), beta * ratio_high, tf.zeros_like(beta))
  offset = ratio_low - ratio_high
  # Far outside the box the closed form's variance cancels to nothing; there the restriction is
  # integrated from the nearer edge (`_far_restriction`).
  distance = tf.maximum(alpha, -beta)
  far = distance > _FAR_OUTSIDE
  far_shift, far_variance = _far_restriction(tf.maximum(distance, _FAR_OUTSIDE), beta - alpha)
  near_edge = tf.where(alpha > 0, low + stds * far_shift, high - stds * far_shift)
  component_means = tf.where(point, tf.clip_by_value(means, low, high),
                             tf.where(far, near_edge, means + stds * offset))
  component_variances = tf.where(point, tf.zeros_like(stds), tf.square(stds) * tf.where(
      far, far_variance, tf.maximum(1.0 + tilt_low - tilt_high - tf.square(offset), 0.0)))
  log_weights = tf.math.log(tf.cast(weights, tf.float64)) + tf.reduce_sum(log_mass, axis=-1)
  restricted_weights = tf.nn.softmax(log_weights, axis=-1)[..., tf.newaxis]      # [..., C, 1]
  mean = tf.reduce_sum(restricted_weights * component_means, axis=-2)
  variance = tf.reduce_sum(restricted_weights * (
      component_variances + tf.square(component_means - mean[..., tf.newaxis, :])), axis=-2)
  return tf.cast(mean, tf.float32), tf.cast(tf.sqrt(variance), tf.float32)


#: Components more than this many standard deviations outside the box are restricted by
#: quadrature (`_far_restriction`): beyond it, `box_restricted_moments`' closed-form variance
#: is a difference of terms some `distance^4` times larger than itself.
_FAR_OUTSIDE = 20.0
#: Gauss-Legendre nodes and weights on [-1, 1] for `_far_restriction`.
_EDGE_QUADRATURE = np.polynomial.legendre.leggauss(64)


def _far_restriction(distance: tf.Tensor, width: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """A normal's restriction to a box `distance` of its standard deviations away (float64,
  `[...]` each, the box `width` of them wide, possibly infinite): the mean and variance of
  the distance `t` into the box from its nearer edge, in units of the normal's std, whose
  density is `exp(-distance t - t^2 / 2)` on `[0, width]`. By Gauss-Legendre quadrature over
  `[0, min(width, 60 / distance)]`, past which the density is below `e^-60` of its value at
  the edge: a sum of positive terms, so no digits cancel however far the box is."""
  nodes, weights = (tf.constant(x, tf.float64) for x in _EDGE_QUADRATURE)
  span = tf.minimum(width, 60.0 / distance)[..., tf.newaxis]
  t = 0.5 * span * (nodes + 1.0)                                                 # [..., K]
  density = weights * tf.exp(-distance[..., tf.newaxis] * t - 0.5 * tf.square(t))
  density = density / tf.reduce_sum(density, axis=-1, keepdims=True)
  mean = tf.reduce_sum(density * t, axis=-1)
  return mean, tf.reduce_sum(density * tf.square(t - mean[..., tf.newaxis]), axis=-1)


def _log_box_mass(alpha: tf.Tensor, beta: tf.Tensor) -> tf.Tensor:
  """`log(Phi(beta) - Phi(alpha))` for `alpha < beta` (float64), accurate far in either tail: an
  interval above the mode is mirrored below it, `Phi(-alpha) - Phi(-beta)`, where
  `_log_normal_cdf` keeps its digits."""
  upper = alpha > 0
  above, below = tf.where(upper, -alpha, beta), tf.where(upper, -beta, alpha)
  return tfp.math.log_sub_exp(_log_normal_cdf(above), _log_normal_cdf(below))


#: Below this, `log Phi(x)` is the asymptotic series (`_log_normal_cdf`); above, `erfc`
#: keeps its float64 digits (`erfc(30 / sqrt 2)` is about 1e-197).
_SERIES_BELOW = -30.0


def _log_normal_cdf(x: tf.Tensor) -> tf.Tensor:
  """`log Phi(x)` (float64) with its digits far in the lower tail: `log(erfc(-x / sqrt 2) / 2)`,
  and below `_SERIES_BELOW`, where `erfc` heads for underflow, Mills' asymptotic series

      log Phi(x) = log phi(x) - log(-x) + log(1 - 1/x^2 + 3/x^4 - 15/x^6 + 105/x^8 - 945/x^10),

  whose first omitted term is below 1e-14 there. Each branch sees only inputs in its own range,
  so neither puts a NaN into the other's gradient. (`tfp.math.logerfc` is as accurate but
  builds a long Chebyshev recursion with a custom gradient, which dominated an export's
  tracing time.)"""
  erfc_x = tf.maximum(x, _SERIES_BELOW)
  series_x = tf.minimum(x, _SERIES_BELOW)
  inverse_square = 1.0 / tf.square(series_x)
  series = 1.0 + inverse_square * (-1.0 + inverse_square * (3.0 + inverse_square * (
      -15.0 + inverse_square * (105.0 - 945.0 * inverse_square))))
  tail = _log_normal_pdf(series_x) - tf.math.log(-series_x) + tf.math.log(series)
  return tf.where(x < _SERIES_BELOW, tail,
                  tf.math.log(tf.math.erfc(-erfc_x / np.sqrt(2.0))) - np.log(2.0))


def _log_normal_pdf(x: tf.Tensor) -> tf.Tensor:
  """`log phi(x)` of the standard normal (-inf at infinite `x`)."""
  return -0.5 * tf.square(x) - 0.5 * np.log(2.0 * np.pi)


def _quadrature() -> Tuple[tf.Tensor, tf.Tensor]:
  """Gauss-Hermite nodes `[K, 1]` (float32) and weights `[K, 1]` (float64, summing to 1) for
  `E f(x)`, `x ~ N(0, 1)`."""
  nodes, weights = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
  return (tf.constant(nodes[:, np.newaxis], tf.float32),
          tf.constant((weights / weights.sum())[:, np.newaxis], tf.float64))


def parameter_bijector(simulator) -> tfp.bijectors.Bijector:
  """`simulator.parameter_bijector`, checked: elementwise, and mapping prior draws to finite `u`
  and back; or one ValueError naming the simulator and what is wrong."""
  where = f"simulator {simulator.spec!r}: parameter_bijector"
  try:
    bijector = simulator.parameter_bijector
  except NotImplementedError as error:   # TFP has no default for some priors
    raise ValueError(f"{where}: the prior {type(simulator.prior).__name__} has no default "
                     f"event-space bijector ({error}); define the simulator's "
                     "parameter_bijector property") from error
  if not isinstance(bijector, tfp.bijectors.Bijector):
    raise ValueError(f"{where} must be a tfp.bijectors.Bijector, got {type(bijector).__name__}")
  if bijector.forward_min_event_ndims != 0:
    raise ValueError(f"{where} must map each parameter on its own (forward_min_event_ndims 0), "
                     f"got {bijector.name} with forward_min_event_ndims "
                     f"{bijector.forward_min_event_ndims}")
  draws = tf.cast(simulator.prior.sample(16, seed=tf.constant([0, 1])), tf.float32)
  bounds = simulator.parameter_bounds
  space = ParameterSpace(Standardizer(simulator.parameter_dim), bijector,
                         None if bounds is None else tuple(tf.constant(b) for b in bounds))
  try:
    u = space.unconstrained(draws)
    back = space.inverse(u)
  except (ValueError, TypeError, tf.errors.OpError) as error:
    raise ValueError(f"{where} ({bijector.name}) failed on draws from the prior: "
                     f"{error}") from error
  if (u.shape != draws.shape or back.shape != draws.shape
      or not np.all(np.isfinite(u.numpy())) or not np.all(np.isfinite(back.numpy()))):
    # NaN: the prior's draws are not all in the bijector's image.
    raise ValueError(f"{where} ({bijector.name}) must map draws from the prior to finite values "
                     f"of the same shape {draws.shape.as_list()} and back, got "
                     f"{u.shape.as_list()}")
  return bijector


#: Where `describe_bijector` probes `b^-1`: these fractions of each parameter's box.
_PROBE_FRACTIONS = (0.125, 0.375, 0.625, 0.875)


def describe_bijector(bijector: tfp.bijectors.Bijector,
                      bounds: Optional[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, Any]:
  """What a trained machine assumes of its `b` (`simulator.json` records it): the bijector's class
  and name, and `u = b^-1(theta)` at `_PROBE_FRACTIONS` of the prior's box `bounds` (`[d]` each;
  None: no probes). The probes catch a changed map that kept its name (a new scale, say): the
  machine's standardisation statistics and weights are in `u`, so its answers would be wrong.

  Returns:
    `{"bijector": "Class/name", "inverse_at_box_fractions": [[d] per fraction] or None}`.
  """
  probes = None
  if bounds is not None:
    low, high = (np.asarray(b, np.float64) for b in bounds)
    theta = np.array([low + f * (high - low) for f in _PROBE_FRACTIONS], np.float32)
    probes = np.asarray(bijector.inverse(tf.constant(theta)), np.float64).round(6).tolist()
  return {"bijector": f"{type(bijector).__name__}/{bijector.name}",
          "inverse_at_box_fractions": probes}


def bijector_changes(recorded: Dict[str, Any], current: Dict[str, Any]) -> Optional[str]:
  """How `current` differs from `recorded` (two `describe_bijector`s), or None when the machine can
  use `current`: same class and name, probes equal to float32 precision."""
  if recorded["bijector"] != current["bijector"]:
    return f"{recorded['bijector']}, is now {current['bijector']}"
  before, after = recorded["inverse_at_box_fractions"], current["inverse_at_box_fractions"]
  if (before is None) != (after is None) or (
      before is not None and not np.allclose(before, after, rtol=1e-4, atol=1e-5)):
    return (f"{recorded['bijector']} with b^-1 = {before} at {_PROBE_FRACTIONS} of the box, is "
            f"now {after}")
  return None
