"""alfi-report's output file and runs, the flag files of every binary and alfi-evaluate's
`--grid_points`: bad input gets one `ValueError` naming the file or setting and what was expected;
nothing is appended to a file that is not ours."""

import json
import os

import pytest

from alfi_tf import checks
from alfi_tf.evaluation.references import require_grid_fits
from alfi_tf.evaluation.report import (BEGIN_MARKER, END_MARKER, find_evaluated_runs,
                                       marked_section, marked_text, render_results,
                                       replace_marked_section, replace_marked_text)
from alfi_tf.simulators import get_simulator
from alfi_tf.config import MachineConfig, TrainConfig
from experiments.config_flags import (CONFIG_DIR, available_configs, config_from_values,
                                      expand_flagfiles, read_flagfile)

METRICS = {"references": {}, "ratios": {}, "rmse": {"a": 0.5}, "training_horizon": 3,
           "coverage": {"0.68": {"a": 0.7}, "0.95": {"a": 0.9}}, "rmse_per_step": {"a": [1, 0.5]}}


def test_a_markdown_file_without_markers_gets_the_section_appended(tmp_path):
  path = tmp_path / "results.md"
  path.write_text("# Results\n\nProse.\n")
  replace_marked_section(str(path), "table")
  assert path.read_text() == f"# Results\n\nProse.\n\n{BEGIN_MARKER}\ntable\n{END_MARKER}\n"
  replace_marked_section(str(path), "new table")   # only the section changes
  assert path.read_text() == f"# Results\n\nProse.\n\n{BEGIN_MARKER}\nnew table\n{END_MARKER}\n"


def test_the_marked_body_is_read_back_as_written(tmp_path):
  path = tmp_path / "results.md"
  assert marked_section(str(path)) is None                     # no file
  path.write_text("# Results\n")
  assert marked_section(str(path)) is None                     # no markers
  replace_marked_section(str(path), "line 1\n\nline 3")
  assert marked_section(str(path)) == "line 1\n\nline 3"
  text = replace_marked_text("a\n", "x", "<b>", "<e>", "text")
  assert text == "a\n\n<b>\nx\n<e>\n" and marked_text(text, "<b>", "<e>", "text") == "x"
  with pytest.raises(ValueError, match="text holds 2 '<b>'"):
    marked_text(text + text, "<b>", "<e>", "text")


def test_a_new_file_is_created(tmp_path):
  path = tmp_path / "results.txt"
  replace_marked_section(str(path), "table")
  assert path.read_text() == f"{BEGIN_MARKER}\ntable\n{END_MARKER}\n"


@pytest.mark.parametrize("name, content", [("user.json", '{"a": 1}\n'), ("notes.txt", ""),
                                           ("script.py", "print(1)\n")])
def test_a_file_without_markers_that_is_not_markdown_is_left_alone(tmp_path, name, content):
  path = tmp_path / name
  path.write_text(content)
  with pytest.raises(ValueError, match=rf"{path} exists, is not a markdown file .* refusing"):
    replace_marked_section(str(path), "table")
  assert path.read_text() == content


@pytest.mark.parametrize("content, found", [
    (f"a\n{END_MARKER}\nb\n{BEGIN_MARKER}\nc\n", "1 .* and 1 .*the end marker comes first"),
    (f"a\n{BEGIN_MARKER}\nb\n{END_MARKER}\n{BEGIN_MARKER}\nc\n{END_MARKER}\n", "2 .* and 2"),
    (f"a\n{BEGIN_MARKER}\nb\n", "1 .* and 0"),
    (f"a\n{END_MARKER}\nb\n", "0 .* and 1"),
])
def test_markers_out_of_order_or_repeated_are_refused(tmp_path, content, found):
  path = tmp_path / "results.md"
  path.write_text(content)
  with pytest.raises(ValueError, match=rf"{path} holds {found}.*expected one begin marker"):
    replace_marked_section(str(path), "table")
  assert path.read_text() == content


def test_a_directory_or_a_binary_output_is_named(tmp_path):
  with pytest.raises(ValueError, match=rf"{tmp_path} is a directory; expected a markdown file"):
    replace_marked_section(str(tmp_path), "table")
  binary = tmp_path / "image.md"
  binary.write_bytes(b"\x89PNG\x93\xff\x00")
  with pytest.raises(ValueError, match=rf"{binary} is not UTF-8 text"):
    replace_marked_section(str(binary), "table")
  assert binary.read_bytes() == b"\x89PNG\x93\xff\x00"


