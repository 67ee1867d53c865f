"""`benchmarks.comparison`'s config reading, table, figure, page and scores of record (the runs
themselves are hours: no test trains)."""

import json
import os
import types

import numpy as np
import pytest

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


# The page and the scores of record (`write_page`, `load_scores`, `run_simulator`): the run root
# can be lost, so the page must keep tables whose scores are gone, and the scores must be saved
# where git keeps them.

PROSE = "# Comparison\n\nHand-written verdict.\n"
OLD_TABLE = "### {simulator}\n\n| method | x |\n|---|---|\n| alfi_1 | hand-kept {simulator} |"


def _page(tmp_path, *simulators):
  """A page in `tmp_path/docs` whose generated part holds an old section of each of `simulators`."""
  sections = "\n\n".join(
      "{}\n{}\n{}".format(benchmark.simulator_markers(s)[0], OLD_TABLE.format(simulator=s),
                          benchmark.simulator_markers(s)[1]) for s in simulators)
  path = tmp_path / "docs" / "comparison.md"
  path.parent.mkdir()
  path.write_text(f"{PROSE}\n{benchmark.MARKERS[0]}\nold header\n\n{sections}\n"
                  f"{benchmark.MARKERS[1]}\n\nMore prose.\n")
  return path


def _write_page(path, all_scores, monkeypatch):
  """`write_page` with the figures recorded instead of drawn; returns the figures' names."""
  drawn = []
  monkeypatch.setattr(benchmark, "plot_learning_curves",
                      lambda scores, figure: drawn.append((list(scores), os.path.basename(figure))))
  benchmark.write_page(str(path), all_scores, "benchmarks/results/comparison", 500)
  return drawn


def _scores(seed):
  rng = np.random.default_rng(seed)
  return {"alfi_1": _score("alfi", float(rng.uniform(1, 2)), 10 ** 9, 6000),
          "npe_flow_1e6": _score("npe_flow", float(rng.uniform(1, 2)), 10 ** 6, 0)}


def _section(text, simulator):
  return text.split(benchmark.simulator_markers(simulator)[0] + "\n")[1].split(
      "\n" + benchmark.simulator_markers(simulator)[1])[0]


def test_a_render_replaces_the_sections_with_scores_and_keeps_the_others_verbatim(
    tmp_path, monkeypatch):
  path = _page(tmp_path, "poisson", "weinberg")
  scores = _scores(0)
  drawn = _write_page(path, {"weinberg": scores}, monkeypatch)
  text = path.read_text()
  assert _section(text, "poisson") == OLD_TABLE.format(simulator="poisson")
  assert _section(text, "weinberg") == benchmark.render_section("weinberg", scores)
  assert "hand-kept weinberg" not in text and "old header" not in text
  assert "![learning curves of weinberg](figures/comparison_weinberg.png)" in text
  assert drawn == [(["weinberg"], "comparison_weinberg.png")]   # only simulators with scores
  assert text.startswith(PROSE) and text.endswith(f"{benchmark.MARKERS[1]}\n\nMore prose.\n")
  # The header counts what the page holds, not only the scores: poisson is on it without scores.
  assert ("Not yet run: gaussian, linear_regression, multi_distribution, lotka_volterra, "
          "linear_gaussian_5, linear_gaussian_10.") in text
  assert "the learning curves of\npoisson are in [figures/comparison.png]" in text


def test_a_simulator_not_on_the_page_is_appended_in_configs_order(tmp_path, monkeypatch):
  path = _page(tmp_path, "weinberg")
  new = ["linear_regression", "multi_distribution", "lotka_volterra", "linear_gaussian_5",
         "linear_gaussian_10"]   # in CONFIGS order, which is neither alphabetical nor its reverse
  all_scores = {simulator: _scores(seed) for seed, simulator in reversed(list(enumerate(new)))}
  _write_page(path, all_scores, monkeypatch)
  text = path.read_text()
  starts = [text.index(benchmark.simulator_markers(s)[0]) for s in ["weinberg"] + new]
  assert starts == sorted(starts) and starts[-1] < text.index(benchmark.MARKERS[1])
  assert _section(text, "weinberg") == OLD_TABLE.format(simulator="weinberg")
  assert "Not yet run: poisson, gaussian." in text
  _write_page(path, all_scores, monkeypatch)
  assert path.read_text() == text   # a rerun with the same scores changes nothing


def test_a_page_with_a_table_outside_the_simulator_markers_is_refused(tmp_path, monkeypatch):
  path = _page(tmp_path)
  legacy = path.read_text().replace("old header", "old header\n\n" + OLD_TABLE.format(
      simulator="poisson"))
  path.write_text(legacy)
  with pytest.raises(ValueError, match=r"holds a table before the first .* nothing was written"):
    _write_page(path, {"weinberg": _scores(3)}, monkeypatch)
  assert path.read_text() == legacy


