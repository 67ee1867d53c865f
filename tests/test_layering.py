"""The package's layering: imports only go down, and no module imports itself in a cycle.

    base (config, checks, metrics) <- simulators <- model <- workdir <- training | serving
        <- baselines <- evaluation <- binaries (experiments, benchmarks)

`training` and `serving` are siblings: neither imports the other. The top-level `alfi_tf/__init__.py`
is the curated public API and may import from every layer (nothing inside the package imports it
but for `__version__`).
"""

import ast
import os
from typing import Dict, List, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("alfi_tf", "experiments", "benchmarks")

#: Module prefix -> layer rank; the longest matching prefix wins.
LAYERS = {
    "alfi_tf.config": 0, "alfi_tf.checks": 0, "alfi_tf.metrics": 0,
    "alfi_tf.simulators": 1,
    "alfi_tf.model": 2,
    "alfi_tf.workdir": 3,
    "alfi_tf.training": 4, "alfi_tf.serving": 4,
    "alfi_tf.baselines": 4.5,
    "alfi_tf.evaluation": 5,
    "experiments": 6, "benchmarks": 6,
}
#: Siblings of one rank that must not import each other.
SIBLINGS = (("alfi_tf.training", "alfi_tf.serving"),)


def _modules() -> Dict[str, str]:
  """Dotted module name -> file path, for every module of the packages."""
  modules = {}
  for package in PACKAGES:
    for directory, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(directory, name)
          dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
          modules[dotted.removesuffix(".__init__")] = path
  return modules


MODULES = _modules()


def _imports(module: str, path: str) -> Set[str]:
  """The project modules `module` imports (at any depth of its code, deferred imports included)."""
  with open(path) as stream:
    tree = ast.parse(stream.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:   # relative import
        parts = module.split(".")
        is_package = path.endswith("__init__.py")
        base = ".".join(parts[:len(parts) - node.level + is_package] + ([base] if base else []))
      # `from package import module` imports the module; `from module import name` the module.
      names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
               for alias in node.names]
    else:
      continue
    found.update(name for name in names if name.split(".")[0] in PACKAGES)
  return found - {module}


def _layer(module: str) -> str:
  matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
  if not matches:
    raise AssertionError(f"module {module} is in no layer; add it to LAYERS in {__file__}")
  return max(matches, key=len)


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_module_has_a_layer():
  for module in MODULES:
    if module != "alfi_tf":
      _layer(module)


def _violations(module: str, imports: Set[str]) -> List[str]:
  """Why each of `module`'s `imports` breaks the layering (empty when none does)."""
  own, problems = _layer(module), []
  for imported in sorted(imports - {"alfi_tf"}):   # the package root: `__version__`
    other = _layer(imported)
    if LAYERS[other] > LAYERS[own]:
      problems.append(f"{module} ({own}, layer {LAYERS[own]}) imports {imported} ({other}, layer "
                      f"{LAYERS[other]}): imports must only go down")
    if any({own, other} == set(pair) for pair in SIBLINGS):
      problems.append(f"{module} imports {imported} of its sibling layer {other}")
  return problems


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "alfi_tf"))
def test_imports_only_go_down(module):
  assert not _violations(module, GRAPH[module])


def _find_cycle() -> List[str]:
  """A module-level import cycle as a list of modules, or [] when there is none."""
  state: Dict[str, int] = {}   # 1: on the current path, 2: done
  path: List[str] = []

  def visit(module: str) -> List[str]:
    state[module] = 1
    path.append(module)
    for imported in sorted(GRAPH.get(module, ())):
      if imported == "alfi_tf" or imported not in GRAPH:
        continue
      if state.get(imported) == 1:
        return path[path.index(imported):] + [imported]
      if imported not in state:
        cycle = visit(imported)
        if cycle:
          return cycle
    state[module] = 2
    path.pop()
    return []

  for module in sorted(GRAPH):
    if module not in state:
      cycle = visit(module)
      if cycle:
        return cycle
  return []


def test_no_import_cycle():
  cycle = _find_cycle()
  assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_checker_catches_upward_and_sibling_imports_and_cycles():
  """The checks above can fail: an upward edge, a sibling edge and a cycle, injected."""
  assert _violations("alfi_tf.model.machine", {"alfi_tf.training.trainer"})
  assert _violations("alfi_tf.training.trainer", {"alfi_tf.serving.export"})
  assert not _violations("alfi_tf.training.trainer", {"alfi_tf.model.machine", "alfi_tf"})
  saved = dict(GRAPH)
  try:
    GRAPH["alfi_tf.config"] = {"alfi_tf.checks"}
    GRAPH["alfi_tf.checks"] = {"alfi_tf.config"}
    cycle = _find_cycle()
    assert len(cycle) == 3 and cycle[0] == cycle[-1]
    assert set(cycle) == {"alfi_tf.checks", "alfi_tf.config"}
  finally:
    GRAPH.clear()
    GRAPH.update(saved)
