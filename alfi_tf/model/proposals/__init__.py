"""Proposal families `q(theta | psi)`, selectable by name (`MachineConfig.proposal`).

Adding a family is one new file: a `Proposal` subclass (see `base.py` for the interface and
`diagonal_gaussian.py` for an example), listed in `FAMILIES` below and in
`alfi_tf.config.PROPOSALS`.
"""

from __future__ import annotations

from alfi_tf.model.proposals.base import Proposal
from alfi_tf.model.proposals.diagonal_gaussian import DiagonalGaussian

#: Every family, by name; `alfi_tf.config.PROPOSALS` lists the same names (a test checks it).
FAMILIES = {family.name: family for family in (DiagonalGaussian,)}


def get_proposal(name: str, parameter_dim: int) -> Proposal:
  """The proposal family `name` over `parameter_dim` parameters."""
  if name not in FAMILIES:
    raise ValueError(f"unknown proposal {name!r}; valid names are: {', '.join(FAMILIES)}")
  return FAMILIES[name](parameter_dim)


__all__ = ["Proposal", "DiagonalGaussian", "FAMILIES", "get_proposal"]
