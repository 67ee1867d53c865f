"""The binaries' error boundary: a known failure becomes one message and exit status 1.

Bad input (a flag out of range, a missing or broken file, a workdir of another run, a failing
simulator) is reported as `error: <what was wrong and what was expected>` on stderr, without the
flags' help text and without a Python traceback. `--verbosity=1` (or higher) keeps the traceback,
for debugging. absl reports unparseable flags itself, in one line, before `main` runs.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import select
import signal
import sys
import threading
import time
from typing import Callable, List, Optional

from absl import app, flags

import tensorflow as tf

from alfi_tf.simulators import calls
from alfi_tf.simulators.base import describe_parameters, simulator_error_message
from alfi_tf.simulators.command import TIMEOUT_RULE, is_valid_timeout
from experiments.config_flags import expand_flagfiles

#: Failures a user can cause and fix: they get one message, not a traceback. OSError covers the
#: file system's (a missing file, no permission, a read-only file system, a full disk).
KNOWN_FAILURES = (app.UsageError, ValueError, OSError, RuntimeError, FloatingPointError,
                  MemoryError, tf.errors.OpError)

#: The flags whose values size what a binary holds in memory (the model's layers, the batches of
#: problems and simulations, the sets in memory), named when it runs out: one of them is too large.
#: Each binary names those it defines.
SIZE_FLAGS = ("batch_size", "num_problems", "num_obs", "num_validation_problems", "num_samples",
              "num_simulated_obs", "num_steps", "encoder_hidden", "encoder_out",
              "aggregator_hidden", "aggregator_out", "updater_hidden", "lstm_units",
              "mixture_components", "calibration_problems", "num_starts", "answer_starts",
              "answer_simulated_obs", "robustness_problems", "robustness_starts", "grid_points",
              "context_hidden", "flow_layers", "flow_hidden", "spline_bins", "test_problems")


def define_simulator_timeout() -> None:
  """Defines `--simulator_timeout`, for a binary that runs simulators: `run` then stops the program
  when a Python simulator's call has not returned after that long (`watch_simulator_calls`)."""
  flags.DEFINE_float(
      "simulator_timeout", 600.0,
      "seconds one simulator call may take: an external command's call is then retried or "
      "reported; a Python simulator's simulate_numpy that has not returned stops the program, "
      "naming the call (a TF-native simulator runs inside TensorFlow's graph, unwatched)")
  flags.register_validator("simulator_timeout", is_valid_timeout,
                           message=f"--simulator_timeout {TIMEOUT_RULE}")


def run(main: Callable[[List[str]], None]) -> None:
  """`absl.app.run(main)` behind the error boundary (see the module docstring), with
  `--config=NAME` and `--flagfile=PATH` expanded first (`config_flags.expand_flagfiles`)."""
  try:
    argv = sys.argv[:1] + expand_flagfiles(sys.argv[1:])
  except (ValueError, OSError) as error:
    _fail(str(error))
  _help_for_console_scripts(main)
  watch_interrupts()
  app.run(lambda args: _guarded(main, args), argv=argv)


def _help_for_console_scripts(main: Callable[[List[str]], None]) -> None:
  """Makes `--help` / `--helpshort` of an installed command (`alfi-train`) show its binary's
  docstring and flags. absl looks both up on `__main__` and on the module named by `argv[0]`;
  for a console script those are pip's wrapper, with neither, and the help was empty."""
  binary = sys.modules.get(main.__module__)
  wrapper = sys.modules.get("__main__")
  if binary is None or wrapper is None or binary is wrapper:   # `python -m experiments.train`
    return
  wrapper.__doc__ = binary.__doc__
  for flag in flags.FLAGS.get_key_flags_for_module(binary):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


#: Seconds a first Ctrl-C may take to stop the program before it is told how to stop at once.
INTERRUPT_GRACE_SECONDS = 3.0


def watch_interrupts() -> None:
  """Makes Ctrl-C always work, even while a simulator call never returns.

  Python runs its SIGINT handler in the main thread, between bytecodes: while the main thread
  waits in TensorFlow for a `tf.numpy_function` simulator that hangs, a Ctrl-C is noted and
  nothing happens. But the interpreter also writes each signal's number to a wakeup descriptor
  at once, from C, and a daemon thread reads it here. A first Ctrl-C still stops the program the
  usual way (`KeyboardInterrupt`, after the current call); if it has not within
  `INTERRUPT_GRACE_SECONDS`, the user is told, and a second Ctrl-C ends the process at once (exit
  status 130). Files are written atomically and checkpoints are kept, so a training run resumes.

  A termination request (SIGTERM: `kill`, a batch scheduler at the end of a job's time, `docker
  stop`) stops the program the same way, with exit status 143, but does not wait for a second
  signal: if the program has not stopped within `INTERRUPT_GRACE_SECONDS` (a simulator call that
  does not return), it ends at once. Call from the main thread.
  """
  if signal.getsignal(signal.SIGINT) is signal.default_int_handler:   # not ignored (nohup, &)
    signal.signal(signal.SIGINT, _note_interrupt)
  if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _note_termination)
  read_end, write_end = os.pipe()
  os.set_blocking(write_end, False)
  signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
  threading.Thread(target=_count_interrupts, args=(read_end,), daemon=True,
                   name="interrupt-watchdog").start()