def _run_dir(root, name, metrics_text, config=True):
  directory = root / name
  directory.mkdir()
  (directory / "metrics.json").write_text(metrics_text)
  if config:
    (directory / "config.json").write_text("{}")
  return str(directory)


def test_runs_other_than_alfi_training_runs_are_skipped(tmp_path):
  alfi = _run_dir(tmp_path, "poisson", json.dumps(METRICS))
  npe = _run_dir(tmp_path, "npe_poisson", json.dumps({"method": "npe_gaussian"}), config=False)
  (tmp_path / "empty").mkdir()
  assert find_evaluated_runs(str(tmp_path)) == ([alfi], [npe])
  assert "| poisson | 0.0 | – | a | 0.5 |" in render_results([alfi])


def test_metrics_of_a_previous_answer_are_refused(tmp_path):
  """A finished run re-read with another --tail_averaging keeps its metrics.json, evaluated with
  the old answer: the report used to print them as the run's."""
  run = _run_dir(tmp_path, "poisson", json.dumps({**METRICS, "tail_averaging": 0.5}))
  (tmp_path / "poisson" / "config.json").write_text(json.dumps(
      {"machine": {"tail_averaging": 0.5}, "train": {}}))
  assert "| poisson | 0.0 | – | a | 0.5 |" in render_results([run])
  (tmp_path / "poisson" / "config.json").write_text(json.dumps(
      {"machine": {"tail_averaging": 0.0}, "train": {}}))
  with pytest.raises(ValueError, match=rf"^{run}/metrics.json was evaluated with tail_averaging="
                                       rf"0.5, but the run now answers with tail_averaging=0.0: "
                                       rf"evaluate it again \(alfi-evaluate --workdir={run}\)"):
    render_results([run])


@pytest.mark.parametrize("text, message", [
    ("{'a': 1", "is damaged: not valid JSON"), ("[1, 2]", "is damaged: expected a JSON object"),
    ('{"rmse": {}}', "lacks references, ratios, coverage, rmse_per_step, training_horizon"),
])
def test_a_damaged_metrics_file_is_named(tmp_path, text, message):
  run = _run_dir(tmp_path, "poisson", text)
  with pytest.raises(ValueError, match=rf"{run}/metrics.json {message}"):
    render_results([run])


def test_single_dash_flags_and_comments_in_flag_files(tmp_path):
  inner = tmp_path / "inner.cfg"
  inner.write_text("-epochs=3\n// absl comment\n")
  outer = tmp_path / "outer.cfg"
  outer.write_text("\ufeff# comment\n\n-simulator=poisson\n  --batch_size=8  \n"
                   "-flagfile=inner.cfg\n-nojit\n")
  assert expand_flagfiles([f"-flagfile={outer}", "-epochs=4"]) == [
      "--simulator=poisson", "--batch_size=8", "--epochs=3", "--nojit", "-epochs=4"]
  assert read_flagfile(str(outer)) == {"simulator": "poisson", "batch_size": "8", "epochs": "3",
                                       "jit": "false"}


@pytest.mark.parametrize("line", ["epochs=3", "- epochs=3", "-1", "--", "=3"])
def test_a_line_that_is_not_a_flag_is_named(tmp_path, line):
  path = tmp_path / "bad.cfg"
  path.write_text(f"--epochs=1\n\n{line}\n")
  with pytest.raises(ValueError, match=rf"flag file {path}, line 3: .* is not a flag; expected "
                                       "--name=value"):
    expand_flagfiles([f"--flagfile={path}"])


