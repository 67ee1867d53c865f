"""Evaluation figures (`alfi_tf.evaluation.plots`): written atomically, closed whatever happens."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pytest

from alfi_tf.evaluation import plots


def test_a_figure_that_fails_while_drawing_is_closed_and_the_callers_are_kept(tmp_path):
  callers = plt.figure()
  path = str(tmp_path / "boxes.png")
  with pytest.raises(IndexError):   # errors for one parameter of two: fails mid-drawing
    plots.plot_error_boxes(path, ["a", "b"], {"mle": np.zeros([4, 1])})
  assert plt.get_fignums() == [callers.number]
  assert not os.path.exists(path)
  plots.plot_error_boxes(path, ["a"], {"mle": np.zeros([4, 1])})
  assert plt.get_fignums() == [callers.number] and plots.is_own_figure(path)
  plt.close(callers)


def test_a_figure_is_known_by_the_plot_that_drew_it(tmp_path):
  trajectory, boxes = str(tmp_path / "trajectory.png"), str(tmp_path / "boxes.png")
  plots.plot_trajectory(trajectory, ["a"], np.zeros([1, 3, 1]), np.ones([1, 3, 1]))
  plots.plot_error_boxes(boxes, ["a"], {"mle": np.zeros([4, 1])})
  assert plots.is_own_figure(trajectory, plots.plot_trajectory) and plots.is_own_figure(boxes)
  # alfi-infer --plot replaces an earlier trajectory, never an evaluation's figure.
  assert not plots.is_own_figure(boxes, plots.plot_trajectory)