#: Set once a Ctrl-C has arrived: a failure after it is its consequence, not the user's input.
_INTERRUPTED = threading.Event()
#: Set once a SIGTERM has arrived (with `_INTERRUPTED`).
_TERMINATED = threading.Event()


def _note_interrupt(signum, frame) -> None:
  """The SIGINT handler: Python's own (a KeyboardInterrupt), after noting the interrupt."""
  _INTERRUPTED.set()
  signal.default_int_handler(signum, frame)


def _note_termination(signum, frame) -> None:
  """The SIGTERM handler: stops the program as a Ctrl-C does (`_stop_interrupted` tells which)."""
  del signum, frame
  _TERMINATED.set()
  _INTERRUPTED.set()
  raise KeyboardInterrupt


def _count_interrupts(read_end: int) -> None:
  interrupts, told, terminated = 0, False, False
  while True:
    waiting = (interrupts == 1 and not told) or terminated
    ready, _, _ = select.select([read_end], [], [], INTERRUPT_GRACE_SECONDS if waiting else None)
    if not ready and terminated:
      print("terminated (SIGTERM), and the program did not stop within "
            f"{INTERRUPT_GRACE_SECONDS:g} s (a simulator call still running): stopped at once "
            "(re-running the same command resumes a training run from its last checkpoint)",
            file=sys.stderr, flush=True)
      _end_now(143)
    if not ready:
      print("interrupt received: stopping once the current simulator call returns; press Ctrl-C "
            "again to stop at once (re-running the same command resumes a training run)",
            file=sys.stderr, flush=True)
      told = True
      continue
    received = os.read(read_end, 64)
    terminated = terminated or signal.SIGTERM in received
    interrupts += received.count(signal.SIGINT)
    if interrupts >= 2:
      print("stopped at once by a second Ctrl-C (re-running the same command resumes a training "
            "run from its last checkpoint)", file=sys.stderr, flush=True)
      _end_now(130)


def watch_simulator_calls(timeout: float) -> None:
  """Stops the program when a Python simulator's call (`alfi_tf.simulators.calls`) has run for
  `timeout` seconds: one message naming the simulator, the method and its parameters, and exit
  status 1, in place of a program that waits for ever. Nothing is lost: files are written
  atomically, and a training run resumes from its last checkpoint. One watchdog thread per
  process; a later call sets its timeout."""
  global _call_timeout
  with _WATCHDOG_LOCK:
    started = _call_timeout is not None
    _call_timeout = timeout
    if not started:
      threading.Thread(target=_watch_calls, daemon=True, name="simulator-watchdog").start()


_WATCHDOG_LOCK = threading.Lock()
_call_timeout: Optional[float] = None


def _watch_calls() -> None:
  while True:
    timeout = _call_timeout
    time.sleep(min(1.0, timeout / 4))
    call = calls.oldest()
    if call is not None and call.seconds() > timeout:
      print(f"error: simulator {call.simulator!r}: {call.method} has not returned after "
            f"{timeout:g} s (--simulator_timeout), called for {len(call.theta)} parameter "
            f"vector(s): {describe_parameters(call.theta, call.parameter_names)}; stopped. A "
            "simulator that needs longer per call needs a larger --simulator_timeout (re-running "
            "the same command resumes a training run from its last checkpoint)",
            file=sys.stderr, flush=True)
      _end_now(1)


def _end_now(status: int) -> None:
  """Ends the process at once with `status`, from any thread, its worker processes (a data
  worker stuck in the simulator's code, say) first: they would outlive it."""
  for child in multiprocessing.active_children():
    child.terminate()
  os._exit(status)   # pylint: disable=protected-access


