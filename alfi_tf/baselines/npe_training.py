"""Training an NPE baseline into a directory, resuming an interrupted one, and loading it back.

A run directory holds `npe_config.json` (the `NPEConfig`), `npe.keras` (the trained
`PosteriorEstimator`, written atomically, last) and `training_summary.json` (budget and wall time).
While training it also holds `training_state/`: after every epoch, the weights with the
optimizer's state, the stopping rules' counters and best weights, and the validation losses so
far. Run `train_npe` again on an unfinished directory, with the same configuration, and it goes on
from the last finished epoch exactly as an uninterrupted run would have (each epoch's batch order is
fixed by the seed and the epoch); the state is removed once the estimator is saved.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import zipfile
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import keras
import numpy as np
from absl import logging

from alfi_tf.baselines.npe import NPEConfig, PosteriorEstimator
from alfi_tf.checks import require_memory
from alfi_tf.config import to_dict
from alfi_tf.simulators import get_simulator
from alfi_tf.training import data as data_lib
from alfi_tf.workdir import Workdir, atomic_output, read_json_object, write_json_atomically

MODEL_FILE, CONFIG_FILE, SUMMARY_FILE = "npe.keras", "npe_config.json", "training_summary.json"
STATE_DIR, STATE_FILE = "training_state", "state.json"
#: Keras' `fit` verbosities: silent, a progress bar, one line per epoch.
VERBOSITIES = (0, 1, 2)


class NPERun(NamedTuple):
  """A trained estimator and its `training_summary.json` content."""

  estimator: PosteriorEstimator
  summary: Dict[str, Any]


def train_npe(config: NPEConfig, workdir: str, verbose: int = 0,
              callbacks: Sequence[keras.callbacks.Callback] = ()) -> NPERun:
  """Draws `config.num_problems` pairs from the prior, trains NPE on them, saves it in `workdir`.

  Args:
    config: the estimator and its training.
    workdir: a new or empty directory, or one whose training was interrupted (resumed from its
      last finished epoch; it must have been started with the same `config`).
    verbose: Keras' `fit` verbosity (0 silent, 1 progress bar, 2 one line per epoch).
    callbacks: more Keras callbacks for `fit` (e.g. `keras.callbacks.TensorBoard`).

  Raises:
    FileExistsError: `workdir` already holds a trained estimator, or files that are not an NPE
      run's (nothing is written there).
    NotADirectoryError: `workdir` is a file.
    ValueError: `verbose` is not 0, 1 or 2, the training pairs cannot fit in memory, `workdir`'s
      training state is damaged, or it trained an epoch of another configuration.
    FloatingPointError: the training diverged: nothing is saved, so it may run again.
    RuntimeError: another process is training in `workdir`.
    SimulatorError: the simulator fails on too much of its prior (see `data.generate_problems`).
  """
  _require_verbosity(verbose)
  if is_trained(workdir):
    raise FileExistsError(f"workdir {workdir!r} already holds a trained NPE estimator "
                          f"({MODEL_FILE}); choose a new directory")
  simulator = get_simulator(config.simulator)   # an unknown simulator: nothing written yet
  _require_memory(simulator, config)
  _require_npe_workdir(workdir)
  with Workdir(workdir).lock():
    state = _claim(workdir, config)
    start = time.monotonic()
    problems = data_lib.generate_problems(simulator, config.num_problems, config.num_obs,
                                          config.seed, data_lib.TRAIN_STREAM)
    keras.utils.set_random_seed(config.seed)
    estimator = PosteriorEstimator(simulator, config)
    num_validation = max(1, config.num_problems // 10)
    theta, observations = problems.theta, problems.observations
    estimator.adapt(theta[num_validation:], observations[num_validation:])
    saver = _StateSaver(os.path.join(workdir, STATE_DIR), state, start)
    losses = _train_in_stages(
        estimator, config,
        {"theta": theta[num_validation:], "observations": observations[num_validation:]},
        {"theta": theta[:num_validation], "observations": observations[:num_validation]},
        verbose, saver, callbacks)
    _require_converged(estimator, losses, config, saver.directory)
    with atomic_output(os.path.join(workdir, MODEL_FILE), suffix=".keras") as temporary:
      estimator.save(temporary)
    summary = {
        "training_simulations": config.training_simulations,
        "redrawn_problems": problems.redrawn,
        "epochs_run": sum(map(len, losses)),
        "best_validation_loss": float(np.nanmin(losses[-1])),
        "training_seconds": saver.seconds(),
    }
    write_json_atomically(os.path.join(workdir, SUMMARY_FILE), summary)
    shutil.rmtree(saver.directory)
  logging.info("NPE trained in %.0f s (%d epochs), best validation loss %.4f: %s",
               summary["training_seconds"], summary["epochs_run"],
               summary["best_validation_loss"], workdir)
  return NPERun(estimator, summary)


def _require_verbosity(verbose: Any) -> None:
  """Refuses a `verbose` that is not one of `VERBOSITIES`, before anything is written: Keras
  takes any other value without complaint and prints as it pleases."""
  if verbose not in VERBOSITIES or isinstance(verbose, bool):
    raise ValueError(f"verbose must be one of {VERBOSITIES} (silent, a progress bar, one line per "
                     f"epoch), got {verbose!r}")


def _require_memory(simulator, config: NPEConfig) -> None:
  """Refuses training pairs that cannot fit in memory, before anything is written."""
  require_memory(
      2 * data_lib.problems_bytes(simulator, config.num_problems, config.num_obs),
      f"num_problems={config.num_problems} training pairs of num_obs={config.num_obs} "
      f"observations", "use fewer num_problems or num_obs")


def _require_npe_workdir(workdir: str) -> None:
  """Refuses a file, or a directory holding anything but an NPE run: the run's files would
  replace the user's (`metrics.json` and `training_summary.json` of an ALFI run, say)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"workdir {workdir!r} is a file; expected a new or empty directory")
  if (os.path.isdir(workdir) and os.listdir(workdir)
      and not os.path.exists(os.path.join(workdir, CONFIG_FILE))):
    raise FileExistsError(f"workdir {workdir!r} is not empty and holds no NPE run ({CONFIG_FILE} "
                          f"missing), so nothing was written there; choose a new or empty "
                          f"directory")


