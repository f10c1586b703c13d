"""Device mesh and shardings: the batch on the ``data`` axis, stacked expert parameters on the ``expert`` axis.

Stacked expert parameters are the ones under a module attribute named ``theme_experts`` (MoS) or ``experts`` (MoE
baselines), with the expert index as leading axis (docs/interfaces.md). Their leading axis is split over ``expert``;
everything else is replicated. Optimizer moments mirror the parameter tree, so they get the same rule.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mos_jax.training.config import TrainConfig

DATA, EXPERT = "data", "expert"
EXPERT_MODULES = ("theme_experts", "experts")


def mesh_shape(cfg: TrainConfig, num_devices: int) -> tuple[int, int]:
  """(data, expert) sizes from the config; ``mesh_data=-1`` takes every device not used by the expert axis."""
  if cfg.mesh_expert < 1:
    raise ValueError(f"config.train.mesh_expert must be >= 1, got {cfg.mesh_expert}")
  data = cfg.mesh_data if cfg.mesh_data > 0 else num_devices // cfg.mesh_expert
  if data < 1 or data * cfg.mesh_expert > num_devices:
    raise ValueError(f"config.train.mesh_data x mesh_expert = {cfg.mesh_data} x {cfg.mesh_expert} needs more than the "
                     f"{num_devices} available device(s)")
  return data, cfg.mesh_expert


def make_mesh(cfg: TrainConfig, devices: list[jax.Device] | None = None) -> Mesh:
  """A ``(data, expert)`` mesh over the first ``data * expert`` devices."""
  devices = list(devices if devices is not None else jax.devices())
  data, expert = mesh_shape(cfg, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * 2  # classic GSPMD propagation, the same on every JAX version we support
  return jax.make_mesh((data, expert), (DATA, EXPERT), axis_types=auto, devices=devices[: data * expert])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``, replicated over ``expert``."""
  return NamedSharding(mesh, P(DATA))


def is_expert_path(path: tuple[Any, ...]) -> bool:
  for k in path:
    name = getattr(k, "key", getattr(k, "name", None))
    if isinstance(name, str) and name in EXPERT_MODULES:
      return True
  return False


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a parameter-shaped tree (params, optimizer state, train state)."""
  n_expert = mesh.shape[EXPERT]

  def spec(path, leaf):
    shape = getattr(leaf, "shape", ())
    if n_expert > 1 and is_expert_path(path) and len(shape) >= 1 and shape[0] % n_expert == 0:
      return NamedSharding(mesh, P(EXPERT))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(spec, tree)


def check_batch_size(batch_size: int, num_shards: int, what: str = "config.train.batch_size") -> None:
  if batch_size % num_shards:
    raise ValueError(f"{what}={batch_size} must be divisible by the {num_shards} data-parallel device(s)")


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Host batch -> device arrays split over the ``data`` axis."""
  return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}
