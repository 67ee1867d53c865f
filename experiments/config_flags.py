"""absl flags generated from the configuration dataclasses, so flags and configs never drift apart."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Type

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


def read_flagfile(path: str) -> Dict[str, str]:
  """`--name=value` lines of an absl flag file (nested `--flagfile=` included, later lines win).

  Lets benchmarks and tests build configurations from the shipped flag files without parsing
  command lines. Bare `--name` means true and `--noname` false, as in absl.
  """
  values: Dict[str, str] = {}
  with open(path) as stream:
    for line in stream:
      line = line.strip()
      if not line.startswith("--"):
        continue
      name, separator, value = line[2:].partition("=")
      if name == "flagfile":
        values.update(read_flagfile(value))
      elif separator:
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
