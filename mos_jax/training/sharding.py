"""Device mesh and shardings: the batch on the ``data`` axis, stacked expert parameters on the ``expert`` axis,
optionally the embedding tables' rows on ``data`` or ``model``.

The mesh is ``(data, expert, model)``. Stacked expert parameters are the ones under a module attribute named
``theme_experts`` (MoS) or ``experts`` (MoE baselines), with the expert index as leading axis (docs/interfaces.md).
Their leading axis is split over ``expert``. With ``train.embedding_sharding = data | model`` the rows of the item and
category tables (``embedder.item`` / ``embedder.cat``) are split over that axis (each device holds ``V / n`` rows;
XLA inserts the collectives of the lookups and of the tied next-item head). Everything else is replicated. Optimizer
moments mirror the parameter tree, so they get the same rules.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mos_jax.training.config import TrainConfig

DATA, EXPERT, MODEL = "data", "expert", "model"
EXPERT_MODULES = ("theme_experts", "experts")
EMBEDDING_SHARDINGS = ("none", DATA, MODEL)
EMBEDDING_TABLES = ("item", "cat")  # Embedder attributes whose ``embedding`` rows may be split


def mesh_shape(cfg: TrainConfig, num_devices: int) -> tuple[int, int, int]:
  """(data, expert, model) sizes from the config; ``mesh_data=-1`` takes every device the other axes leave."""
  for field in ("mesh_expert", "mesh_model"):
    if getattr(cfg, field) < 1:
      raise ValueError(f"config.train.{field} must be >= 1, got {getattr(cfg, field)}")
  rest = cfg.mesh_expert * cfg.mesh_model
  data = cfg.mesh_data if cfg.mesh_data > 0 else num_devices // rest
  if data < 1 or data * rest > num_devices:
    raise ValueError(f"config.train.mesh_data x mesh_expert x mesh_model = {cfg.mesh_data} x {cfg.mesh_expert} x "
                     f"{cfg.mesh_model} needs more than the {num_devices} available device(s)")
  return data, cfg.mesh_expert, cfg.mesh_model


def make_mesh(cfg: TrainConfig, devices: list[jax.Device] | None = None) -> Mesh:
  """A ``(data, expert, model)`` mesh over the first ``data * expert * model`` devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(cfg, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * 3  # classic GSPMD propagation, the same on every JAX version we support
  return jax.make_mesh(shape, (DATA, EXPERT, MODEL), axis_types=auto, devices=devices[: int(np.prod(shape))])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``, replicated over ``expert``."""
  return NamedSharding(mesh, P(DATA))


def is_expert_path(path: tuple[Any, ...]) -> bool:
  for k in path:
    name = getattr(k, "key", getattr(k, "name", None))
    if isinstance(name, str) and name in EXPERT_MODULES:
      return True
  return False


def embedding_table(path: tuple[Any, ...]) -> str | None:
  """'item' / 'cat' when ``path`` leads to ``embedder.<item|cat>.embedding`` (parameters or optimizer moments)."""
  names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  for i in range(len(names) - 2):
    if names[i] == "embedder" and names[i + 1] in EMBEDDING_TABLES and names[i + 2] == "embedding":
      return names[i + 1]
  return None


def tree_shardings(tree: Any, mesh: Mesh, embedding_axis: str = "none") -> Any:
  """NamedShardings for a parameter-shaped tree (params, optimizer state, train state).

  ``embedding_axis`` (``train.embedding_sharding``): 'data' or 'model' splits the embedding tables' rows over that
  axis; their row count must divide by the axis size (``model.embedding_rows_multiple`` pads the tables).
  """
  if embedding_axis not in EMBEDDING_SHARDINGS:
    raise ValueError(f"config.train.embedding_sharding: expected one of {EMBEDDING_SHARDINGS}, got {embedding_axis!r}")
  n_expert = mesh.shape[EXPERT]
  n_embed = mesh.shape[embedding_axis] if embedding_axis != "none" else 1

  def spec(path, leaf):
    shape = getattr(leaf, "shape", ())
    if n_expert > 1 and is_expert_path(path) and len(shape) >= 1 and shape[0] % n_expert == 0:
      return NamedSharding(mesh, P(EXPERT))
    table = embedding_table(path) if n_embed > 1 and len(shape) == 2 else None
    if table is not None:
      if shape[0] % n_embed:
        raise ValueError(f"config.train.embedding_sharding={embedding_axis!r}: the {table} table has {shape[0]} rows, "
                         f"not divisible by the {n_embed} devices of the '{embedding_axis}' axis; set "
                         f"config.model.embedding_rows_multiple to a multiple of {n_embed} (e.g. 1024)")
      return NamedSharding(mesh, P(embedding_axis))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(spec, tree)


def check_batch_size(batch_size: int, num_shards: int, what: str = "config.train.batch_size") -> None:
  if batch_size % num_shards:
    raise ValueError(f"{what}={batch_size} must be divisible by the {num_shards} data-parallel device(s)")


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Host batch -> device arrays split over the ``data`` axis."""
  return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
  """ShapeDtypeStructs of ``tree`` to restore into: with ``shardings`` where given, else each array's own."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
