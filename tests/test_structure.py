"""The package's imports flow one way: no module imports (directly or through others) a module that imports it.

Lazy imports inside functions count too: a cycle hidden in a function still ties the modules together.
"""

import ast
import pathlib

import mos_jax

ROOT = pathlib.Path(mos_jax.__file__).parent


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
  """Module -> the package modules it imports anywhere in its body (package ``__init__`` re-exports left out)."""
  files = {".".join(f.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): f
           for f in root.rglob("*.py")}
  packages = {m for m, f in files.items() if f.name == "__init__.py"}
  graph = {}
  for mod, f in files.items():
    if mod in packages:
      continue
    deps = set()
    for node in ast.walk(ast.parse(f.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module for a in node.names}
      elif isinstance(node, ast.Import):
        deps |= {a.name for a in node.names}
    graph[mod] = {d for d in deps if d in files and d not in packages and d != mod}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as a path [a, b, ..., a], or None."""
  state: dict[str, int] = {}  # 1 = on the current path, 2 = done
  path: list[str] = []

  def visit(m: str) -> list[str] | None:
    state[m] = 1
    path.append(m)
    for d in sorted(graph.get(m, ())):
      if state.get(d) == 1:
        return path[path.index(d):] + [d]
      if d not in state and (cycle := visit(d)):
        return cycle
    state[m] = 2
    path.pop()
    return None

  for m in sorted(graph):
    if m not in state and (cycle := visit(m)):
      return cycle
  return None


def test_find_cycle_on_a_small_graph():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_package_imports_are_one_way():
  graph = import_graph(ROOT)
  assert "mos_jax.data.build" in graph and "mos_jax.data.prepared" in graph["mos_jax.data.build"]
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
