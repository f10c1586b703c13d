"""Multi-process (multi-host) training: ``jax.distributed`` from the config, and the few cross-process operations the
loop needs.

With P processes the mesh spans every process's devices. Each process loads only its slice of every global training
batch (the iterator's shard) and ``global_batch`` joins the slices into one global array; evaluation feeds every
process the whole batch and ``to_host`` gathers the outputs, so every process computes the same metrics. Process 0
alone writes metrics.jsonl, TensorBoard, config.json and prints; every process takes part in each Orbax save, whose
JSON items (written by process 0 only) ``check_same_everywhere`` asserts to be identical. In one process every
function here is a plain local operation.

Pitfalls this module avoids (verified on this machine, ../shared/reference/next_wave.md section 3): anything that
touches the JAX backend before ``initialize`` (hence: train.py calls it first); ``jax.device_put`` of a committed
single-device array onto a sharding that spans other processes (``place`` builds the global array from host data);
``np.asarray`` of an array spanning other processes (``to_host``); an explicit ``jax.distributed.shutdown`` after
asynchronous checkpoints (a ~90 s exit hang; JAX's atexit hook shuts down instead, so nothing here calls it).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np

DISTRIBUTED_MODES = ("off", "auto", "explicit")


class DistributedError(RuntimeError):
  """Multi-process set-up that failed or does not match the config, with what to do about it."""


def check_explicit(t: Any) -> tuple[str, str] | None:
  """(field, expected) for the first bad ``train.distributed='explicit'`` field of a ``TrainConfig``, else None."""
  host, _, port = t.coordinator_address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    return "coordinator_address", "host:port of process 0's coordinator (e.g. 127.0.0.1:12345)"
  if t.num_processes < 1:
    return "num_processes", "an integer >= 1"
  if not 0 <= t.process_id < t.num_processes:
    return "process_id", f"an integer in [0, num_processes={t.num_processes})"
  return None


def initialize(t: Any) -> None:
  """Starts ``jax.distributed`` as ``train.distributed`` says (``TrainConfig``); a no-op for 'off'.

  Must run before anything touches the JAX backend (``jax.devices()``, any array). Raises ``DistributedError`` saying
  which mode failed and what to set.
  """
  if t.distributed == "off":
    return
  try:
    if t.distributed == "auto":
      jax.distributed.initialize()  # cluster autodetection: TPU pods, SLURM, Open MPI, ...
    elif t.distributed == "explicit":
      jax.distributed.initialize(coordinator_address=t.coordinator_address, num_processes=t.num_processes,
                                 process_id=t.process_id)
    else:
      raise ValueError(f"config.train.distributed={t.distributed!r}: expected one of {DISTRIBUTED_MODES}")
  except (RuntimeError, ValueError) as e:
    hint = ("no cluster was detected; set distributed='explicit' with coordinator_address, num_processes and "
            "process_id" if t.distributed == "auto" else "check that every process got the same coordinator_address "
            "and num_processes, a distinct process_id, and that process 0 is running")
    raise DistributedError(f"config.train.distributed={t.distributed!r}: jax.distributed.initialize failed "
                       f"({type(e).__name__}: {e}); {hint}") from e


def check_started(t: Any) -> None:
  """Refuses to train when the running JAX processes do not match ``train.distributed='explicit'`` (e.g. the code
  calling ``loop.train`` forgot ``initialize``: each process would silently train alone)."""
  if t.distributed != "explicit":
    return
  if (jax.process_count(), jax.process_index()) != (t.num_processes, t.process_id):
    raise DistributedError(f"config.train.distributed='explicit' asks for process {t.process_id} of {t.num_processes}, "
                       f"but JAX runs process {jax.process_index()} of {jax.process_count()}: call "
                       f"mos_jax.training.distributed.initialize(cfg.train) before JAX is used (train.py does)")


def is_primary() -> bool:
  """Process 0: the one that writes logs, JSON files and prints."""
  return jax.process_index() == 0


def multi_process() -> bool:
  return jax.process_count() > 1


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def place(tree: Any, shardings: Any) -> Any:
  """``jax.device_put(tree, shardings)`` that also works when the shardings span other processes: global arrays (e.g.
  restored by Orbax) are resharded (a no-op when already so placed), local ones are copied from this process's host
  value (every process holds the same tree)."""
  if not multi_process():
    return jax.device_put(tree, shardings)

  def one(x, s):
    if _is_key(x):  # key arrays have no numpy form (and device_put cannot reshard global ones): place their data
      return jax.random.wrap_key_data(one(jax.random.key_data(x), s), impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, s)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

  return jax.tree.map(one, tree, shardings)


def batch_rows(sharding: jax.sharding.Sharding, global_rows: int) -> tuple[int, int]:
  """(shard_index, shard_count): this process holds rows ``[i * n, (i + 1) * n)``, n = global_rows / shard_count,
  of a batch placed with ``sharding`` (leading axis split); shard_count = P when the data axis spans the P processes,
  1 when every process holds the whole batch. Raises when the process's rows are not one contiguous block."""
  rows = set()
  for index in sharding.addressable_devices_indices_map((global_rows,)).values():
    rows.update(range(global_rows)[index[0]])
  lo, hi = min(rows), max(rows) + 1
  if len(rows) != hi - lo or global_rows % (hi - lo) or lo % (hi - lo):
    raise ValueError(f"process {jax.process_index()} holds rows {sorted(rows)} of a batch of {global_rows}: "
                     f"expected one aligned block; order the mesh so each process's devices are consecutive on the "
                     f"data axis (jax.devices() order does this)")
  return lo // (hi - lo), global_rows // (hi - lo)


def global_batch(local: dict[str, np.ndarray], sharding: jax.sharding.Sharding,
                 global_rows: int) -> dict[str, jax.Array]:
  """One global array per key from this process's rows (its ``batch_rows`` block, or the whole batch when
  ``len(local) == global_rows``): ``jax.make_array_from_process_local_data``."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (global_rows,) + np.shape(v)[1:])
          for k, v in local.items()}


def to_host(tree: Any) -> Any:
  """numpy copies of a tree of arrays; arrays that span other processes are gathered (``process_allgather``)."""
  from jax.experimental import multihost_utils  # noqa: PLC0415

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(one, tree)


def max_over_processes(value: int) -> int:
  """The largest ``value`` over all processes, on every process (a collective: all processes must call it)."""
  if not multi_process():
    return value
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return int(np.asarray(multihost_utils.process_allgather(np.asarray([value], np.int32))).max())


def check_same_everywhere(obj: Any, what: str) -> None:
  """Raises when the JSON of ``obj`` differs between processes (a collective). Orbax writes JSON items from process 0
  only, so a difference would silently keep process 0's version."""
  if not multi_process():
    return
  from jax.experimental import multihost_utils  # noqa: PLC0415

  digest = np.frombuffer(hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).digest(), np.uint8)
  digests = np.asarray(multihost_utils.process_allgather(digest))
  if not (digests == digests[0]).all():
    raise DistributedError(f"{what} differs between processes (process {jax.process_index()}: {obj}); it is saved from "
                       f"process 0 only, so every process must hold the same value")
