"""Batch iterator over prepared arrays: Grain ``MapDataset`` when installed, plain numpy otherwise.

Both backends produce the same batches in the same order and share one JSON state ``{"epoch", "step", ...}``:

- order: epoch e visits ``default_rng([seed, e]).permutation(N)`` (or 0..N-1 without shuffle). The permutation is
  ours, not Grain's ``MapDataset.shuffle`` (a C++ index shuffle that cannot be reproduced without Grain), so a state
  saved on a machine with Grain restores on one without it.
- sharding: shard i of n takes every n-th entry of the epoch's order, starting at i. For training the order is first
  cut to a multiple of n (so every process sees as many batches); with ``pad_to_full`` it is padded instead.
- batching: the epoch's order is cut into index batches (``drop_remainder`` drops the short tail); Grain's
  ``MapDataset.source(index_batches).map(gather)`` (or the same list in numpy) fetches rows; with ``pad_to_full`` the
  last batch is filled to B with copies of row 0 whose ``weight`` is 0, so padded rows never count in losses or metrics.
- state: ``{"epoch", "step", "seed", "num_examples", "global_batch_size"}`` (global = per-shard batch x shards),
  the same for any shard count. Shard i of n with a per-shard batch of B / n takes, at step s, entries
  ``order[s*B + i + n*j]`` (j < B / n), so the n shards' step s together hold exactly the global batch s of the
  unsharded order, ``order[s*B:(s+1)*B]``, and every shard count has the same steps per epoch (``drop_remainder``, or
  ``pad_to_full`` up to its padding rows). A state saved by n processes therefore resumes in any number of processes
  with the same global batch size and continues with the same global batches (as sets of rows; their order within a
  batch depends on n).
- per-epoch fields: ``epoch_fields(epoch)`` (e.g. ``PreparedDataset.epoch_fields``: that epoch's train negatives)
  returns arrays that replace the same keys for the whole epoch; being a function of the epoch, a restored state
  sees exactly the fields the uninterrupted run saw.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np


def _grain():
  try:
    import grain  # noqa: PLC0415  (lazy: the GPU image has no grain)
  except ImportError:
    return None
  return grain


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool, shard_index: int = 0, shard_count: int = 1,
                pad: bool = False) -> np.ndarray:
  """int64 example indices of one epoch for one shard; -1 marks a padding row."""
  order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
  if shard_count > 1:
    extra = -n % shard_count
    order = np.append(order, np.full(extra, -1)) if pad else order[:n - n % shard_count]
    order = order[shard_index::shard_count]
  return order.astype(np.int64)


class BatchIterator:
  """``next(it)`` -> batch dict; ``get_state()`` / ``set_state()`` with a JSON-serialisable dict."""

  def __init__(self, arrays: dict[str, np.ndarray], *, batch_size: int, seed: int, shuffle: bool,
               drop_remainder: bool, pad_to_full: bool = False, num_epochs: int | None = None, shard_index: int = 0,
               shard_count: int = 1, backend: str = "auto",
               epoch_fields: Callable[[int], dict[str, np.ndarray]] | None = None):
    self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
    sizes = {len(v) for v in self.arrays.values()}
    if len(sizes) != 1:
      raise ValueError(f"arrays differ in leading size: { {k: len(v) for k, v in self.arrays.items()} }")
    self.num_examples = sizes.pop()
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
    self.drop_remainder, self.pad_to_full, self.num_epochs = drop_remainder, pad_to_full, num_epochs
    self.shard_index, self.shard_count = shard_index, shard_count
    self.epoch_fields = epoch_fields
    grain = _grain()
    if backend == "grain" and grain is None:
      raise ImportError("backend='grain' but grain is not installed; use backend='numpy' or 'auto'")
    if backend not in ("auto", "grain", "numpy"):
      raise ValueError(f"backend {backend!r}: expected auto | grain | numpy")
    self.backend = "numpy" if backend == "numpy" or grain is None else "grain"
    per_shard = len(self._order(0))
    self.batches_per_epoch = per_shard // batch_size if drop_remainder else math.ceil(per_shard / batch_size)
    if self.batches_per_epoch == 0:
      raise ValueError(f"{self.num_examples} examples give no batch of {batch_size} per shard "
                       f"(shards {shard_count}, drop_remainder={drop_remainder})")
    self.epoch, self.step = 0, 0
    self._cached_epoch, self._ds = -1, None

  def _order(self, epoch: int) -> np.ndarray:
    return epoch_order(self.num_examples, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                       shard_index=self.shard_index, shard_count=self.shard_count, pad=self.pad_to_full)

  def _fields(self, epoch: int) -> dict[str, np.ndarray]:
    """The arrays of one epoch: ``self.arrays`` with ``epoch_fields(epoch)`` swapped in (checked)."""
    if self.epoch_fields is None:
      return self.arrays
    new = {k: np.asarray(v) for k, v in self.epoch_fields(epoch).items()}
    for k, v in new.items():
      if k not in self.arrays or v.shape != self.arrays[k].shape:
        raise ValueError(f"epoch_fields({epoch}) gave {k!r} {v.shape}; expected one of the arrays' keys with the "
                         f"same shape ({ {k: a.shape for k, a in self.arrays.items()}.get(k)})")
    return {**self.arrays, **new}

  def _gather(self, idx: np.ndarray, arrays: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    arrays = self.arrays if arrays is None else arrays
    idx = np.asarray(idx, np.int64)
    if self.pad_to_full and len(idx) < self.batch_size:
      idx = np.append(idx, np.full(self.batch_size - len(idx), -1))
    real = idx >= 0
    safe = np.where(real, idx, 0)
    batch = {k: v[safe] for k, v in arrays.items()}
    w = batch["weight"] if "weight" in batch else np.ones(len(idx), np.float32)
    batch["weight"] = np.where(real, w, 0).astype(np.float32)
    return batch

  def _epoch_dataset(self, epoch: int):
    """Random-access batches of one epoch: a Grain MapDataset over the index batches, or the plain list."""
    if self._cached_epoch != epoch:
      order, B = self._order(epoch), self.batch_size
      index_batches = [order[b * B:(b + 1) * B] for b in range(self.batches_per_epoch)]
      self._gather_epoch = functools.partial(self._gather, arrays=self._fields(epoch))
      if self.backend == "grain":
        # Batching indices before the source keeps Grain's per-element cost (~40 us) off the 1024-row batches.
        self._ds = _grain().MapDataset.source(index_batches).map(self._gather_epoch)
      else:
        self._ds = index_batches
      self._cached_epoch = epoch
    return self._ds

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_epochs is not None and self.epoch >= self.num_epochs:
      raise StopIteration
    ds = self._epoch_dataset(self.epoch)
    item = ds[self.step]
    batch = item if self.backend == "grain" else self._gather_epoch(item)
    self.step += 1
    if self.step == self.batches_per_epoch:
      self.epoch, self.step = self.epoch + 1, 0
    return batch

  @property
  def global_batch_size(self) -> int:
    """Rows per step over all shards (the batch size of the unsharded iterator with the same batches)."""
    return self.batch_size * self.shard_count

  def get_state(self) -> dict:
    """JSON position that does not depend on the shard (process) count: see the module docstring."""
    return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "num_examples": self.num_examples,
            "global_batch_size": self.global_batch_size}

  def set_state(self, state: dict) -> None:
    """Resumes at ``state`` (from any shard count); refuses another seed, dataset size or global batch size."""
    state = dict(state)
    if "global_batch_size" not in state and "batch_size" in state:  # states written before the field existed
      state["global_batch_size"] = int(state["batch_size"]) * int(state.get("shard_count", 1))
    for key in ("seed", "num_examples", "global_batch_size"):
      if key in state and state[key] != getattr(self, key):
        raise ValueError(f"iterator state was saved with {key}={state[key]}, this iterator has {getattr(self, key)}")
    self.epoch, self.step = int(state["epoch"]), int(state["step"])


def make_iterator(arrays: dict[str, np.ndarray], *, batch_size: int, seed: int, shuffle: bool, drop_remainder: bool,
                  pad_to_full: bool = False, num_epochs: int | None = None, shard_index: int = 0,
                  shard_count: int = 1, backend: str = "auto",
                  epoch_fields: Callable[[int], dict[str, np.ndarray]] | None = None) -> BatchIterator:
  """Iterator over ``arrays`` (batch keys, leading axis N); see the module docstring for order, state and
  ``epoch_fields``."""
  return BatchIterator(arrays, batch_size=batch_size, seed=seed, shuffle=shuffle, drop_remainder=drop_remainder,
                       pad_to_full=pad_to_full, num_epochs=num_epochs, shard_index=shard_index,
                       shard_count=shard_count, backend=backend, epoch_fields=epoch_fields)
