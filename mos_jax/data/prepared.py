"""Reading a prepared folder back: ``load_prepared(path).split(name, task)`` -> batch arrays.

The folder stores the sorted events and each split's target events (plus its saved negatives); the ``[S, T]``
grids are rebuilt here, vectorised, so the files stay small and the grid layout lives in one place (sessions.py).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Callable

import numpy as np

from mos_jax.data import sessions
from mos_jax.data.examples import SPLITS, make_sampler, opens_session
from mos_jax.data.readers import DataError

# Bump whenever the prepared arrays change for the same options (format, readers, the synthetic generator):
# it is part of the fingerprint, so stale cached copies are never reused.
FORMAT_VERSION = 3

_CHUNK = 16384  # targets packed at a time (bounds the [N,S,T] temporaries)


class PreparedDataset:
  """A prepared folder: ``meta`` (dict), ``stats`` (dict), ``split(name, task)`` and the id mappings."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    if not (self.path / "meta.json").is_file():
      raise DataError(f"{self.path}: not a prepared dataset (no meta.json); run python -m mos_jax.data.prepare")
    self.meta = json.loads((self.path / "meta.json").read_text())
    if self.meta.get("format_version") != FORMAT_VERSION:
      raise DataError(f"{self.path}: prepared with format version {self.meta.get('format_version')}, this code reads "
                      f"version {FORMAT_VERSION}; prepare it again (python -m mos_jax.data.prepare)")
    self.stats = json.loads((self.path / "stats.json").read_text())
    with np.load(self.path / "events.npz") as z:
      self.events = {k: z[k] for k in z.files}
    with np.load(self.path / "targets.npz") as z:
      self.targets = {k: z[k] for k in z.files}
    with np.load(self.path / "mappings.npz") as z:
      self.mappings = {k: z[k] for k in z.files}
    ev = self.events
    self._sess = sessions.Sessions.from_ids(ev["sid"])
    self._user_start = np.searchsorted(ev["user"], np.arange(1, self.meta["num_users"] + 1)).astype(np.int64)
    self._opens = opens_session(ev["sid"])
    self.sampler = make_sampler(self.meta, ev["item_group"], ev["item_cat"], ev["item_counts"])

  def history(self, target: np.ndarray) -> dict[str, np.ndarray]:
    """Grids (items, cats, times [N,S,T], session_theme [N,S]) of the given target event indices."""
    ev, S, T = self.events, self.meta["num_sessions"], self.meta["session_len"]
    parts = []
    for a in range(0, max(len(target), 1), _CHUNK):
      g = target[a:a + _CHUNK]
      parts.append(sessions.pack(self._sess, self._user_start[ev["user"][g] - 1], g, S, T,
                                 {"items": ev["item"], "cats": ev["cat"]}, ev["time"], ev["theme"]))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def split(self, name: str, task: str, *, seed: int = 0, epoch: int = 0) -> dict[str, np.ndarray]:
    """Examples of one split as batch arrays with leading axis N (see docs/interfaces.md).

    CTR valid/test negatives are the saved ones; train negatives are drawn for (``seed`` = data.seed, ``epoch``),
    see ``train_negatives``.
    """
    if name not in SPLITS or task not in ("ctr", "next"):
      raise ValueError(f"split({name!r}, {task!r}): expected name in {SPLITS} and task in ('ctr', 'next')")
    ev = self.events
    g = self.targets[f"{name}_target"]
    out = self.history(g)
    pos = ev["item"][g].astype(np.int32)
    user = ev["user"][g].astype(np.int32)
    first = self._user_start[ev["user"][g] - 1]
    out["session_start"] = self._opens[g].astype(np.int32)
    out["hist_len"] = (g - first).astype(np.int32)
    if task == "ctr":
      if name == "train":
        neg = self.train_negatives(pos, out["items"], seed=seed, epoch=epoch)
      else:
        neg = self.targets[f"{name}_neg"]
      k = 1 + neg.shape[1]  # rows: positive, then its negatives
      out = {key: np.repeat(v, k, axis=0) for key, v in out.items()}
      target = np.concatenate([pos[:, None], neg], 1).reshape(-1)
      label = np.tile(np.arange(k) == 0, len(g)).astype(np.float32)
      user = np.repeat(user, k)
    else:
      target, label = pos, np.ones(len(g), np.float32)
    out.update(target_item=target.astype(np.int32), target_cat=ev["item_cat"][target].astype(np.int32),
               label=label, user=user, weight=np.ones(len(target), np.float32))
    return out

  def train_negatives(self, pos: np.ndarray, items: np.ndarray, *, seed: int, epoch: int) -> np.ndarray:
    """int32 [N, neg_ratio]: the train negatives of epoch ``epoch`` for data.seed ``seed``, for positives ``pos``
    [N] with history grids ``items`` [N, S, T]; a pure function of (seed, epoch, example index)."""
    rng = np.random.default_rng([seed, epoch, 104729])
    return self.sampler.draw(pos, items.reshape(len(pos), -1), rng)

  def epoch_fields(self, arrays: dict[str, np.ndarray], *, seed: int) -> Callable[[int], dict[str, np.ndarray]]:
    """For train CTR ``arrays`` = ``split("train", "ctr", seed=seed)``: epoch -> the fields that change with the
    epoch's negatives (``target_item``, ``target_cat``), for ``make_iterator(..., epoch_fields=...)``."""
    k = 1 + self.meta["neg_ratio"]
    if len(arrays["label"]) % k or not (arrays["label"][0::k] == 1).all():
      raise ValueError(f"epoch_fields: arrays are not CTR rows of one positive + {k - 1} negatives")
    return self._epoch_fields(arrays["target_item"][0::k], arrays["items"][0::k], seed)

  def train_epoch_fields(self, *, seed: int) -> Callable[[int], dict[str, np.ndarray]]:
    """``epoch_fields`` of the train CTR rows without building them: only the positives' item grids are packed
    (for the ArrayRecord path, whose rows are read from disk)."""
    ev, S, T = self.events, self.meta["num_sessions"], self.meta["session_len"]
    g = self.targets["train_target"]
    items = sessions.grid_items(self._sess, self._user_start, ev["user"], ev["item"], g, S, T)
    return self._epoch_fields(ev["item"][g].astype(np.int32), items, seed)

  def _epoch_fields(self, pos: np.ndarray, items: np.ndarray, seed: int) -> Callable[[int], dict[str, np.ndarray]]:
    item_cat = self.events["item_cat"]

    def fields(epoch: int) -> dict[str, np.ndarray]:
      neg = self.train_negatives(pos, items, seed=seed, epoch=epoch)
      target = np.concatenate([pos[:, None], neg], 1).reshape(-1).astype(np.int32)
      return {"target_item": target, "target_cat": item_cat[target].astype(np.int32)}

    return fields

  def original_ids(self, kind: str, dense: np.ndarray) -> np.ndarray:
    """Map dense ids back to the source's ids (``kind``: user | item | cat); 0 maps to ''."""
    return self.mappings[f"{kind}_ids"][np.asarray(dense)]


def load_prepared(path: str | os.PathLike) -> PreparedDataset:
  return PreparedDataset(path)