def test_the_shipped_page_keeps_its_tables_whose_scores_are_lost(tmp_path, monkeypatch):
  with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "comparison.md"),
            encoding="utf-8") as stream:
    shipped = stream.read()
  path = _page(tmp_path)
  path.write_text(shipped)
  _write_page(path, {}, monkeypatch)
  assert path.read_text() == shipped   # the shipped page is what a render without scores writes
  _write_page(path, {"lotka_volterra": _scores(4)}, monkeypatch)
  text = path.read_text()
  for simulator in ("poisson", "weinberg", "gaussian", "linear_regression", "multi_distribution",
                    "linear_gaussian_5", "linear_gaussian_10"):
    assert _section(text, simulator) == _section(shipped, simulator), simulator
    assert _section(text, simulator).count("\n| ") == 10, simulator   # the column names, 9 methods
  assert text.index("comparison:multi_distribution:end") < text.index("comparison:lotka_volterra:")
  assert "Not yet run: none." in text


def test_scores_are_imported_from_a_roots_scores_json(tmp_path, monkeypatch):
  record, cached = _scores(5), _scores(6)
  scores_dir, root = tmp_path / "results", tmp_path / "root"
  benchmark.write_json_atomically(str(scores_dir / "poisson.json"), {"alfi_1": record["alfi_1"]})
  benchmark.write_json_atomically(str(root / "poisson" / "scores.json"), cached)
  scores = benchmark.load_scores("poisson", str(scores_dir), str(root))
  # The record's entry wins; the method only the root holds is imported and saved.
  assert scores == {"alfi_1": record["alfi_1"], "npe_flow_1e6": cached["npe_flow_1e6"]}
  assert json.loads((scores_dir / "poisson.json").read_text()) == scores
  writes = _spy_writes(monkeypatch)
  assert benchmark.load_scores("poisson", str(scores_dir), str(root)) == scores
  assert benchmark.load_scores("weinberg", str(scores_dir), str(root)) == {}
  assert not writes   # nothing new to import: the record is not rewritten
  assert not os.path.exists(scores_dir / "weinberg.json")


def _spy_writes(monkeypatch):
  """The (path, labels) of every `write_json_atomically` of the benchmark, which still writes."""
  writes = []
  real = benchmark.write_json_atomically
  def spy(path, payload):
    writes.append((path, sorted(payload)))
    real(path, payload)
  monkeypatch.setattr(benchmark, "write_json_atomically", spy)
  return writes


def test_a_run_scores_only_the_missing_methods_and_saves_each_atomically(tmp_path, monkeypatch):
  scores_dir, root = str(tmp_path / "results"), str(tmp_path / "root")
  benchmark.write_json_atomically(benchmark.scores_path(scores_dir, "poisson"),
                                  {"alfi_0.1": _score("alfi", 1.5, 10 ** 8, 6000)})
  called = []
  def method(label):
    def answer():
      called.append(label)
      if label == "abc_equal_budget":
        raise RuntimeError("killed")
      return label
    return answer
  labels = ("alfi_0.1", "alfi_1", "npe_flow_1e6", "abc_equal_budget")
  monkeypatch.setattr(benchmark, "_methods", lambda simulator, run_root: {
      label: method(label) for label in labels})
  monkeypatch.setattr(benchmark, "_test_problems", lambda simulator, settings: (
      types.SimpleNamespace(theta=None, observations=None)))
  monkeypatch.setattr(benchmark, "reference_estimates", lambda simulator, observations: {})
  monkeypatch.setattr(benchmark.comparison, "score",
                      lambda answer, *args: _score("alfi", 1.1, 10 ** 9, 6000))
  writes = _spy_writes(monkeypatch)
  with pytest.raises(RuntimeError, match="killed"):
    benchmark.run_simulator("poisson", scores_dir, root)
  assert called == ["alfi_1", "npe_flow_1e6", "abc_equal_budget"]   # alfi_0.1 was scored
  path = benchmark.scores_path(scores_dir, "poisson")
  assert writes == [(path, ["alfi_0.1", "alfi_1"]), (path, ["alfi_0.1", "alfi_1", "npe_flow_1e6"])]
  assert sorted(json.loads(open(path).read())) == ["alfi_0.1", "alfi_1", "npe_flow_1e6"]
  assert os.listdir(scores_dir) == ["poisson.json"]   # no temporary file left beside it


def test_a_fully_scored_simulator_is_imported_without_its_test_problems(tmp_path, monkeypatch):
  scores_dir, root = str(tmp_path / "results"), str(tmp_path / "root")
  cached = _scores(7)
  benchmark.write_json_atomically(os.path.join(root, "poisson", "scores.json"), cached)
  monkeypatch.setattr(benchmark, "_methods", lambda simulator, run_root: {
      label: None for label in cached})
  def no_test_problems(*args):
    raise AssertionError("an import must not draw the held-out problems")
  monkeypatch.setattr(benchmark, "_test_problems", no_test_problems)
  assert benchmark.run_simulator("poisson", scores_dir, root) == cached
  assert json.loads(open(benchmark.scores_path(scores_dir, "poisson")).read()) == cached