def test_flag_files_that_include_each_other_are_named(tmp_path):
  (tmp_path / "self.cfg").write_text("--flagfile=self.cfg\n")
  (tmp_path / "a.cfg").write_text("--epochs=1\n--flagfile=b.cfg\n")
  (tmp_path / "b.cfg").write_text("--flagfile=a.cfg\n")
  (tmp_path / "diamond.cfg").write_text("--flagfile=b2.cfg\n--flagfile=b2.cfg\n")
  (tmp_path / "b2.cfg").write_text("--epochs=2\n")
  with pytest.raises(ValueError, match=r"flag files include each other in a cycle: "
                                       rf"{tmp_path}/self.cfg -> {tmp_path}/self.cfg$"):
    expand_flagfiles([f"--flagfile={tmp_path}/self.cfg"])
  with pytest.raises(ValueError, match=rf"cycle: {tmp_path}/a.cfg -> {tmp_path}/b.cfg -> "
                                       rf"{tmp_path}/a.cfg$"):
    expand_flagfiles([f"--flagfile={tmp_path}/a.cfg"])
  # The same file twice, but not inside itself, is no cycle.
  assert expand_flagfiles([f"--flagfile={tmp_path}/diamond.cfg"]) == ["--epochs=2"] * 2


def test_a_flag_file_that_is_not_text_is_named(tmp_path):
  path = tmp_path / "binary.cfg"
  path.write_bytes(b"--epochs=1\n\xff\xfe\x00")
  with pytest.raises(ValueError, match=rf"flag file {path} is not UTF-8 text \(invalid start byte "
                                       r"at byte 11\)"):
    expand_flagfiles([f"--flagfile={path}"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
def test_a_flag_file_that_is_a_device_or_a_named_pipe_is_refused_not_read(tmp_path):
  fifo = tmp_path / "pipe.cfg"
  os.mkfifo(fifo)   # reading it would wait for a writer for ever; /dev/zero would never end
  for path in (str(fifo), "/dev/zero"):
    with pytest.raises(ValueError, match=rf"flag file {path} is not a regular file; expected a "
                                         "file of --name=value lines"):
      expand_flagfiles([f"--flagfile={path}"])


def test_a_flag_file_that_is_a_directory_or_an_empty_path_is_named(tmp_path):
  with pytest.raises(ValueError, match=rf"flag file {tmp_path} is a directory; expected a file of "
                                       "--name=value lines"):
    expand_flagfiles([f"--flagfile={tmp_path}"])
  with pytest.raises(ValueError, match="--flagfile must name a file of --name=value lines, got an "
                                       "empty path"):
    expand_flagfiles(["--flagfile="])
  with pytest.raises(ValueError, match=rf"flag file {tmp_path}/missing.cfg not found"):
    expand_flagfiles([f"--flagfile={tmp_path}/missing.cfg"])


@pytest.mark.parametrize("name, grid_points, largest", [("poisson", 300_000_000, 1_000_000),
                                                         ("gaussian", 1001, 1000)])
def test_a_grid_too_large_for_the_exact_posterior_is_refused_by_name(name, grid_points, largest):
  simulator = get_simulator(name)
  with pytest.raises(ValueError, match=rf"grid_points={grid_points} makes a grid of .* points for "
                                       rf"the .*; use at most {largest} \(default"):
    require_grid_fits(simulator, grid_points, num_obs=500)
  require_grid_fits(simulator, largest, num_obs=10)
  require_grid_fits(simulator, None, num_obs=10 ** 9)   # the default grid is the simulator's


def test_a_grid_that_does_not_fit_in_memory_is_refused_by_name(monkeypatch):
  monkeypatch.setattr(checks, "available_memory", lambda: 2 ** 30)
  with pytest.raises(ValueError, match=r"the exact posterior on a grid of grid_points=100000 per "
                                       r"parameter \(100000 points\) x 1000 observations needs "
                                       r"about 1\.49 GiB .*: use fewer grid_points "
                                       r"\(default 4001\)"):
    require_grid_fits(get_simulator("poisson"), 100_000, num_obs=1000)


@pytest.mark.parametrize("name", available_configs())
def test_every_shipped_config_builds_valid_settings(name):
  """A flag file whose settings contradict each other (regression features without moment
  features, say) would fail only when someone trains it; here it fails at once."""
  values = read_flagfile(os.path.join(CONFIG_DIR, f"{name}.cfg"))
  machine = config_from_values(MachineConfig, values)
  config_from_values(TrainConfig, values)
  if name == "default":   # the starting point for a simulator of your own (docs/results.md)
    assert machine.moment_features and machine.regression_features and machine.num_steps == 10
    assert values["data_source"] == "online" and values["time_weights"] == "constant"