def _claim(workdir: str, config: NPEConfig) -> Optional[Dict[str, Any]]:
  """Records `config` in a new run; in an unfinished one, checks it and returns its saved
  training state (None when it stopped before its first save).

  A run that stopped before finishing an epoch (it failed at the start, or diverged) trained
  nothing worth keeping: it takes `config`, whatever it was started with, logging the changes.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  recorded = read_json_object(path)
  state = read_json_object(os.path.join(workdir, STATE_DIR, STATE_FILE))
  differing = sorted(key for key, value in to_dict(config).items()
                     if recorded is not None and recorded.get(key) != value)
  if recorded is None or (differing and not _trained_an_epoch(state)):
    if differing:
      logging.info("the NPE run in %s trained no epoch yet: it takes the new settings (%s)",
                   workdir, ", ".join(differing))
    shutil.rmtree(os.path.join(workdir, STATE_DIR), ignore_errors=True)
    write_json_atomically(path, to_dict(config))
    return None
  if differing:
    raise ValueError(f"workdir {workdir!r} holds an unfinished NPE training with another "
                     f"configuration (it differs in {', '.join(differing)}); run it again with "
                     f"the settings in {path}, or choose a new directory")
  if state is not None:
    _check_state(state, os.path.join(workdir, STATE_DIR))
    logging.info("resuming the NPE training in %s", workdir)
  return state


#: The fields of `state.json`, and their types.
_STATE_FIELDS = {"stage": int, "epoch": int, "finished": bool, "losses": list,
                 "seconds": (int, float), "weights": str, "best_weights": (str, type(None)),
                 "rules": dict}


def _check_state(state: Dict[str, Any], directory: str) -> None:
  """Refuses a saved training state with a field missing or of the wrong type, or naming a
  weights file that is not there, naming `state.json` and what is wrong."""
  path = os.path.join(directory, STATE_FILE)
  for field, kind in _STATE_FIELDS.items():
    if not isinstance(state.get(field), kind):
      raise ValueError(f"{path} is damaged: {field!r} is {state.get(field)!r}; remove "
                       f"{directory} to train from the start")
  for field in ("weights", "best_weights"):
    if state[field] is not None and not os.path.exists(os.path.join(directory, state[field])):
      raise ValueError(f"{path} is damaged: its {field} file {state[field]} is missing; remove "
                       f"{directory} to train from the start")
  for rule, names in (("ReduceLROnPlateau", _PLATEAU_STATE), ("EarlyStopping", _STOPPING_STATE)):
    saved = state["rules"].get(rule)
    if not isinstance(saved, dict) or not set(names) <= set(saved):
      raise ValueError(f"{path} is damaged: the rules' state lacks {rule}'s {', '.join(names)}; "
                       f"remove {directory} to train from the start")


def _trained_an_epoch(state: Optional[Dict[str, Any]]) -> bool:
  """Whether a saved training state holds at least one finished epoch."""
  return state is not None and bool(sum(map(len, state.get("losses", []))))


def _require_converged(estimator: PosteriorEstimator, losses: List[List[float]],
                       config: NPEConfig, state_directory: str) -> None:
  """Refuses to save an estimator whose training diverged (NaN/inf weights, or no finite
  validation loss in its last stage). The saved training state, being no better, is removed, so
  that the run can be started again with other settings."""
  weights_finite = all(np.all(np.isfinite(weights)) for weights in estimator.get_weights())
  if weights_finite and np.any(np.isfinite(losses[-1])):
    return
  shutil.rmtree(state_directory, ignore_errors=True)
  raise FloatingPointError(
      f"the NPE training diverged (validation losses {losses[-1]}, "
      f"{'finite' if weights_finite else 'NaN/inf'} weights) at learning_rate="
      f"{config.learning_rate}; nothing was saved as trained: run it again with a smaller "
      f"learning_rate")


def _train_in_stages(estimator: PosteriorEstimator, config: NPEConfig,
                     train: Dict[str, np.ndarray], validation: Dict[str, np.ndarray],
                     verbose: int, saver: "_StateSaver",
                     callbacks: Sequence[keras.callbacks.Callback]) -> List[List[float]]:
  """Fits the estimator; a flow first with its couplings frozen. Returns each stage's
  validation losses.

  A spline maps [-B, B] onto itself, so it can only narrow the density's core by spreading the
  rest of its mass into wide tails. Trained from the start, the splines do just that while the
  affine scale is still too wide, and the flow ends with a sharp core and heavy tails (Poisson at
  1e7 simulations: std 15-50x the exact posterior's, mean 1.67x Bayes). So the flow's Gaussian
  part is fitted alone first (identity couplings), then everything together.
  """
  couplings = getattr(estimator.density, "couplings", [])
  stages = (False, True) if couplings else (True,)   # whether the couplings train
  for stage, couplings_train in enumerate(stages):
    if stage < saver.stage:
      continue   # finished before an interruption; its end is where the saved state starts
    for coupling in couplings:
      coupling.trainable = couplings_train
    _fit(estimator, config, train, validation, verbose, saver.for_stage(stage), callbacks)
  return saver.losses


def _fit(estimator: PosteriorEstimator, config: NPEConfig, train: Dict[str, np.ndarray],
         validation: Dict[str, np.ndarray], verbose: int, saver: "_StateSaver",
         callbacks: Sequence[keras.callbacks.Callback]) -> None:
  """Adam, its learning rate halved whenever the validation loss stalls for `patience // 4`
  epochs, stopped after `patience` epochs without improvement (the best weights are kept).

  A fixed schedule does not fit NPE: a posterior a thousandth of the prior's width makes the loss
  so sensitive to the density's location that Adam at a rate that learns quickly early on jumps
  around the optimum later, and early stopping then ends the run on a noisy plateau.
  """
  # Clipping keeps a spline flow's first steps, on badly fitting densities, from diverging.
  estimator.compile(keras.optimizers.Adam(config.learning_rate, clipnorm=5.0), jit_compile=False)
  saver.plateau = keras.callbacks.ReduceLROnPlateau(
      monitor="val_loss", factor=0.5, patience=max(1, config.patience // 4),
      min_lr=config.learning_rate / 1000)
  saver.stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                 restore_best_weights=True)
  if saver.restore(estimator):
    return   # the stage had finished; `restore` left the weights it ended with
  first_epoch = saver.epoch
  # A batch larger than the training pairs is all of them (a huge one would overflow in Keras).
  batch_size = min(config.batch_size, len(train["theta"]))
  estimator.fit(
      _ShuffledEpochs(train, batch_size, config.seed, first_epoch),
      validation_data=(validation,), validation_batch_size=batch_size,
      initial_epoch=first_epoch, epochs=config.epochs, shuffle=False, verbose=verbose,
      # `_ShuffledEpochs` orders the batches (Keras' own shuffle would not be reproducible on a
      # resume). The saver comes after the rules it saves, so it records their state each epoch.
      callbacks=[keras.callbacks.TerminateOnNaN(), saver.plateau, saver.stopping, saver,
                 *callbacks])


class _ShuffledEpochs(keras.utils.PyDataset):
  """The training pairs in batches, each epoch in an order fixed by `(seed, epoch)`, so that a
  resumed training sees the batches an uninterrupted one would have."""

  def __init__(self, pairs: Dict[str, np.ndarray], batch_size: int, seed: int, epoch: int):
    super().__init__()
    self._pairs, self._batch_size, self._seed, self._epoch = pairs, batch_size, seed, epoch
    self._order = self._permutation()

  def _permutation(self) -> np.ndarray:
    size = len(next(iter(self._pairs.values())))
    return np.random.default_rng([self._seed, self._epoch]).permutation(size)

  def __len__(self) -> int:
    return math.ceil(len(self._order) / self._batch_size)

  def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
    rows = self._order[index * self._batch_size:(index + 1) * self._batch_size]
    return {name: values[rows] for name, values in self._pairs.items()}

  def on_epoch_end(self) -> None:
    self._epoch += 1
    self._order = self._permutation()


class _StateSaver(keras.callbacks.Callback):
  """Saves after every epoch what resuming needs, and restores it when a training resumes.

  A state is the weights with the optimizer's (`stage<s>-epoch<e>.weights.h5`), the early-stopping
  rule's best weights (`...-best.npz`) and `state.json`, written last, which names them and holds
  the stopping rules' counters, every stage's validation losses and the seconds spent so far.
  A process killed while writing leaves the previous state whole.
  """

  def __init__(self, directory: str, state: Optional[Dict[str, Any]], start: float):
    super().__init__()
    self.directory, self._state = directory, state or {}
    self._seconds_before, self._start = self._state.get("seconds", 0.0), start
    self.stage = self._state.get("stage", 0)
    self.losses: List[List[float]] = self._state.get("losses", [])
    self.plateau: Optional[keras.callbacks.ReduceLROnPlateau] = None
    self.stopping: Optional[keras.callbacks.EarlyStopping] = None

  @property
  def epoch(self) -> int:
    """The epoch this stage's `fit` starts from."""
    return self._state.get("epoch", 0)

  def seconds(self) -> float:
    """Training seconds over every process that worked on this run."""
    return self._seconds_before + time.monotonic() - self._start

  def for_stage(self, stage: int) -> "_StateSaver":
    """Itself, set up for `stage` (a new one, or the one a resumed training stopped in)."""
    if stage != self.stage:   # a new stage starts from the weights the last one ended with
      self.stage, self._state = stage, {}
    if not self._state:
      self.losses = self.losses[:stage] + [[]]
    return self

  def restore(self, estimator: PosteriorEstimator) -> bool:
    """Loads this stage's saved weights and optimizer state, if any; returns whether the stage
    had finished (then the weights are those early stopping kept)."""
    estimator.optimizer.build(estimator.trainable_variables)
    if not self._state:
      return False
    estimator.load_weights(os.path.join(self.directory, self._state["weights"]))
    best = self._best_weights()
    if self._state["finished"] and best is not None:
      estimator.set_weights(best)
    return self._state["finished"]

  def _best_weights(self) -> Optional[List[np.ndarray]]:
    if not self._state["best_weights"]:
      return None
    with np.load(os.path.join(self.directory, self._state["best_weights"])) as stored:
      return [stored[f"w{i}"] for i in range(len(stored.files))]

  def on_train_begin(self, logs=None):
    if not self._state:
      self._save(epoch=0, finished=False)
      return
    # The rules reset themselves when `fit` begins (they come first); give them back their state.
    for rule, names in ((self.plateau, _PLATEAU_STATE), (self.stopping, _STOPPING_STATE)):
      for name in names:
        setattr(rule, name, self._state["rules"][type(rule).__name__][name])
    self.stopping.best_weights = self._best_weights()

  def on_epoch_end(self, epoch, logs=None):
    self.losses[-1].append(float(logs["val_loss"]))
    self._save(epoch + 1, finished=self.model.stop_training or epoch + 1 == self.params["epochs"])

  def _save(self, epoch: int, finished: bool) -> None:
    os.makedirs(self.directory, exist_ok=True)
    name = f"stage{self.stage}-epoch{epoch}"
    with atomic_output(os.path.join(self.directory, name + ".weights.h5"),
                       suffix=".weights.h5") as temporary:
      self.model.save_weights(temporary)
    best = self.stopping.best_weights
    if best is not None:
      with atomic_output(os.path.join(self.directory, name + "-best.npz"), suffix=".npz") as path:
        np.savez(path, **{f"w{i}": weights for i, weights in enumerate(best)})
    previous = self._state
    self._state = {
        "stage": self.stage, "epoch": epoch, "finished": finished, "losses": self.losses,
        "seconds": self.seconds(), "weights": name + ".weights.h5",
        "best_weights": None if best is None else name + "-best.npz",
        "rules": {type(rule).__name__: {key: _plain(getattr(rule, key)) for key in keys}
                  for rule, keys in ((self.plateau, _PLATEAU_STATE),
                                     (self.stopping, _STOPPING_STATE))}}
    write_json_atomically(os.path.join(self.directory, STATE_FILE), self._state)
    for stale in {previous.get("weights"), previous.get("best_weights")} - {
        self._state["weights"], self._state["best_weights"], None}:
      os.remove(os.path.join(self.directory, stale))


_PLATEAU_STATE = ("wait", "cooldown_counter", "best")
_STOPPING_STATE = ("wait", "stopped_epoch", "best", "best_epoch")


def _plain(value: Any) -> Any:
  """A rule's counter or best loss as JSON can hold it (numpy scalars to Python's)."""
  return value.item() if isinstance(value, np.generic) else value


def is_trained(workdir: str) -> bool:
  """Whether `workdir` holds an estimator `train_npe` finished (it writes the model last)."""
  return os.path.exists(os.path.join(workdir, MODEL_FILE))


def load_npe(workdir: str) -> PosteriorEstimator:
  """The estimator `train_npe` saved in `workdir`.

  Raises:
    FileNotFoundError: `workdir` holds no trained estimator.
    ValueError: its `npe.keras` is damaged (not a Keras archive of an estimator).
  """
  if not is_trained(workdir):
    raise FileNotFoundError(f"{workdir!r} holds no trained NPE estimator ({MODEL_FILE} missing); "
                            f"train one first")
  path = os.path.join(workdir, MODEL_FILE)
  try:
    # Keras calls an archive that is not a zip file "not found".
    return keras.saving.load_model(path)
  except (ValueError, OSError, zipfile.BadZipFile, KeyError) as error:
    raise ValueError(f"{path} is damaged and cannot be loaded ({error}); train the estimator "
                     f"again in a new directory") from None


#: What `read_summary` needs in `training_summary.json`.
SUMMARY_FIELDS = ("training_simulations", "training_seconds")


def read_summary(workdir: str) -> Dict[str, Any]:
  """`training_summary.json` of an NPE run.

  Raises:
    FileNotFoundError: the file is missing.
    ValueError: naming the file, when it is not a JSON object or lacks a number it needs.
  """
  path = os.path.join(workdir, SUMMARY_FILE)
  summary = read_json_object(path)
  if summary is None:
    raise FileNotFoundError(f"{path} is missing: {workdir!r} holds no finished NPE training")
  for field in SUMMARY_FIELDS:
    value = summary.get(field)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      raise ValueError(f"{path} is damaged: expected a number in {field!r}, got {value!r}")
  return summary
