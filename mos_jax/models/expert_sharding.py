"""Expert-parallel sharding hints: under a mesh whose ``expert`` axis has more than one device, the dispatched buffers
and the expert outputs are constrained so that each device computes only its own experts.

The stacked expert parameters are split over ``expert`` by the training code (``training/sharding.py``); without
these hints XLA's propagation is free to gather them and run every expert everywhere. ``constrain(x, axes)`` pins
the leading dimensions of ``x`` to the named mesh axes with ``jax.lax.with_sharding_constraint``.

Why the abstract mesh of the tracing context (``jax.sharding.get_abstract_mesh()``) and not a mesh passed in: the
model stays free of training objects (no Mesh in the graphdef, no config field), and the context is part of the
trace, so one model object serves every path. The mesh train step is traced under its mesh
(``training.step.with_mesh``); with no mesh (one device, evaluation helpers, tests), a mesh whose ``expert`` axis
has size 1, or under ``pmap`` (its only axis is ``data``, and Manual) ``constrain`` returns ``x`` itself, so
nothing is added to the program. A dimension that does not divide by its axis size is not split. The hints never
change values: they only choose where each element is computed.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

DATA, EXPERT = "data", "expert"  # mesh axis names, as in training/sharding.py


def expert_parallel_mesh() -> jax.sharding.AbstractMesh | None:
  """The tracing context's mesh when it has an automatic ``expert`` axis of size > 1, else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or EXPERT not in mesh.axis_names or EXPERT in mesh.manual_axes or mesh.shape[EXPERT] < 2:
    return None
  return mesh


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
  """``x`` with dimension i split over mesh axis ``axes[i]`` under an expert-parallel mesh (None, a dimension that does
  not divide, and the dimensions beyond ``axes``: not split); ``x`` itself otherwise."""
  mesh = expert_parallel_mesh()
  if mesh is None:
    return x
  spec = [a if a in mesh.axis_names and a not in mesh.manual_axes and x.shape[i] % mesh.shape[a] == 0 else None
          for i, a in enumerate(axes)]
  return jax.lax.with_sharding_constraint(x, P(*spec))
