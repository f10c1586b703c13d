"""FLOPs as XLA sees them, for checking ``flops.count_flops``: matrix products in HLO text, and cost analysis.

``hlo_dot_flops(hlo)`` sums ``2 * |out| * |contracted|`` over the ``dot`` ops of an HLO module's text (a static count:
a ``while`` body, e.g. a ``lax.scan`` step, is seen once); ``while_body_dot_flops(hlo)`` is the part of it inside
loop bodies and ``loop_dot_flops(hlo)`` gives each loop's trip count with it. ``xla_flops(lowered)`` is XLA's cost
analysis of a lowered (not compiled) computation. Used by tests/test_flops.py and benchmarks/flops_table.py.
"""

from __future__ import annotations

import math
import re

_SHAPE = re.compile(r"^\s*(?:ROOT\s+)?([\w.\-]+)\s*=\s*\w+\[([\d,]*)\]")
_DOT = re.compile(r"=\s*\w+\[([\d,]*)\]\S*\s+dot\(([\w.\-]+),\s*([\w.\-]+)\).*lhs_contracting_dims=\{([\d,]*)\}")


def hlo_dot_flops(hlo: str) -> float:
  """2 * prod(output) * prod(contracted lhs dims), summed over the dot instructions of an HLO module text."""
  shapes = {}
  for line in hlo.splitlines():
    m = _SHAPE.match(line)
    if m:
      shapes[m.group(1)] = [int(v) for v in m.group(2).split(",") if v]
  total = 0.0
  for line in hlo.splitlines():
    m = _DOT.search(line)
    if m:
      out = math.prod(int(v) for v in m.group(1).split(",") if v)
      lhs = shapes[m.group(2)]
      total += 2 * out * math.prod(lhs[int(i)] for i in m.group(4).split(",") if i)
  return total


_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_BODY = re.compile(r"\bwhile\(.*body=%?([\w.\-]+)")
_CALLS = re.compile(r"(?:to_apply|calls|body|condition)=%?([\w.\-]+)")


def _blocks(hlo: str) -> dict[str, list[str]]:
  """Computation name -> its body lines."""
  blocks, name = {}, None
  for line in hlo.splitlines():
    m = _HEADER.match(line)
    if m and not line.startswith(" "):
      name = m.group(1)
      blocks[name] = []
    elif name is not None:
      blocks[name].append(line)
  return blocks


def _body_dots(hlo: str, blocks: dict[str, list[str]], roots: set[str]) -> float:
  """hlo_dot_flops over the computations ``roots`` and every computation they call."""
  seen, todo = set(roots), list(roots)
  while todo:  # e.g. the closed_call holding the recurrent matmul
    for line in blocks.get(todo.pop(), []):
      for ref in _CALLS.findall(line):
        if ref in blocks and ref not in seen:
          seen.add(ref)
          todo.append(ref)
  # The shape table is module-wide; hlo_dot_flops of the module restricted to the body lines.
  shapes_text = "\n".join(line for line in hlo.splitlines() if _SHAPE.match(line) and " dot(" not in line)
  return sum(hlo_dot_flops(shapes_text + "\n" + "\n".join(blocks[b])) for b in seen if b in blocks)


def while_body_dot_flops(hlo: str) -> float:
  """The part of ``hlo_dot_flops`` inside while-loop bodies (which a static count sees once per loop, not per trip)."""
  bodies = {m.group(1) for line in hlo.splitlines() for m in [_BODY.search(line)] if m}
  return _body_dots(hlo, _blocks(hlo), bodies)


_WHILE = re.compile(r"\bwhile\(.*condition=%?([\w.\-]+),\s*body=%?([\w.\-]+)")
_TRIPS = re.compile(r"s32\[\]\S*\s+constant\((\d+)\)")


def loop_dot_flops(hlo: str) -> list[tuple[int, float]]:
  """(trip count, dot FLOPs of one trip) per top-level ``while`` loop of the unoptimised HLO of a ``lax.scan``.

  The trip count is the s32 constant the loop condition compares the counter with (``lax.scan`` lowers to
  ``i < length``); a loop whose condition holds no single such constant is skipped.
  """
  blocks, out = _blocks(hlo), []
  for line in hlo.splitlines():
    m = _WHILE.search(line)
    if m:
      trips = {int(t) for c in blocks.get(m.group(1), []) for t in _TRIPS.findall(c)}
      if len(trips) == 1:
        out.append((trips.pop(), _body_dots(hlo, blocks, {m.group(2)})))
  return out


def xla_flops(lowered) -> float:
  """XLA's cost-analysis FLOPs of a ``jax.jit(...).lower(...)`` result (the unoptimised HLO: no compile needed)."""
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax returns a list
  return float(cost["flops"])


__all__ = ["hlo_dot_flops", "loop_dot_flops", "while_body_dot_flops", "xla_flops"]
