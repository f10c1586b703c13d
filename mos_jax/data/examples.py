"""Targets, temporal leave-out splits and CTR negatives.

Per user, the candidate events that have at least one earlier event are the targets: the last → test, the
second-to-last → valid, up to ``max_train`` of the ones before (the most recent) → train. A target's history is
only the user's events strictly before it, so no split can see its own target or anything after it.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "valid", "test")


def split_targets(user: np.ndarray, candidate: np.ndarray, user_start: np.ndarray, max_train: int
                  ) -> dict[str, np.ndarray]:
  """Event indices (int64, sorted) of the targets of each split."""
  idx = np.flatnonzero(candidate)
  first = user_start[user[idx] - 1]
  idx = idx[idx > first]  # a target needs history
  if len(idx) == 0:
    return {s: np.zeros(0, np.int64) for s in SPLITS}
  u = user[idx]
  last_of_user = np.append(u[1:] != u[:-1], True)
  # rank from the end inside each user: 0 = last candidate
  end = np.flatnonzero(last_of_user)
  rank = np.repeat(end, np.diff(np.concatenate([[-1], end]))) - np.arange(len(idx))
  return {"test": idx[rank == 0].astype(np.int64), "valid": idx[rank == 1].astype(np.int64),
          "train": idx[(rank >= 2) & (rank < 2 + max_train)].astype(np.int64)}


def sample_negatives(pos: np.ndarray, item_group: np.ndarray, num_items: int, neg_ratio: int, hard_frac: float,
                     rng: np.random.Generator) -> np.ndarray:
  """int32 [N, neg_ratio] negatives, never the positive.

  With probability ``hard_frac`` a negative is another item of the positive's group (theme for synthetic data,
  category for real data); otherwise, or when the group has no other item, uniform over all other items.
  """
  n = len(pos)
  if num_items < 2:
    raise ValueError("negative sampling needs at least 2 items")
  # uniform over {1..num_items} \ {pos}: draw from num_items - 1 values and skip the positive
  r = rng.integers(1, num_items, size=(n, neg_ratio))
  neg = r + (r >= pos[:, None])
  order = np.argsort(item_group[1:], kind="stable") + 1  # items sorted by group
  groups = item_group[order]
  gstart = np.searchsorted(groups, item_group, side="left")
  gsize = np.searchsorted(groups, item_group, side="right") - gstart
  rank = np.empty(num_items + 1, np.int64)
  rank[order] = np.arange(num_items) - gstart[order]  # position of each item inside its group
  g = item_group[pos]
  can_hard = (g > 0) & (gsize[pos] >= 2)
  hard = (rng.random((n, neg_ratio)) < hard_frac) & can_hard[:, None]
  k = rng.integers(0, np.maximum(gsize[pos] - 1, 1)[:, None], size=(n, neg_ratio))
  k = k + (k >= rank[pos][:, None])  # skip the positive inside its group
  hard_item = order[np.minimum(gstart[pos][:, None] + k, num_items - 1)]
  return np.where(hard, hard_item, neg).astype(np.int32)
