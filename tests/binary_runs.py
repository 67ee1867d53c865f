"""Running the absl binaries from tests: one command in its own process, as a user would, or many
rejected commands of one binary in a single process.

Each binary's start (Python, TensorFlow, its imports) costs seconds; the flag checks behind it cost
milliseconds. `run_many` pays the start once for a list of bad-input cases: a child process imports
the binary once, then for each case resets the flags to their defaults and calls the installed
command's `entry_point` with that argument list, exactly as `python -m module *args` would, and
reports the exit status and both output streams. Use it for commands that are refused before they
do real work; anything that trains, exports or must survive a kill goes through `run`.

Run as a script (`python -m tests.binary_runs MODULE`), it is that child: the cases arrive on
stdin as a JSON list of argument lists, the results leave on stdout as one JSON list.
"""

import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys
import traceback
from typing import List, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binary_env(**extra: str) -> dict:
  """A fresh copy of the binaries' environment: TensorFlow quiet, this checkout importable, plus
  `extra` variables."""
  return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT, **extra}


def run(module: str, *args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
  """`python -m module *args` in `cwd`, in its own process."""
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=binary_env(),
                        capture_output=True, text=True, timeout=300)


def run_many(module: str, cases: Sequence[Sequence[str]],
             cwd: str = ROOT) -> List[subprocess.CompletedProcess]:
  """Each argument list of `cases` through `module`'s command, all in one child process."""
  child = subprocess.run([sys.executable, "-m", "tests.binary_runs", module], cwd=cwd,
                         env=binary_env(),
                         input=json.dumps([list(case) for case in cases]), capture_output=True,
                         text=True, timeout=300)
  assert child.returncode == 0, child.stderr[-3000:]
  return [subprocess.CompletedProcess([module, *case], result["returncode"], result["stdout"],
                                      result["stderr"])
          for case, result in zip(cases, json.loads(child.stdout.splitlines()[-1]))]


def assert_one_message(result: subprocess.CompletedProcess) -> None:
  """A failure is one message: no Python traceback, no pages of flag help before it."""
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "flags:\n" not in result.stderr, result.stderr[-3000:]


def assert_refused(module: str, cases: Sequence[Tuple[Sequence[str], str]]) -> None:
  """Each `(arguments, message)` case of `module` exits with status 1 and one message that
  contains `message`."""
  results = run_many(module, [arguments for arguments, _ in cases])
  for (arguments, message), result in zip(cases, results):
    assert result.returncode == 1 and message in result.stderr, (arguments,
                                                                 result.stderr[-3000:])
    assert_one_message(result)


def assert_rejected(module: str, cases: Sequence[Tuple[Sequence[str], str]],
                    common_flags: Sequence[str], tmp_path: pathlib.Path) -> None:
  """`assert_refused` for configurations: each `(flags, message)` case, after `common_flags` and
  with a workdir of its own, is refused, and nothing is written to its workdir."""
  workdirs = [tmp_path / f"case{index}" for index in range(len(cases))]
  assert_refused(module, [([*common_flags, *flags, f"--workdir={workdir}"], message)
                          for (flags, message), workdir in zip(cases, workdirs)])
  for (flags, _), workdir in zip(cases, workdirs):
    assert not workdir.exists(), f"{flags}: nothing may be written for a rejected configuration"


def _run_case(module, args: List[str]) -> dict:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.unparse_flags()   # every case starts from the defaults, as a fresh process does
  sys.argv = [module.__name__, *args]
  stdout, stderr, returncode = io.StringIO(), io.StringIO(), 0
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    try:
      module.entry_point()
    except SystemExit as exit_:
      returncode = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except BaseException:  # pylint: disable=broad-except
      traceback.print_exc()  # what an escaped exception would print, as the interpreter would
      returncode = 1
  return {"returncode": returncode, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def _main() -> None:
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(sys.argv[1])
  results = [_run_case(module, case) for case in json.loads(sys.stdin.read())]
  print(json.dumps(results))


if __name__ == "__main__":
  _main()
