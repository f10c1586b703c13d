"""Slices of an evaluation split, and metrics per slice from per-row outputs (pure numpy).

MoS is about session hopping, so a single number over all rows hides where it should help: targets that open a new
session (the user comes back to an earlier theme) versus targets inside an ongoing session. Slices (docs/metrics.md):

* ``all``: every row.
* ``session_start`` / ``within_session``: the target opens a new session (``session_start == 1``) or not.
* ``hist_len:1-9``, ``hist_len:10-49``, ``hist_len:50-199``, ``hist_len:200+``: the user's number of events before
  the target (``hist_len``, counted before the history is cut to the ``[S, T]`` grid).
* ``cats:0``, ``cats:1``, ``cats:2-3``, ``cats:4-7``, ``cats:8+``: distinct known categories (``cats > 0``) among
  the real items (``items > 0``) of the packed ``[S, T]`` history.

The edges are fixed, not quantiles, so that tables of different datasets and runs line up. Slices whose key is
missing from the arrays are skipped (``session_start`` and ``hist_len`` come from the prepared data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mos_jax.evaluation import metrics
from mos_jax.evaluation.evaluate import TASKS, row_metrics

HIST_LEN_EDGES = (1, 10, 50, 200)  # buckets [1, 10), [10, 50), [50, 200), [200, inf)
CATS_EDGES = (0, 1, 2, 4, 8)  # buckets {0}, {1}, [2, 4), [4, 8), [8, inf)
_CHUNK = 16384  # rows per sort when counting categories (bounds the temporary copy)


def bucket_names(prefix: str, edges: Sequence[int]) -> list[str]:
  """Names of the buckets ``[edges[i], edges[i + 1])`` and ``[edges[-1], inf)``, e.g. ``hist_len:10-49``."""
  names = []
  for lo, hi in zip(edges, list(edges[1:]) + [None]):
    names.append(f"{prefix}:{lo}+" if hi is None else f"{prefix}:{lo}" if hi == lo + 1 else f"{prefix}:{lo}-{hi - 1}")
  return names


def _buckets(prefix: str, values: np.ndarray, edges: Sequence[int]) -> dict[str, np.ndarray]:
  bounds = list(edges) + [np.iinfo(np.int64).max]
  return {name: (values >= lo) & (values < hi)
          for name, lo, hi in zip(bucket_names(prefix, edges), bounds[:-1], bounds[1:])}


def num_history_cats(items: np.ndarray, cats: np.ndarray) -> np.ndarray:
  """int64 ``[N]``: distinct categories ``> 0`` among the positions with ``items > 0`` of each row's history."""
  items, cats = np.asarray(items), np.asarray(cats)
  if items.shape != cats.shape or items.ndim < 2:
    raise ValueError(f"items and cats: expected equal shapes [N, S, T], got {items.shape} and {cats.shape}")
  n = items.shape[0]
  out = np.zeros(n, np.int64)
  for a in range(0, n, _CHUNK):
    c = np.where(items[a:a + _CHUNK] > 0, cats[a:a + _CHUNK], 0).reshape(min(_CHUNK, n - a), -1)
    c = np.sort(c, axis=1)  # 0s first; each other value counts where it differs from its left neighbour
    out[a:a + _CHUNK] = (c[:, 0] > 0) + np.sum((c[:, 1:] != c[:, :-1]) & (c[:, 1:] > 0), axis=1)
  return out


def _num_rows(arrays: Mapping[str, np.ndarray]) -> int:
  for key in ("weight", "label", "target_item", "user", "items", "session_start", "hist_len"):
    if key in arrays:
      return int(np.shape(arrays[key])[0])
  raise ValueError(f"slice_masks: no per-row key in the arrays (have {sorted(arrays)}); expected e.g. 'label'")


def _vector(arrays: Mapping[str, np.ndarray], key: str, n: int) -> np.ndarray:
  a = np.asarray(arrays[key])
  if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
    raise ValueError(f"{key!r}: expected an integer array of shape ({n},), got {a.dtype} {a.shape}")
  return a


def slice_masks(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """bool ``[N]`` mask per slice, rows aligned with ``arrays`` (a split's batch arrays, leading axis N).

  ``all`` always; ``session_start``/``within_session`` when ``arrays`` has ``session_start`` (1 = the target opens
  a new session); ``hist_len:*`` when it has ``hist_len``; ``cats:*`` when it has ``items`` and ``cats``. Every row
  is in exactly one bucket of each family (``hist_len`` below 1 is in none: every target has history).
  """
  n = _num_rows(arrays)
  masks = {"all": np.ones(n, bool)}
  if "session_start" in arrays:
    start = _vector(arrays, "session_start", n)
    if not np.isin(start, (0, 1)).all():
      raise ValueError(f"'session_start': expected values 0 or 1, got {np.unique(start)[:5]}")
    masks["session_start"] = start == 1
    masks["within_session"] = start == 0
  if "hist_len" in arrays:
    masks.update(_buckets("hist_len", _vector(arrays, "hist_len", n), HIST_LEN_EDGES))
  if "items" in arrays and "cats" in arrays:
    if np.shape(arrays["items"])[0] != n:
      raise ValueError(f"'items': expected {n} rows like the other keys, got shape {np.shape(arrays['items'])}")
    masks.update(_buckets("cats", num_history_cats(arrays["items"], arrays["cats"]), CATS_EDGES))
  return masks


def slice_metrics(arrays: Mapping[str, np.ndarray], outputs: np.ndarray, *, task: str,
                  masks: Mapping[str, np.ndarray] | None = None, ks: Sequence[int] = (5, 10, 20, 50),
                  logloss_eps: float = metrics.LOGLOSS_EPS, with_logloss: bool = True) -> dict[str, dict[str, float]]:
  """Metrics of per-row outputs on every slice: ``{slice_name: metrics}`` in the order of ``masks``.

  Args:
    arrays: the split's batch arrays the outputs were computed on (CTR needs ``label`` and ``user``).
    outputs: ``[N]`` per row of ``arrays``: CTR scores (logits), next-item int 1-based target ranks
      (``evaluate.predict_rows`` or a rule).
    task: 'ctr' or 'next'.
    masks: slices to use; default ``slice_masks(arrays)``.
    ks, logloss_eps, with_logloss: as ``evaluate.row_metrics``.

  A slice with no rows is left out. On a small slice AUC/GAUC may be NaN (one label class), as on a whole split.
  """
  if task not in TASKS:
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
  out = np.asarray(outputs)
  n = _num_rows(arrays)
  if out.shape != (n,):
    raise ValueError(f"outputs: expected shape ({n},), one per row of the arrays, got {out.shape} (padding rows "
                     f"with weight 0 must not be in the arrays)")
  masks = slice_masks(arrays) if masks is None else masks
  label = user = None
  if task == "ctr":
    for key in ("label", "user"):
      if key not in arrays:
        raise ValueError(f"slice_metrics: task='ctr' needs key {key!r} (have {sorted(arrays)})")
    label, user = np.asarray(arrays["label"]), np.asarray(arrays["user"])
  result = {}
  for name, mask in masks.items():
    mask = np.asarray(mask)
    if mask.shape != (n,) or mask.dtype != bool:
      raise ValueError(f"masks[{name!r}]: expected bool ({n},), got {mask.dtype} {mask.shape}")
    if not mask.any():
      continue
    result[name] = row_metrics(out[mask], task=task, label=None if label is None else label[mask],
                               user=None if user is None else user[mask], ks=ks, logloss_eps=logloss_eps,
                               with_logloss=with_logloss)
  return result
