"""Targets, temporal leave-out splits and CTR negatives.

Per user, the candidate events that have at least one earlier event are the targets: the last k
(``DataConfig.eval_targets_per_user``, default 1) → test, the k before → valid, up to ``max_train`` of the ones
before (the most recent; 0 = all) → train; or, with ``split_mode='time_cutoff'``, two global times split them
(``split_targets_by_time``). A target's history is only the user's events strictly before it, so no split can see
its own target or anything after it.

Negatives (``NegativeSampler``, docs/data.md "Negatives") are drawn per split from one numpy Generator; which
items they come from is the ``kind``. Kinds that look at the history use the packed grid, i.e. what a model sees.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPLITS = ("train", "valid", "test")


def opens_session(sid: np.ndarray) -> np.ndarray:
  """bool [E]: the event is the first of its session (sessions never span users, so a user's first event is too)."""
  return np.concatenate([[True], sid[1:] != sid[:-1]]) if len(sid) else np.zeros(0, bool)


def repeats(user: np.ndarray, item: np.ndarray) -> np.ndarray:
  """bool [E]: the user had the event's item at an earlier event (rows sorted by user, time)."""
  order = np.lexsort((np.arange(len(user)), item, user))
  su, si = user[order], item[order]
  first = np.ones(len(user), bool)
  first[1:] = (su[1:] != su[:-1]) | (si[1:] != si[:-1])
  out = np.empty(len(user), bool)
  out[order] = ~first
  return out


def target_candidates(candidate: np.ndarray, *, user: np.ndarray, item: np.ndarray, behavior: np.ndarray,
                      behavior_names: list[str], sid: np.ndarray, target_behaviors: str = "",
                      exclude_repeat_targets: bool = False, target_position: str = "all") -> np.ndarray:
  """The reader's candidate mask narrowed by the target options of ``DataConfig`` (histories keep every event)."""
  cand = candidate.copy()
  wanted = [b.strip() for b in target_behaviors.split(",") if b.strip()]
  if wanted:
    names = [b for b in behavior_names if b]
    unknown = [b for b in wanted if b not in names]
    if unknown:
      raise ValueError(f"data.target_behaviors: {unknown} not among this dataset's behaviours {names or '(none)'}")
    cand &= np.isin(behavior, [behavior_names.index(b) for b in wanted])
  if exclude_repeat_targets:
    cand &= ~repeats(user, item)
  if target_position == "session_start":
    cand &= opens_session(sid)
  elif target_position != "all":
    raise ValueError(f"data.target_position: expected all or session_start, got {target_position!r}")
  return cand


def split_targets(user: np.ndarray, candidate: np.ndarray, user_start: np.ndarray, max_train: int,
                  eval_per_user: int = 1) -> dict[str, np.ndarray]:
  """Event indices (int64, sorted) of the targets of each split.

  Per user, its targets (candidates with at least one earlier event) counted from the end: the last
  ``eval_per_user`` (k) → test, the k before → valid, up to ``max_train`` before those (the most recent; 0 = all)
  → train. A user with fewer than 2k targets fills test first, then valid (k = 1: one target → test only, two →
  test and valid), and has no train target.
  """
  if eval_per_user < 1:
    raise ValueError(f"eval_per_user: expected an integer >= 1, got {eval_per_user!r}")
  k = int(eval_per_user)
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
  train = (rank >= 2 * k) & ((rank < 2 * k + max_train) if max_train > 0 else True)
  return {"test": idx[rank < k].astype(np.int64), "valid": idx[(rank >= k) & (rank < 2 * k)].astype(np.int64),
          "train": idx[train].astype(np.int64)}


def split_targets_by_time(user: np.ndarray, time: np.ndarray, candidate: np.ndarray, user_start: np.ndarray,
                          max_train: int, fraction: float) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
  """Targets split by two global times (``split_mode='time_cutoff'``): returns the event indices of each split
  (int64, sorted) and the cutoffs ``(valid_start, test_start)``.

  Of the n targets (candidates with at least one earlier event of their user) sorted by time, ``test_start`` is the
  time of the one at position ``n - ceil(fraction n)`` and ``valid_start`` that at ``n - ceil(2 fraction n)``: every
  target at or after ``test_start`` → test, at or after ``valid_start`` (and before ``test_start``) → valid, the
  ones before → train (per user the most recent ``max_train``; 0 = all). Equal times fall on the same side, so a
  split can hold a little more than its fraction; a user may have targets in any subset of the splits.
  """
  if not 0 < fraction < 0.5:
    raise ValueError(f"fraction: expected a value in (0, 0.5), got {fraction!r}")
  idx = np.flatnonzero(candidate)
  idx = idx[idx > user_start[user[idx] - 1]]  # a target needs history
  if len(idx) == 0:
    return {s: np.zeros(0, np.int64) for s in SPLITS}, (0, 0)
  t = np.sort(time[idx])
  n = len(idx)
  test_start = int(t[n - int(np.ceil(fraction * n))])
  valid_start = int(t[n - min(n, int(np.ceil(2 * fraction * n)))])
  tt = time[idx]
  train = idx[tt < valid_start]
  if max_train > 0 and len(train):
    u = user[train]
    end = np.flatnonzero(np.append(u[1:] != u[:-1], True))
    rank = np.repeat(end, np.diff(np.concatenate([[-1], end]))) - np.arange(len(train))  # 0 = user's latest
    train = train[rank < max_train]
  return ({"test": idx[tt >= test_start].astype(np.int64),
           "valid": idx[(tt >= valid_start) & (tt < test_start)].astype(np.int64), "train": train.astype(np.int64)},
          (valid_start, test_start))


def train_item_counts(user: np.ndarray, item: np.ndarray, user_start: np.ndarray, eval_targets: np.ndarray,
                      num_items: int, *, time: np.ndarray | None = None, end_time: int | None = None) -> np.ndarray:
  """int64 [num_items + 1]: item frequency over the training portion, i.e. each user's events strictly before the
  user's first evaluation (valid or test) target, and, with ``end_time`` (time_cutoff splits), strictly before
  that time; no valid/test target or later event is counted."""
  cut = user_start[1:].copy()  # users without an evaluation target: all their events
  np.minimum.at(cut, user[eval_targets] - 1, eval_targets)
  mask = np.arange(len(user)) < cut[user - 1]
  if end_time is not None:
    mask &= time < end_time
  return np.bincount(item[mask], minlength=num_items + 1).astype(np.int64)


def in_rows(hist: np.ndarray, cand: np.ndarray) -> np.ndarray:
  """bool [N, k]: cand[n, j] occurs in hist[n] (hist [N, L], 0 = padding; cand > 0)."""
  out = np.zeros(cand.shape, bool)
  step = max(1, 2 ** 24 // max(1, cand.shape[1] * hist.shape[1]))  # bound the [n, k, L] temporary
  for a in range(0, len(cand), step):
    out[a:a + step] = (hist[a:a + step, None, :] == cand[a:a + step, :, None]).any(-1)
  return out


def _pick(mask: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Uniform choice of k True columns per row (with replacement) of mask [N, G]: (column [N, k], row ok [N])."""
  cnt = mask.sum(1)
  t = np.floor(rng.random((len(mask), k)) * cnt[:, None]).astype(np.int64)  # t-th True column, 0-based
  cs = np.cumsum(mask, 1)
  col = np.empty((len(mask), k), np.int64)
  for j in range(k):  # first column whose running count exceeds t
    col[:, j] = np.argmax(cs > t[:, j:j + 1], axis=1)
  return col, cnt > 0


def _groups(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Items 1..M sorted by key: (order, start and size of each item's key group, rank of each item inside it)."""
  order = np.argsort(key[1:], kind="stable") + 1
  sorted_key = key[order]
  gstart = np.searchsorted(sorted_key, key, side="left")
  gsize = np.searchsorted(sorted_key, key, side="right") - gstart
  rank = np.zeros(len(key), np.int64)
  rank[order] = np.arange(len(order)) - gstart[order]
  return order, gstart, gsize, rank


@dataclasses.dataclass
class NegativeSampler:
  """Draws CTR negatives ``[N, neg_ratio]`` (int32, never the positive) for positives and their history grids."""

  kind: str  # uniform | popularity | in_category | history_matched | matched
  num_items: int
  neg_ratio: int
  item_group: np.ndarray  # int32 [M+1] theme + 1 (synthetic) or category (real), 0 = none
  item_cat: np.ndarray  # int32 [M+1]
  counts: np.ndarray  # int64 [M+1] train frequency (train_item_counts)
  hard_frac: float = 0.5  # in_category
  alpha: float = 0.75  # popularity

  def __post_init__(self):
    if self.num_items < 2:
      raise ValueError("negative sampling needs at least 2 items")
    if self.kind not in ("uniform", "popularity", "in_category", "history_matched", "matched"):
      raise ValueError(f"data.negatives: unknown kind {self.kind!r}")

  def draw(self, pos: np.ndarray, hist: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``pos`` int [N]; ``hist`` int [N, L] the packed history items (0 = padding), rows aligned with ``pos``."""
    pos = np.asarray(pos, np.int64)
    k = self.neg_ratio
    if k == 0 or len(pos) == 0:  # an empty split (e.g. no user has 2k targets) has no negatives
      return np.zeros((len(pos), k), np.int32)
    hist = np.asarray(hist).reshape(len(pos), -1)
    if self.kind == "uniform":
      neg = self._uniform(pos, k, rng)
    elif self.kind == "in_category":
      neg = self._in_group(pos, k, rng)
    elif self.kind == "popularity":
      neg = self._popularity(pos, k, rng)
    elif self.kind == "history_matched":
      neg = self._history_matched(pos, hist, k, rng)
    else:
      neg = self._matched(pos, hist, k, rng)
    return neg.astype(np.int32)

  def _uniform(self, pos: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    r = rng.integers(1, self.num_items, size=(len(pos), k))  # {1..M} minus the positive: skip it
    return r + (r >= pos[:, None])

  def _in_group(self, pos: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``hard_frac`` from the positive's group (other items of it), the rest (and lone items) uniform."""
    neg = self._uniform(pos, k, rng)
    order, gstart, gsize, rank = _groups(self.item_group)
    can_hard = (self.item_group[pos] > 0) & (gsize[pos] >= 2)
    hard = (rng.random((len(pos), k)) < self.hard_frac) & can_hard[:, None]
    j = rng.integers(0, np.maximum(gsize[pos] - 1, 1)[:, None], size=(len(pos), k))
    j = j + (j >= rank[pos][:, None])  # skip the positive inside its group
    hard_item = order[np.minimum(gstart[pos][:, None] + j, self.num_items - 1)]
    return np.where(hard, hard_item, neg)

  def _popularity(self, pos: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Proportional to train frequency ** alpha (items never seen in training are never drawn)."""
    c = self.counts.astype(np.float64)
    w = np.where(c > 0, c ** self.alpha, 0.0)
    w[0] = 0.0
    cdf = np.cumsum(w)
    if cdf[-1] <= 0:
      return self._uniform(pos, k, rng)
    neg = np.searchsorted(cdf, rng.random((len(pos), k)) * cdf[-1], side="right")
    for _ in range(32):  # redraw the ones that hit the positive
      bad = neg == pos[:, None]
      if not bad.any():
        break
      neg[bad] = np.searchsorted(cdf, rng.random(int(bad.sum())) * cdf[-1], side="right")
    bad = neg == pos[:, None]  # an item that holds (almost) all the mass: fall back to uniform
    return np.where(bad, self._uniform(pos, k, rng), neg)

  def _novel(self, pos: np.ndarray, hist: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform over items that are neither the positive nor in the row's history (rejection; rare leftovers stay)."""
    neg = self._uniform(pos, k, rng)
    for _ in range(64):
      bad = in_rows(hist, neg)
      if not bad.any():
        break
      rows = np.nonzero(bad)[0]
      neg[bad] = self._uniform(pos[rows], 1, rng)[:, 0]
    return neg

  def _history_matched(self, pos: np.ndarray, hist: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """From the row's own history (event-weighted, never the positive) with probability p = share of these
    positives that occur in their history; otherwise an item outside the history."""
    p = float((hist == pos[:, None]).any(1).mean())
    novel = self._novel(pos, hist, k, rng)
    col, ok = _pick((hist > 0) & (hist != pos[:, None]), k, rng)
    seen = np.take_along_axis(hist, col, 1)
    use = (rng.random((len(pos), k)) < p) & ok[:, None]
    return np.where(use, seen, novel)

  def _matched(self, pos: np.ndarray, hist: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Same group (theme / category), same category and in the history exactly when the positive is.

    Where no such item exists (synthetic: the positive closes its chain arc, whose other items the user just saw),
    each negative keeps, with equal odds, the category but not the novelty, or the novelty but not the category
    (same group), so neither ``in_history`` nor ``category_in_history`` gets the whole signal; then uniform.
    """
    fine = self.item_group.astype(np.int64) * (int(self.item_cat.max()) + 1) + self.item_cat
    pos_in = (hist == pos[:, None]).any(1)
    picks = []
    for key, novelty in ((fine, True), (fine, False), (self.item_group, True)):
      order, gstart, gsize, _ = _groups(key)
      j = np.arange(int(gsize[pos].max()))[None, :]
      members = np.where(j < gsize[pos][:, None], order[np.minimum(gstart[pos][:, None] + j, len(order) - 1)], 0)
      mask = (members > 0) & (members != pos[:, None])
      if novelty:
        mask &= in_rows(hist, np.maximum(members, 1)) == pos_in[:, None]
      col, ok = _pick(mask, k, rng)
      picks.append((np.take_along_axis(members, col, 1), np.broadcast_to(ok[:, None], (len(pos), k))))
    (a, ok_a), (b, ok_b), (c, ok_c) = picks
    keep_cat = rng.random((len(pos), k)) < 0.5
    first = np.where(keep_cat, b, c)
    ok_first = np.where(keep_cat, ok_b, ok_c)
    second, ok_second = np.where(keep_cat, c, b), np.where(keep_cat, ok_c, ok_b)
    neg = np.where(ok_second, second, self._uniform(pos, k, rng))
    neg = np.where(ok_first, first, neg)
    return np.where(ok_a, a, neg)


def make_sampler(meta: dict, item_group: np.ndarray, item_cat: np.ndarray, counts: np.ndarray
                 ) -> NegativeSampler:
  """The negative sampler a prepared folder was built with (its meta.json), for train negatives at iteration time."""
  return NegativeSampler(kind=meta["negatives"], num_items=meta["num_items"], neg_ratio=meta["neg_ratio"],
                         item_group=item_group, item_cat=item_cat, counts=counts,
                         hard_frac=meta["hard_neg_frac"] if meta["hard_neg_frac"] is not None else 0.5,
                         alpha=meta["neg_alpha"])
