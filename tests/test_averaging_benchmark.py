"""`benchmarks.averaging`: the averaged iterates' error and coverage, against closed forms."""

import numpy as np

from benchmarks.averaging import averaged_rows


def test_averaging_k_independent_iterates_divides_their_error_by_sqrt_k():
  rng = np.random.default_rng(0)
  problems, steps = 20000, 15
  theta = rng.uniform(-1.0, 1.0, size=(problems, 2))
  noise_std = np.array([0.1, 2.0])
  trajectory = theta[:, None, :] + noise_std * rng.standard_normal((problems, steps, 2))
  rows = averaged_rows(trajectory, np.broadcast_to(noise_std, (problems, 2)), theta,
                       reference_rmse=noise_std, windows=[1, 10])
  (_, ratio_1, cover68_1, cover95_1), (_, ratio_10, cover68_10, _) = rows
  # Relative standard error of an RMSE over 20,000 problems: about 1 / sqrt(2 * 20000) = 0.5%.
  np.testing.assert_allclose(ratio_1, 1.0, atol=0.02)
  np.testing.assert_allclose(ratio_10, 1 / np.sqrt(10), atol=0.02)
  # Binomial standard error of a coverage over 20,000 problems: at most 0.0035.
  assert abs(cover68_1 - 0.6827) < 0.015 and abs(cover95_1 - 0.95) < 0.01
  # The step's std is sqrt(10) times the average's error: the 68% interval covers 1 - 0.0016.
  assert cover68_10 > 0.99
