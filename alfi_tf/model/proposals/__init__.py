"""Proposal families `q(theta | psi)`, selectable by name (`MachineConfig.proposal`).

* `diagonal_gaussian`: the paper's `N(mu, diag(sigma^2))` (the default).
* `full_covariance_gaussian`: `N(mu, L L^T)`, for correlated posteriors.
* `gaussian_mixture`: K diagonal Gaussians (`MachineConfig.mixture_components`), for multimodal ones.
* `fixed_variance_gaussian`: `N(mu, sigma_0^2 I)`, only the mean moves (the authors' ablation).
* `point`: all samples at `mu` (the authors' constant proposal; trained with `mse` or `l1`).

Adding a family is one new file: a `Proposal` subclass (see `base.py` for the interface and
`diagonal_gaussian.py` for an example), listed in `FAMILIES` below and in
`alfi_tf.config.PROPOSALS`.
"""

from __future__ import annotations

from alfi_tf.model.proposals.base import Proposal
from alfi_tf.model.proposals.diagonal_gaussian import DiagonalGaussian
from alfi_tf.model.proposals.fixed_variance_gaussian import FixedVarianceGaussian
from alfi_tf.model.proposals.full_covariance_gaussian import FullCovarianceGaussian
from alfi_tf.model.proposals.gaussian_mixture import GaussianMixture
from alfi_tf.model.proposals.point import Point

#: Every family, by name; `alfi_tf.config.PROPOSALS` lists the same names (a test checks it).
FAMILIES = {family.name: family for family in (DiagonalGaussian, FullCovarianceGaussian,
                                               GaussianMixture, FixedVarianceGaussian, Point)}


def get_proposal(name: str, parameter_dim: int, initial_scale: float = 0.1,
                 mixture_components: int = 3) -> Proposal:
  """The proposal family `name` over `parameter_dim` parameters.

  Args:
    name: a key of `FAMILIES`.
    parameter_dim: `d`.
    initial_scale: the spread of the initial proposal (the fixed spread of
      `fixed_variance_gaussian`), standardised.
    mixture_components: `K` of `gaussian_mixture` (ignored by the other families).
  """
  if name not in FAMILIES:
    raise ValueError(f"unknown proposal {name!r}; valid names are: {', '.join(FAMILIES)}")
  return FAMILIES[name].create(parameter_dim, initial_scale, mixture_components)


__all__ = ["Proposal", "DiagonalGaussian", "FullCovarianceGaussian", "GaussianMixture",
           "FixedVarianceGaussian", "Point", "FAMILIES", "get_proposal"]
