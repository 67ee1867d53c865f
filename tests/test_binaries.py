"""The absl binaries, run as a user would: end to end on tiny flags, and on bad input."""

import ast
import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from alfi_tf.evaluation import plots
from alfi_tf.evaluation.evaluator import EvaluationConfig, evaluate
from alfi_tf.simulators import get_simulator
from alfi_tf.training import data as data_lib
from alfi_tf.training import pipeline
from tests.binary_runs import (ROOT, assert_one_message, assert_refused, assert_rejected,
                               binary_env, run)
from tests.test_data_pipeline import overwrite_in_place

TINY_FLAGS = [
    "--num_problems=48", "--num_obs=40", "--epochs=2", "--batch_size=16", "--num_steps=2",
    "--num_samples=4", "--num_simulated_obs=8", "--encoder_hidden=8", "--encoder_out=4",
    "--aggregator_hidden=8", "--aggregator_out=4", "--updater_hidden=8", "--lstm_units=4",
    "--num_validation_problems=8", "--validate_every=3", "--checkpoint_every=3",
    "--calibration_problems=32", "--calibration_horizon=3",
]


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("runs") / "weinberg")
  result = run("experiments.train", "--flagfile=experiments/configs/weinberg.cfg", *TINY_FLAGS,
               f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "trained 6 steps" in result.stdout
  return workdir


def test_train_writes_config_and_checkpoints(trained_workdir):
  config = json.load(open(os.path.join(trained_workdir, "config.json")))
  assert config["machine"]["simulator"] == "weinberg"
  assert config["train"]["num_problems"] == 48
  assert os.path.exists(os.path.join(trained_workdir, "checkpoints", "checkpoint"))


def test_rerunning_train_resumes_without_retraining(trained_workdir):
  result = run("experiments.train", "--flagfile=experiments/configs/weinberg.cfg", *TINY_FLAGS,
               f"--workdir={trained_workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "trained 6 steps" in result.stdout


def test_evaluate_end_to_end_and_report(trained_workdir, tmp_path):
  result = run("experiments.evaluate", f"--workdir={trained_workdir}", "--num_problems=12",
               "--num_steps=3", "--robustness_problems=2", "--robustness_starts=3",
               "--predictive_problems=2", "--grid_points=21")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "beam_energy" in result.stdout and "asymmetry" in result.stdout
  metrics = json.load(open(os.path.join(trained_workdir, "metrics.json")))
  assert len(metrics["rmse_per_step"]["fermi_constant"]) == 3
  assert set(metrics["references"]) == {"prior_mean", "mle", "posterior_mean"}
  assert set(metrics["coverage"]) == {"0.68", "0.95"}
  assert metrics["robustness"]["starts"] == 3
  # Online problems 6 x 16 x 40, fixed 48 x 40 and validation 8 x 40 observations; 6 steps x 16
  # problems and 2 validations x 8 problems, each T M N = 2 x 4 x 8; the calibration's 32 x 40
  # observations and 32 problems x T_c M N = 3 x 4 x 8; per data set 3 x 4 x 8.
  assert metrics["training_simulations"] == (3840 + 1920 + 320 + 6 * 16 * 64 + 2 * 8 * 64
                                             + 32 * 40 + 32 * 96)
  assert metrics["simulations_per_inference"] == 96
  assert metrics["tail_averaging"] == 0.5   # the answer evaluated (the report checks it is current)
  assert set(metrics["sbc"]["within_band"]) == {"beam_energy", "fermi_constant"}
  # Calibrated for steps 1..3, evaluated at T = 3: the factors of step 3, as calibration.json has.
  calibration = json.load(open(os.path.join(trained_workdir, "calibration.json")))
  assert list(metrics["std_scales_at_horizon"].values()) == calibration["std_scales"][2]
  assert set(metrics["derived_rmse"]["asymmetry"]) == {"alfi", "alfi_proposal_average", "mle",
                                                       "posterior_mean"}
  for figure in ("rmse_per_step.png", "error_boxplots.png", "predictive_histograms.png",
                 "robustness.png", "sbc.png"):
    assert os.path.getsize(os.path.join(trained_workdir, figure)) > 1000, figure
  tb = os.path.join(trained_workdir, "tb")
  tags = {value.tag for name in os.listdir(tb)
          for event in tf.compat.v1.train.summary_iterator(os.path.join(tb, name))
          for value in event.summary.value}
  assert {"evaluation/rmse_per_step", "evaluation/robustness", "train/loss"} <= tags, tags
  # The report renders the table from the evaluated run, keeping the prose around it.
  output = tmp_path / "results.md"
  output.write_text("# Results\n\nProse that must survive.\n")
  reported = run("experiments.report", f"--runs={os.path.dirname(trained_workdir)}",
                 f"--output={output}")
  assert reported.returncode == 0, reported.stderr[-3000:]
  text = output.read_text()
  assert "Prose that must survive." in text
  assert "| weinberg † |" in text and "asymmetry (derived)" in text and "† its σ" in text


def test_a_figure_that_cannot_be_drawn_loses_no_metrics(trained_workdir, tmp_path, monkeypatch):
  """The figures used to be drawn before metrics.json was written: a plotting failure (a full
  disk, a matplotlib error) lost the whole evaluation. Now the metrics come first, every other
  figure is drawn, and one message names the figure that failed and where the metrics are."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_workdir, workdir)
  for name in os.listdir(workdir):   # no figures or metrics of the fixture's evaluation
    if name.endswith(".png") or name == "metrics.json":
      os.remove(os.path.join(workdir, name))

  def full_disk(path, *arguments):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(plots, "plot_robustness", full_disk)
  config = EvaluationConfig(num_problems=4, num_steps=2, robustness_problems=2,
                            robustness_starts=2, predictive_problems=2, grid_points=21)
  robustness = os.path.join(workdir, "robustness.png")
  with pytest.raises(RuntimeError) as error:
    evaluate(workdir, config)
  assert str(error.value) == (
      f"the evaluation's metrics are in {os.path.join(workdir, 'metrics.json')}, but 1 of its "
      f"figures could not be drawn: {robustness} (OSError: [Errno 28] No space left on device); "
      "fix that and evaluate again to draw them")
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  assert metrics["num_problems"] == 4 and metrics["robustness"]["starts"] == 2
  assert sorted(name for name in os.listdir(workdir) if name.endswith(".png")) == [
      "error_boxplots.png", "predictive_histograms.png", "rmse_per_step.png", "sbc.png"]


TRAIN_BAD_FLAGS = [
    (["--simulator=poison"], "unknown --simulator='poison'; valid names are: gaussian, "
                             "linear_gaussian_10, linear_gaussian_2, linear_gaussian_20, "
                             "linear_gaussian_5, linear_regression, lotka_volterra, "
                             "multi_distribution, poisson, weinberg"),
    (["--num_steps=0"], "num_steps must be positive, got 0"),
    (["--batch_size=-4"], "batch_size must be positive, got -4"),
    (["--num_samples=1"], "num_samples must be at least 2"),
    (["--loss=hinge"], "loss must be one of"),
    (["--proposal=point"], "loss 'nll' needs a proposal with a density; the 'point' proposal has "
                           "none: use loss 'mse' or 'l1' (--loss=mse)"),
    (["--mixture_components=0"], "mixture_components must be positive, got 0"),
    (["--bound=0"], "bound must be positive"),
    (["--data_source=tape"], "data_source must be one of ('memory', 'disk', 'online')"),
    (["--shuffle_buffer=0"], "shuffle_buffer must be positive, got 0"),
    (["--num_problems=8"], "num_problems (8) must be at least batch_size (16)"),
    (["--data_source=memory", "--data_dir=/tmp/x"], "--data_dir applies to --data_source=disk"),
    (["--cpu_devices=2"], "--cpu_devices applies to --strategy=mirrored"),
    (["--strategy=tpu"], "value should be one of <default|mirrored|multi_worker>"),
    (["--data_workers=-1"], "--data_workers must be >= 0, got -1"),
    # Non-finite floats pass `<= 0` checks; NaN used to hang training in the Poisson sampler.
    # (Every float setting is checked in-process by tests/test_config.py; two through the binary.)
    (["--learning_rate=nan"], "learning_rate must be a finite number, got nan"),
    (["--bound=inf"], "bound must be a finite number, got inf"),
    (["--seed=2147483648"], "seed must be an integer in [-2147483648, 2147483639]"),
    # Beyond the int64 step counters: was "Can't convert Python sequence with out-of-range integer".
    (["--epochs=99999999999999999999"], "epochs (99999999999999999999) x steps per epoch (3) must "
                                        "be at most 9223372036854775807 training steps"),
    (["extra_argument"], "unexpected arguments: extra_argument"),
    # Refused with an estimate before anything is allocated (the kernel used to kill the run).
    (["--num_problems=2000000000"], "GiB of memory, but this machine has"),
    (["--num_obs=1000000000", "--data_source=disk"], "use --data_source=disk (streamed from disk)"),
]


def test_a_run_killed_before_its_summary_or_with_a_damaged_calibration_is_finished(
    trained_workdir, tmp_path):
  """Killed after its last checkpoint but before its summary, a run's summary holds what the
  checkpoint's summary recorded; a damaged calibration.json is ours to refit. Rerunning the
  command completes both, to what the uninterrupted run wrote (it used to fail on a KeyError)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_workdir, workdir)
  summary_path, calibration_path = (os.path.join(workdir, name) for name in
                                    ("training_summary.json", "calibration.json"))
  summary, calibration = (json.load(open(path)) for path in (summary_path, calibration_path))
  json.dump({"steps": 6, "train_seconds": 1.0, "data_seconds": 1.0}, open(summary_path, "w"))
  json.dump({**calibration, "std_scales": "damaged"}, open(calibration_path, "w"))
  result = run("experiments.train", "--flagfile=experiments/configs/weinberg.cfg", *TINY_FLAGS,
               f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "trained 6 steps" in result.stdout and "calibration.json is damaged" in result.stderr
  completed = json.load(open(summary_path))
  assert completed["validation_rmse"] == summary["validation_rmse"]
  assert json.load(open(calibration_path))["std_scales"] == calibration["std_scales"]


def test_train_rejects_bad_flags(tmp_path):
  assert_rejected("experiments.train", TRAIN_BAD_FLAGS,
                  ["--flagfile=experiments/configs/poisson.cfg", *TINY_FLAGS], tmp_path)


def test_train_names_a_store_corrupted_in_place(tmp_path):
  """A meta-training store whose shard was overwritten in place (same size) used to end the run
  with TensorFlow's DataLossError ("corrupted record at N"), naming neither store nor file."""
  data_dir = str(tmp_path / "data")
  # The store this command generates (poisson.cfg's seed 0), made here to be corrupted first.
  store = pipeline.problem_store(data_dir).create(get_simulator("poisson"), 48, 40, seed=0,
                                                  stream=data_lib.TRAIN_STREAM)
  corrupted = overwrite_in_place(store, ".snapshot")
  result = run("experiments.train", "--flagfile=experiments/configs/poisson.cfg", *TINY_FLAGS,
               "--data_source=disk", f"--data_dir={data_dir}", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 1, result.stderr[-3000:]
  assert (f"error: problem store {store.path} is damaged: {corrupted} is corrupted"
          in result.stderr), result.stderr[-3000:]
  assert "Delete it (or use another --data_dir) to generate it again" in result.stderr
  assert_one_message(result)


def test_train_refuses_workdirs_it_cannot_use_and_unknown_configs(trained_workdir, tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  cases = [
      (["--flagfile=experiments/configs/weinberg.cfg", *TINY_FLAGS, "--num_samples=6",
        f"--workdir={trained_workdir}"], "machine.num_samples: workdir has 4, requested 6"),
      (["--flagfile=experiments/configs/poisson.cfg", *TINY_FLAGS, f"--workdir={a_file}"],
       f"error: workdir {a_file} exists and is not a directory"),
      (["--config=poisonn", f"--workdir={tmp_path / 'run'}"],
       "unknown --config='poisonn'; the shipped configs are: base, default, gaussian"),
  ]
  assert_refused("experiments.train", cases)
  assert a_file.read_text() == "x" and not (tmp_path / "run").exists()


def test_evaluate_rejects_a_non_workdir_and_bad_flags(trained_workdir, tmp_path):
  assert_refused("experiments.evaluate", [
      ([f"--workdir={tmp_path}"], "is not a training workdir"),
      ([f"--workdir={trained_workdir}", "--num_problems=0"],
       "num_problems must be positive, got 0")])



def test_evaluate_refuses_a_directory_at_its_metrics_before_inference(trained_workdir, tmp_path):
  """It used to evaluate, then fail to rename its metrics into place, naming its temporary file:
  `[Errno 21] Is a directory: '.../.tmp-...' -> '.../metrics.json'`."""
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  # The shared run may have been evaluated by a test that ran before this one: its outputs go.
  for output in [workdir / "metrics.json", *workdir.glob("*.png")]:
    output.unlink(missing_ok=True)
  (workdir / "metrics.json").mkdir()
  assert_refused("experiments.evaluate", [
      ([f"--workdir={workdir}"], f"error: {workdir / 'metrics.json'} is a directory, where the "
                                 "evaluation's metrics would be written as a file")])
  assert not os.listdir(workdir / "metrics.json")
  assert not [name for name in os.listdir(workdir) if name.endswith(".png")]


def test_evaluate_takes_the_top_seed_and_one_problem_and_refuses_runs_beyond_memory(
    trained_workdir, tmp_path):
  """--seed at the top of its range used to fail after the references, on the inference seed
  seed + 1 that the user never gave; --num_starts or --robustness_starts beyond memory failed
  with a numpy allocation traceback."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_workdir, workdir)
  result = run("experiments.evaluate", f"--workdir={workdir}", "--num_problems=1",
               "--seed=2147483639", "--num_steps=2", "--robustness_problems=2",
               "--robustness_starts=2", "--predictive_problems=2", "--grid_points=21")
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.load(open(os.path.join(workdir, "metrics.json")))["num_problems"] == 1
  assert_refused("experiments.evaluate", [
      ([f"--workdir={workdir}", "--num_problems=2", "--num_starts=100000000"],
       "num_problems=2 x num_starts=100000000 inference runs needs about"),
      ([f"--workdir={workdir}", "--robustness_starts=1000000000"],
       "robustness_problems=20 x robustness_starts=1000000000 inference runs needs about")])


def test_outputs_below_a_file_or_empty_are_refused_before_any_work(tmp_path):
  """An output path below a file used to fail after the work (`[Errno 17] File exists`, no flag
  named); an empty --export_dir exported into the working directory's name."""
  a_file = tmp_path / "file"
  a_file.write_text("x")
  below = a_file / "sub" / "out"
  refused = f"lies below {a_file}, which is a file, not a directory"
  assert_refused("experiments.infer", [
      ([f"--model={tmp_path}", "--observations=x.npy", f"--output={below}.json"],
       f"--output={below}.json {refused}"),
      ([f"--model={tmp_path}", "--observations=x.npy", f"--output={tmp_path / 'r.json'}",
        f"--plot={below}.png"], f"--plot={below}.png {refused}")])
  assert_refused("experiments.export", [
      ([f"--workdir={tmp_path}", f"--export_dir={below}"], f"--export_dir={below} {refused}"),
      ([f"--workdir={tmp_path}", "--export_dir="], "--export_dir must name a path, got an empty")])
  assert_refused("experiments.report", [
      ([f"--runs={tmp_path}", f"--output={below}.md"], f"--output={below}.md {refused}"),
      ([f"--runs={tmp_path}", "--output="], "--output must name a path, got an empty one")])
  assert a_file.read_text() == "x" and sorted(os.listdir(tmp_path)) == ["file"]


def test_outputs_on_a_file_system_that_refuses_writes_are_refused_before_any_work(
    tmp_path, monkeypatch):
  """An output on a read-only file system failed after the work (infer printed its answer, then a
  traceback from the temporary file's creation). Root may write anywhere, so the refusal is
  exercised through os.access and os.statvfs."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from experiments import cli  # pylint: disable=g-import-not-at-top
  read_only = os.statvfs_result((0,) * 8 + (os.ST_RDONLY, 255))
  monkeypatch.setattr(os, "access", lambda *args: False)
  monkeypatch.setattr(os, "statvfs", lambda path: read_only)
  with pytest.raises(app.UsageError, match=f"^--output={tmp_path / 'a' / 'r.json'}: {tmp_path} "
                                           r"cannot be written \(read-only file system\)$"):
    cli.check_output_file("output", str(tmp_path / "a" / "r.json"), lambda path: True, "a result")
  monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((0,) * 10))
  with pytest.raises(app.UsageError, match=r"cannot be written \(permission denied\)$"):
    cli.check_output_location("export_dir", str(tmp_path / "export"))


def test_verbosity_keeps_the_traceback_for_debugging(tmp_path):
  result = run("experiments.evaluate", f"--workdir={tmp_path}", "--verbosity=1")
  assert result.returncode != 0
  assert "Traceback" in result.stderr and "is not a training workdir" in result.stderr


def test_training_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
  """SIGKILL during training, re-run the same command: same step count, same weights."""
  import signal
  import time

  import numpy as np

  from alfi_tf.workdir import load_machine

  # Killed at its first checkpoint (step 25), 275 steps before it would finish.
  flags = ["--flagfile=experiments/configs/poisson.cfg", *TINY_FLAGS, "--epochs=100",
           "--checkpoint_every=25", "--validate_every=100000", "--log_every=100000"]
  killed = str(tmp_path / "killed")
  env = binary_env()
  process = subprocess.Popen([sys.executable, "-m", "experiments.train", *flags,
                              f"--workdir={killed}"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  index = os.path.join(killed, "checkpoints", "checkpoint")
  deadline = time.time() + 240
  while not os.path.exists(index) and process.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"

  resumed = run("experiments.train", *flags, f"--workdir={killed}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "trained 300 steps" in resumed.stdout
  straight = str(tmp_path / "straight")
  result = run("experiments.train", *flags, f"--workdir={straight}")
  assert result.returncode == 0, result.stderr[-3000:]
  for a, b in zip(load_machine(killed).weights, load_machine(straight).weights):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def _installed(command: str) -> str:
  path = os.path.join(os.path.dirname(sys.executable), command)
  assert os.path.exists(path), f"{command} is not installed: pip install -e . first"
  return path


def test_installed_commands_with_shipped_configs_from_any_directory(tmp_path):
  """`alfi-train --config=NAME` from an unrelated directory: the shipped flag file and the one it
  includes are found, and TensorFlow's CUDA start-up noise stays hidden on a machine without a GPU."""
  env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
  workdir = str(tmp_path / "run")
  trained = subprocess.run([_installed("alfi-train"), "--config=weinberg", *TINY_FLAGS,
                            f"--workdir={workdir}"], cwd=str(tmp_path), env=env,
                           capture_output=True, text=True, timeout=300)
  assert trained.returncode == 0, trained.stderr[-3000:]
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["machine"]["simulator"] == "weinberg" and config["machine"]["encoder_out"] == 4
  assert config["train"]["data_source"] == "online"   # from weinberg.cfg itself
  exported = subprocess.run([_installed("alfi-export"), f"--workdir={workdir}",
                           f"--export_dir={tmp_path / 'export'}"], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
  assert exported.returncode == 0, exported.stderr[-3000:]
  for noise in ("Unable to register", "cuInit", "cuda"):
    if not os.path.exists("/dev/nvidia0"):
      assert noise not in trained.stderr and noise not in exported.stderr, noise


def test_installed_commands_explain_themselves_with_helpshort(tmp_path):
  """`alfi-infer --helpshort` shows the binary's docstring and its own flags, as
  `python -m experiments.infer --helpshort` does (absl looks them up on pip's wrapper)."""
  shown = subprocess.run([_installed("alfi-infer"), "--helpshort"], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=120)
  assert "--observations" in shown.stdout and "--model" in shown.stdout, shown.stdout[-2000:]
  with open(os.path.join(ROOT, "experiments", "infer.py")) as source:
    docstring = ast.get_docstring(ast.parse(source.read()))
  assert shown.stdout.split("flags:")[0].strip().endswith(docstring.strip().splitlines()[-1])


NPE_TINY_FLAGS = ["--simulator=poisson", "--observation_transform=log1p", "--num_problems=32",
                  "--num_obs=20", "--epochs=1", "--encoder_hidden=8", "--encoder_out=4",
                  "--context_hidden=8", "--flow_layers=1", "--flow_hidden=8",
                  "--test_problems=16", "--verbose=0"]


def test_npe_binary_trains_scores_and_rescores_without_retraining(tmp_path):
  workdir = tmp_path / "npe"
  result = run("experiments.npe", *NPE_TINY_FLAGS, f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "NPE (flow, 640 training simulations): RMSE / posterior_mean log_rate" in result.stdout
  metrics = json.load(open(workdir / "metrics.json"))
  assert metrics["training_simulations"] == 32 * 20 and metrics["simulations_per_inference"] == 0
  model_time = os.path.getmtime(workdir / "npe.keras")
  again = run("experiments.npe", *NPE_TINY_FLAGS, f"--workdir={workdir}")
  assert again.returncode == 0 and os.path.getmtime(workdir / "npe.keras") == model_time


def test_npe_binary_rejects_bad_flags(tmp_path):
  assert_rejected("experiments.npe", [
      (["--learning_rate=nan"], "learning_rate must be a finite number, got nan"),
      (["--test_problems=0"], "--test_problems must be positive, got 0"),
      # Used only to score the trained estimator: it used to be accepted and training to start.
      (["--test_seed=99999999999"], "--test_seed must be an integer in [-2147483648, 2147483639]"),
      (["--simulator=nope"], "unknown simulator 'nope'"),
  ], NPE_TINY_FLAGS, tmp_path)
