"""absl flags generated from the configuration dataclasses, so flags and configs never drift apart."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

from absl import flags


def define_flags_for(config_class: Type[Any], overrides: Dict[str, str] = None) -> None:
  """Defines one flag per field of `config_class`, with the field's default and type.

  Args:
    config_class: a dataclass whose fields are int, float, str, bool or Optional[int].
    overrides: optional help strings per field.
  """
  hints = typing.get_type_hints(config_class)
  for field in dataclasses.fields(config_class):
    hint = hints[field.name]
    help_text = (overrides or {}).get(field.name, f"{config_class.__name__}.{field.name}")
    if hint is bool:
      flags.DEFINE_bool(field.name, field.default, help_text)
    elif hint is int:
      flags.DEFINE_integer(field.name, field.default, help_text)
    elif hint is float:
      flags.DEFINE_float(field.name, field.default, help_text)
    elif hint is str:
      flags.DEFINE_string(field.name, field.default, help_text)
    elif hint == typing.Optional[int]:
      flags.DEFINE_integer(field.name, field.default, help_text)
    else:
      raise TypeError(f"unsupported config field type {hint} for {field.name}")


def config_from_flags(config_class: Type[Any]) -> Any:
  """Builds `config_class` from the parsed flags; its own validation names any bad value."""
  values = {field.name: getattr(flags.FLAGS, field.name)
            for field in dataclasses.fields(config_class)}
  return config_class(**values)


#: The shipped flag files, selectable by name with `--config=NAME` from any directory.
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def available_configs() -> List[str]:
  """Names accepted by `--config`, sorted."""
  return sorted(name[:-4] for name in os.listdir(CONFIG_DIR) if name.endswith(".cfg"))


def expand_flagfiles(args: Sequence[str]) -> List[str]:
  """Replaces `--config=NAME` and `--flagfile=PATH` by the flags in those files, recursively.

  A nested `--flagfile=` is looked up as absl would (from the working directory), then beside the
  file that includes it, so the shipped files work from any directory. Later flags win, as in absl.
  In a file, blank lines and comments (`#`, `//`) are skipped and single-dash flags (`-name=value`,
  which absl accepts) become `--name=value`; any other line is refused rather than dropped.

  Raises:
    ValueError: an unknown config name; a flag file that does not exist (with who included it), is
      not UTF-8 text, holds a line that is not a flag (naming the line), or includes itself.
  """
  return _expand(args, including=())


def _expand(args: Sequence[str], including: Tuple[str, ...]) -> List[str]:
  """`expand_flagfiles` inside the chain of flag files `including` (outermost first)."""
  expanded: List[str] = []
  for arg in args:
    name, separator, value = arg.lstrip("-").partition("=")
    if not (arg.startswith("-") and separator and name in ("config", "flagfile")):
      expanded.append(arg)
    elif name == "config":
      if value not in available_configs():
        raise ValueError(f"unknown --config={value!r}; the shipped configs are: "
                         f"{', '.join(available_configs())} (or pass --flagfile=PATH)")
      expanded.extend(_flags_in(os.path.join(CONFIG_DIR, f"{value}.cfg"), including))
    else:
      includer = including[-1] if including else None
      expanded.extend(_flags_in(_find_flagfile(value, includer), including))
  return expanded


def _find_flagfile(path: str, including: Optional[str]) -> str:
  """Where the flag file `path`, named in the file `including` (if any), is."""
  candidates = [path]
  if including is not None:
    directory = os.path.dirname(including)
    candidates += [os.path.join(directory, path), os.path.join(directory, os.path.basename(path))]
  where = f" (included from {including})" if including else ""
  if not path:   # an unset shell variable: --flagfile="$CONFIG"
    raise ValueError(f"--flagfile must name a file of --name=value lines, got an empty path{where}")
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  if os.path.isdir(path):
    raise ValueError(f"flag file {path} is a directory{where}; expected a file of --name=value "
                     "lines")
  if os.path.exists(path):   # a device (/dev/zero never ends) or a named pipe: not read
    raise ValueError(f"flag file {path} is not a regular file{where}; expected a file of "
                     "--name=value lines")
  raise ValueError(f"flag file {path} not found{where}")


def _flags_in(path: str, including: Tuple[str, ...]) -> List[str]:
  """The flags of the file `path`, its own `--flagfile=` lines expanded."""
  if os.path.realpath(path) in map(os.path.realpath, including):
    raise ValueError("flag files include each other in a cycle: "
                     + " -> ".join([*including, path]))
  try:   # utf-8-sig: a byte-order mark (some editors write one) is not part of the first flag
    with open(path, encoding="utf-8-sig") as stream:
      lines = [line.strip() for line in stream]
  except UnicodeDecodeError as error:
    raise ValueError(f"flag file {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                     "expected --name=value lines") from None
  flags_in_file = []
  for number, line in enumerate(lines, start=1):
    if not line or line.startswith(("#", "//")):
      continue
    if not re.match(r"--?[A-Za-z_]", line):
      raise ValueError(f"flag file {path}, line {number}: {line!r} is not a flag; expected "
                       "--name=value (or --name, --noname for a boolean), # for a comment")
    flags_in_file.append("-" + line if not line.startswith("--") else line)
  return _expand(flags_in_file, including=(*including, path))


def read_flagfile(path: str) -> Dict[str, str]:
  """`--name=value` lines of an absl flag file (nested `--flagfile=` included, later lines win).

  Lets benchmarks and tests build configurations from the shipped flag files without parsing
  command lines. Bare `--name` means true and `--noname` false, as in absl.
  """
  values: Dict[str, str] = {}
  for line in _flags_in(path, including=()):
    name, separator, value = line[2:].partition("=")
    if separator:
      values[name] = value
    elif name.startswith("no"):    # a bare boolean flag, negated
      values[name[2:]] = "false"
    else:                          # a bare boolean flag
      values[name] = "true"
  return values


def config_from_values(config_class: Type[Any], values: Dict[str, str], **overrides: Any) -> Any:
  """Builds `config_class` from `read_flagfile` values (ignoring other fields) plus overrides."""
  hints = typing.get_type_hints(config_class)
  kwargs: Dict[str, Any] = {}
  for field in dataclasses.fields(config_class):
    if field.name in overrides:
      kwargs[field.name] = overrides[field.name]
    elif field.name in values:
      raw, hint = values[field.name], hints[field.name]
      kwargs[field.name] = (raw.lower() == "true" if hint is bool else
                            int(raw) if hint in (int, typing.Optional[int]) else
                            float(raw) if hint is float else raw)
  return config_class(**kwargs)
