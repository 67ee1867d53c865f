"""`benchmarks.comparison`'s config reading, table and figure (the runs themselves are hours)."""

import os

from benchmarks import comparison as benchmark


def test_config_settings_follow_flagfiles_and_later_lines_win():
  settings = benchmark.config_settings("poisson")
  assert settings["simulator"] == "poisson" and settings["epochs"] == "32"
  assert settings["num_obs"] == "500"                          # from base.cfg
  assert settings["observation_transform"] == "log1p"          # poisson.cfg overrides base.cfg
  assert set(benchmark.CONFIGS.values()) <= {name[:-4] for name in os.listdir(
      os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "configs"))}


def _score(method, ratio, training, per_inference):
  return {"method": method, "failed": 0, "reference": "posterior_mean",
          "rmse_ratio": {"a": ratio, "b": 2 * ratio},
          "coverage": {"0.68": {"a": 0.6, "b": 0.7}, "0.95": {"a": 0.9, "b": 1.0}},
          "nll": -1.5, "training_simulations": training,
          "simulations_per_inference": per_inference, "training_seconds": 120.0,
          "inference_seconds": 0.002, "marginal_kl_to_posterior": {"a": 0.1, "b": 0.3}}


def test_the_table_and_the_learning_curves(tmp_path):
  scores = {"alfi_0.1": _score("alfi", 1.5, 10 ** 8, 6000),
            "alfi_1": _score("alfi", 1.1, 10 ** 9, 6000),
            "npe_flow_1e6": _score("npe_flow", 1.3, 10 ** 6, 0),
            "abc_equal_budget": _score("abc", 3.0, 0, 6000)}
  table = benchmark.render_table("poisson", scores)
  assert "| alfi_1 | 1e+09 | 6e+03 | 2.200, 1.650 | 0.65 / 0.95 | -1.500 | 0.2 | 2.0 | 2.00 |" in table
  rows = [line.split(" |")[0] for line in table.splitlines()[4:]]
  assert rows == ["| alfi_0.1", "| alfi_1", "| npe_flow_1e6", "| abc_equal_budget"]
  path = str(tmp_path / "curves.png")
  benchmark.plot_learning_curves({"poisson": scores, "weinberg": scores}, path)
  assert os.path.getsize(path) > 10_000
