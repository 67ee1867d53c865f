"""The moment-matching efficiency of `benchmarks.transform_efficiency` against closed forms."""

import math

import numpy as np
import pytest

from benchmarks import transform_efficiency as efficiency


@pytest.mark.parametrize("log_rate", [0.2, 2.0, 7.0])
def test_poisson_moments_of_the_counts_are_the_rate(log_rate):
  mean, variance = efficiency.moments(log_rate, efficiency.TRANSFORMS["identity"])
  np.testing.assert_allclose([mean, variance], [math.exp(log_rate)] * 2, rtol=1e-9)


def test_the_set_mean_of_the_counts_is_efficient_and_log1p_is_not_at_low_rates():
  identity, log1p = efficiency.TRANSFORMS["identity"], efficiency.TRANSFORMS["log1p"]
  for log_rate in (0.3, 3.0, 7.0):
    assert efficiency.relative_rmse(log_rate, identity) == pytest.approx(1.0, abs=1e-6)
  # A count of 0 or 1 is where log1p bends most: at rate 1.35 the mean of log1p(x) keeps less
  # of the information in the counts.
  assert efficiency.relative_rmse(0.3, log1p) > 1.03
  # Rates in the hundreds: log1p is locally linear over the counts' spread (delta method).
  assert efficiency.relative_rmse(7.0, log1p) == pytest.approx(1.0, abs=1e-3)
  assert efficiency.prior_rmse_ratio(identity, 0.2, 7.0, 20) == pytest.approx(1.0, abs=1e-6)


def test_sqrt_stabilises_the_variance_at_high_rates():
  """Var(sqrt x) -> 1/4 and d sqrt(e^theta) / d theta = sqrt(e^theta) / 2: r -> 1."""
  mean, variance = efficiency.moments(6.0, efficiency.TRANSFORMS["sqrt"])
  assert variance == pytest.approx(0.25, rel=1e-2)
  assert mean == pytest.approx(math.exp(3.0), rel=1e-3)
