"""Runs the train step and predictions in the configured parallel form: a (data, expert) mesh or pmap.

Either way the checkpointed state is the same unreplicated ``TrainState``, so a run can resume under the other form.
With several processes (``train.distributed``) the mesh spans all of their devices; ``batch_shard`` says which slice
of every global batch this process loads, and outputs come back gathered (training/distributed.py). pmap runs in one
process only.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
import optax
from flax import nnx

from mos_jax.training import distributed, losses
from mos_jax.training import sharding as sharding_lib
from mos_jax.training import step as step_lib
from mos_jax.training.config import TrainConfig

PARALLELISMS = ("mesh", "pmap")


class Executor:
  """Holds the placed train state and the compiled step and prediction functions."""

  def __init__(self, cfg: TrainConfig, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
               schedule: optax.Schedule, task: str, state: step_lib.TrainState,
               devices: list[jax.Device] | None = None, item_counts: np.ndarray | None = None):
    """``item_counts``: training-target count of items 1..num_items, for ``train.sampled_proposal='popularity'``."""
    if cfg.parallelism not in PARALLELISMS:
      raise ValueError(f"config.train.parallelism: expected one of {PARALLELISMS}, got {cfg.parallelism!r}")
    self.mode = cfg.parallelism
    self.graphdef = graphdef
    self.multi_process = distributed.multi_process()
    devices = list(devices if devices is not None else jax.devices())
    if self.multi_process and self.mode != "mesh":
      raise ValueError(f"config.train.parallelism={cfg.parallelism!r} runs in one process, but JAX runs "
                       f"{jax.process_count()}: use parallelism='mesh' for multi-process training")
    next_loss = None
    if task == "next" and cfg.next_loss != "full":
      next_loss = losses.make_next_loss(cfg, item_counts)
    body = step_lib.make_train_step(graphdef, tx, schedule, task, next_loss)

    def predict(params, rest, batch):
      return nnx.merge(graphdef, params, rest)(batch, deterministic=True).logits

    def query(params, rest, batch):  # the [B, V] logits are unused, so jit never computes them
      return nnx.merge(graphdef, params, rest)(batch, deterministic=True).query

    self._query = jax.jit(query)
    self._item_table = jax.jit(lambda params, rest: nnx.merge(graphdef, params, rest).embedder.item_table)

    if self.mode == "mesh":
      self.mesh = sharding_lib.make_mesh(cfg, devices)
      self.num_shards = self.mesh.shape[sharding_lib.DATA]
      if self.multi_process and self.mesh.size != len(devices):
        raise ValueError(f"config.train.mesh_data x mesh_expert x mesh_model = {self.mesh.size} devices, but "
                         f"multi-process training needs all {len(devices)} devices of the {jax.process_count()} "
                         f"processes in the mesh (mesh_data=-1 takes them all)")
      self.state_shardings = sharding_lib.tree_shardings(state, self.mesh, cfg.embedding_sharding)
      self._batch_sharding = sharding_lib.batch_sharding(self.mesh)
      replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      self._step = step_lib.jit_train_step(body, self.state_shardings, replicated)
      self._predict = jax.jit(step_lib.with_mesh(predict, self.mesh))
    else:
      if cfg.embedding_sharding != "none":
        raise ValueError(f"config.train.embedding_sharding={cfg.embedding_sharding!r} needs parallelism='mesh' (pmap "
                         f"replicates every parameter)")
      n = cfg.mesh_data if cfg.mesh_data > 0 else len(devices)
      if n > len(devices):
        raise ValueError(f"config.train.mesh_data={cfg.mesh_data} but only {len(devices)} device(s) are available")
      self.devices = devices[:n]
      self.num_shards = n
      self.state_shardings = None
      body = step_lib.make_pmap_step(graphdef, tx, schedule, task, next_loss=next_loss)
      self._step = step_lib.pmap_train_step(body, devices=self.devices)
      self._predict = jax.jit(predict)
    sharding_lib.check_batch_size(cfg.batch_size, self.num_shards)
    sharding_lib.check_batch_size(cfg.eval_batch_size, self.num_shards, "config.train.eval_batch_size")
    self.state: Any = None
    self.load(state)

  # ------------------------------------------------------------------------------------------------ state

  def abstract_state(self, state: step_lib.TrainState) -> Any:
    """Restore target for Orbax: shapes, dtypes and (mesh) the shardings the state will live with."""
    return sharding_lib.abstract_like(state, self.state_shardings)

  def load(self, state: step_lib.TrainState) -> None:
    """Places an unreplicated state on the devices (the same host state on every process)."""
    if self.mode == "mesh":
      self.state = distributed.place(state, self.state_shardings)
    else:
      self.state = step_lib.replicate(state, self.devices)

  def saveable_state(self) -> step_lib.TrainState:
    """The unreplicated state (what checkpoints hold)."""
    return self.state if self.mode == "mesh" else step_lib.unreplicate(self.state)

  def batch_shard(self, batch_size: int) -> tuple[int, int]:
    """(shard_index, shard_count) of the training data this process loads: rows ``[i * B / n, (i + 1) * B / n)`` of
    each global batch of ``batch_size`` rows, n = the number of processes the data axis is split over; (0, 1) in one
    process (or when every process holds the whole batch)."""
    if self.mode != "mesh" or not self.multi_process:
      return 0, 1
    return distributed.batch_rows(self._batch_sharding, batch_size)

  # ------------------------------------------------------------------------------------------------ compute

  def _put(self, batch: dict[str, np.ndarray], global_rows: int | None = None) -> dict[str, jax.Array]:
    """Host batch -> arrays split over ``data``; with several processes, ``batch`` holds this process's rows of a
    global batch of ``global_rows`` rows (default: it is the whole batch)."""
    if self.multi_process:
      rows = global_rows if global_rows is not None else len(next(iter(batch.values())))
      return distributed.global_batch(batch, self._batch_sharding, rows)
    return sharding_lib.put_batch(batch, self._batch_sharding)

  def train_step(self, batch: dict[str, np.ndarray], global_rows: int | None = None) -> dict[str, jax.Array]:
    """One update on a host batch; returns the step's metrics (device arrays; not yet fetched).

    With several processes ``batch`` is this process's ``batch_shard`` of a global batch of ``global_rows`` rows.
    """
    if self.mode == "mesh":
      self.state, metrics = self._step(self.state, self._put(batch, global_rows))
      return metrics
    self.state, metrics = self._step(self.state, step_lib.split_for_devices(batch, self.num_shards))
    return jax.tree.map(lambda x: x[0], metrics)

  def predict_fn(self, query_only: bool = False) -> Callable[[dict[str, np.ndarray]], Any]:
    """``batch -> logits`` in evaluation mode with the current parameters.

    ``query_only`` (next-item): ``batch -> evaluation.NextItemQuery(query, item_table)`` instead, for ranking over
    item blocks without the ``[B, V]`` logits; the table is read once per call of ``predict_fn``.
    With several processes every process passes the same whole batch and gets the whole (gathered, numpy) output.
    """
    from mos_jax.evaluation import NextItemQuery  # noqa: PLC0415

    state = self.saveable_state()
    put = self._put if self.mode == "mesh" else (lambda b: b)
    out = distributed.to_host if self.multi_process else (lambda x: x)
    if query_only:
      table = out(self._item_table(state.params, state.rest))
      return lambda batch: NextItemQuery(out(self._query(state.params, state.rest, put(batch))), table)
    return lambda batch: out(self._predict(state.params, state.rest, put(batch)))