def _guarded(main: Callable[[List[str]], None], argv: List[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are written --name=value)")
  if "simulator_timeout" in flags.FLAGS:
    watch_simulator_calls(flags.FLAGS.simulator_timeout)
  try:
    main(argv)
  except KeyboardInterrupt:
    _stop_interrupted()
  except Exception as error:   # pylint: disable=broad-except
    # After a Ctrl-C, what fails fails because of it: TensorFlow's error for the call it cut
    # short, say, as a RuntimeError of its C++ bindings.
    if _INTERRUPTED.is_set():
      _stop_interrupted()
    if not isinstance(error, KNOWN_FAILURES) or flags.FLAGS.verbosity >= 1:
      raise
    _fail(_message(error))


def _stop_interrupted() -> None:
  """Exits with status 130 after a Ctrl-C (143 after a SIGTERM). Checkpoints and files are
  written atomically: a training run continues where it stopped."""
  if _TERMINATED.is_set():
    print("terminated (SIGTERM; re-running the same command resumes a training run)",
          file=sys.stderr)
    sys.exit(143)
  print("interrupted (re-running the same command resumes a training run)", file=sys.stderr)
  sys.exit(130)


def check_output_file(flag: str, path: str, is_own: Callable[[str], bool], what: str) -> None:
  """Refuses `--flag=path` before any work unless writing there loses nothing: it is not a
  directory, and a file already there is one this program wrote (`is_own(path)`, e.g. the result
  of an earlier run), never the user's data, model or anything else.

  Raises:
    app.UsageError: naming the flag, the path and what it holds.
  """
  check_output_location(flag, path)
  if os.path.isdir(path):
    raise app.UsageError(f"--{flag}={path} is a directory; expected the path of {what}")
  if os.path.lexists(path) and not is_own(path):
    raise app.UsageError(f"--{flag}={path} exists and is not {what} written by alfi-tf, so "
                         f"nothing was overwritten: choose a new path (or delete that file)")


def check_output_location(flag: str, path: str) -> None:
  """Refuses `--flag=path` before any work when nothing can be written there: an empty path, one
  below a file, or one whose nearest existing directory cannot be written (no permission, a
  read-only file system). Its missing directories are created when the output is written.

  Raises:
    app.UsageError: naming the flag, the path and, for a path below a file, that file.
  """
  if not path:
    raise app.UsageError(f"--{flag} must name a path, got an empty one")
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise app.UsageError(f"--{flag}={path} lies below {parent}, which is a file, not a "
                         "directory: choose a path in a directory")
  check_writable_directory(flag, path, parent)


def check_writable_directory(flag: str, path: str, directory: str) -> None:
  """Refuses `--flag=path` when `directory` (where it writes) cannot be written.

  Raises:
    app.UsageError: naming the flag, the path and why (`access(2)`'s reason: permission denied,
      read-only file system).
  """
  try:
    writable = os.access(directory, os.W_OK | os.X_OK)
  except OSError:
    writable = False
  if not writable:
    reason = "read-only file system" if _is_read_only(directory) else "permission denied"
    raise app.UsageError(f"--{flag}={path}: {directory} cannot be written ({reason})")


def _is_read_only(directory: str) -> bool:
  try:
    return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
  except OSError:
    return False


#: Where TensorFlow says an op failed, before what failed: the wrapped function and the tf.data
#: transformation (`{{function_node __wrapped__IteratorGetNext_...}} Error in user-defined function
#: passed to ParallelMapDatasetV2:150 transformation with iterator: Iterator::Root::ParallelMapV2: `),
#: internals that pushed a simulator's own assertion far along the line.
_TENSORFLOW_LOCATION = re.compile(r"^(\{\{function_node [^}]*\}\}\s*)?(Error in user-defined "
                                  r"function passed to \S+ transformation with iterator: \S+: )?")


def _message(error: BaseException) -> str:
  """What the user needs to read: a simulator's own failure rather than the TensorFlow error that
  carried it out of `tf.numpy_function`; the size flags when memory ran out; the first line of
  other TensorFlow errors."""
  from_simulator = simulator_error_message(error)
  if from_simulator:
    return from_simulator
  out_of_memory = _out_of_memory_message(error)
  if out_of_memory:
    return out_of_memory
  if isinstance(error, tf.errors.OpError):
    first_line = (error.message or "").strip().splitlines()[:1]
    what = _TENSORFLOW_LOCATION.sub("", first_line[0]) if first_line else ""
    return f"TensorFlow {type(error).__name__}: {what} (--verbosity=1 shows the full trace)"
  return str(error) or type(error).__name__


def _out_of_memory_message(error: BaseException) -> Optional[str]:
  """For an allocation that failed (numpy's MemoryError, TensorFlow's ResourceExhaustedError but
  for a full disk, which TensorFlow reports the same way), what failed and the binary's
  `SIZE_FLAGS` with their values; else None."""
  if isinstance(error, tf.errors.ResourceExhaustedError):
    text = error.message or ""
    if "No space left on device" in text:
      return None
    # Keras puts its layer's name first; the allocation's shape is further down.
    allocation = re.search(r"OOM when allocating tensor with shape\[[^\]]*\]", text)
    what = allocation.group(0) if allocation else text.strip().partition("\n")[0]
  elif isinstance(error, MemoryError):
    what = str(error) or "MemoryError"
  else:
    return None
  # A flag left unset (None: the machine's own value, say --num_starts) is not one to lower.
  sizes = [f"--{name}={flags.FLAGS[name].value}" for name in SIZE_FLAGS
           if name in flags.FLAGS and flags.FLAGS[name].value is not None]
  advice = f"; the settings that size it are {', '.join(sizes)}: use smaller ones" if sizes else ""
  return f"ran out of memory building or running the model ({what}){advice}"


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)
