"""Metric functions on host arrays (pure numpy, no JAX).

CTR metrics follow FuxiCTR's ``fuxictr/metrics.py`` so that numbers can be compared with papers that report them:

* ``logloss``: FuxiCTR releases written before sklearn 1.5 removed ``eps`` call
  ``sklearn.metrics.log_loss(y_true, y_pred, eps=1e-7)``, i.e. the mean binary cross-entropy with predictions
  clipped to ``[eps, 1 - eps]``. (Newer FuxiCTR drops ``eps`` and sklearn
  then clips at the machine epsilon of the prediction dtype, 1.19e-7 for float32; the two agree except for
  predictions within ~1e-7 of 0 or 1.)
* ``auc``: ``sklearn.metrics.roc_auc_score``; tied scores count one half (the trapezoidal ROC area).
* ``gauc``: FuxiCTR's ``gAUC`` ("group AUC defined in the DIN paper"): per user, ``roc_auc_score`` times the
  user's number of samples; users whose labels are all 0 or all 1 contribute ``(0, 0)``; the result is
  ``sum(auc_u * n_u) / sum(n_u)`` over the remaining users.

Next-item metrics follow the full-ranking protocol of RecBole / HSTU for one target per example, given the 1-based
rank of the target among all candidate items (see ``ranks_from_scores`` and docs/metrics.md for the tie rule):
``HR@K = [rank <= K]``, ``NDCG@K = [rank <= K] / log2(rank + 1)``, ``MRR = 1 / rank`` (no cutoff),
``MRR@K = [rank <= K] / rank``, each averaged over examples.

Uncertainty: ``bootstrap_auc`` / ``bootstrap_gauc`` give the bootstrap standard error and percentile interval of AUC
(resampling rows, or groups such as users) and of GAUC (resampling users), O(N) per resample (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Sequence
import math

import numpy as np

LOGLOSS_EPS = 1e-7  # FuxiCTR's log_loss(..., eps=1e-7)
TIES = ("pessimistic", "optimistic")


def _as_1d(name: str, x, dtype=None) -> np.ndarray:
  a = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
  if a.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
  return a


def _check_labels_scores(labels, scores, scores_name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
  """Validates a (labels, scores) pair: same length, non-empty, labels in {0, 1}, no NaN scores."""
  y = _as_1d("labels", labels, np.float64)
  s = _as_1d(scores_name, scores, np.float64)
  if y.shape != s.shape:
    raise ValueError(f"labels and {scores_name} differ in length: {y.shape[0]} vs {s.shape[0]}")
  if y.size == 0:
    raise ValueError("labels: empty; need at least one example")
  bad = ~((y == 0) | (y == 1))
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"labels: expected values in {{0, 1}}, got {y[i]:g} at index {i} ({int(bad.sum())} bad)")
  nan = np.isnan(s)
  if nan.any():
    raise ValueError(f"{scores_name}: {int(nan.sum())} NaN value(s), first at index {int(np.argmax(nan))}")
  return y, s


def sigmoid(logits) -> np.ndarray:
  """Numerically stable logistic function in float64 (no overflow warnings for large |logit|)."""
  z = np.asarray(logits, dtype=np.float64)
  e = np.exp(-np.abs(z))
  return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def logloss(labels, probs, *, eps: float = LOGLOSS_EPS) -> float:
  """Mean binary cross-entropy, FuxiCTR's ``log_loss(y_true, y_pred, eps=1e-7)``.

  ``-mean(y * log(p) + (1 - y) * log(1 - p))`` with ``p = clip(probs, eps, 1 - eps)``.

  Args:
    labels: ``[N]`` values in {0, 1}.
    probs: ``[N]`` predicted click probabilities in [0, 1] (apply ``sigmoid`` to logits first).
    eps: clipping bound; 1e-7 as in FuxiCTR.
  """
  y, p = _check_labels_scores(labels, probs, "probs")
  if (p < 0).any() or (p > 1).any():
    i = int(np.argmax((p < 0) | (p > 1)))
    raise ValueError(f"probs: expected probabilities in [0, 1], got {p[i]:g} at index {i}; pass sigmoid(logits)")
  if not 0 < eps < 0.5:
    raise ValueError(f"eps: expected 0 < eps < 0.5, got {eps}")
  p = np.clip(p, eps, 1 - eps)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _group_aucs(y: np.ndarray, s: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-group Mann-Whitney AUC with tie-averaged ranks, equal to roc_auc_score on each group.

  AUC = (sum of the positives' ranks - P (P + 1) / 2) / (P * N), ranks 1-based inside the group, tied scores
  sharing the mean of their ranks (which is what makes a tied positive/negative pair count one half).

  Returns ``(auc, n, valid)`` per group in order of sorted group id; ``auc`` is NaN where ``valid`` is False
  (a group with a single label class).
  """
  order = np.lexsort((s, groups))  # by group, then by score
  g, ss, yy = groups[order], s[order], y[order]
  n = g.shape[0]
  pos = np.arange(n, dtype=np.float64)
  new_group = np.ones(n, bool)
  new_group[1:] = g[1:] != g[:-1]
  new_block = new_group.copy()  # a block = run of equal scores inside one group
  new_block[1:] |= ss[1:] != ss[:-1]
  block_id = np.cumsum(new_block) - 1
  first = pos[new_block]
  last = np.append(first[1:], n) - 1
  group_id = np.cumsum(new_group) - 1
  rank = (first + last)[block_id] / 2 - pos[new_group][group_id] + 1  # tie-averaged, 1-based in group
  count = np.bincount(group_id).astype(np.float64)
  n_pos = np.bincount(group_id, weights=yy)
  n_neg = count - n_pos
  rank_sum = np.bincount(group_id, weights=rank * yy)
  valid = (n_pos > 0) & (n_neg > 0)
  with np.errstate(invalid="ignore", divide="ignore"):
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
  return np.where(valid, auc, np.nan), count, valid


def auc(labels, scores) -> float:
  """ROC AUC, equal to ``sklearn.metrics.roc_auc_score(labels, scores)`` (ties count one half).

  Any strictly increasing transform of the scores gives the same value, so logits may be passed instead of
  probabilities (and should be: float32 sigmoids saturate and would create ties that the logits do not have).
  Returns NaN when only one label class is present (sklearn raises; a small validation split should not crash a
  training run).
  """
  y, s = _check_labels_scores(labels, scores)
  a, _, valid = _group_aucs(y, s, np.zeros(y.shape[0], np.int64))
  return float(a[0]) if valid[0] else float("nan")


def gauc(labels, scores, users) -> float:
  """Group AUC as FuxiCTR's ``gAUC`` (DIN paper): sample-count-weighted mean of per-user AUCs.

  ``gauc = sum_u auc_u * n_u / sum_u n_u`` over users ``u`` that have both a positive and a negative example;
  ``n_u`` is the user's number of examples, ``auc_u`` is ``roc_auc_score`` on that user's examples. Users with a
  single label class are skipped. Returns NaN when no user has both classes (FuxiCTR would divide 0 by 0).
  """
  y, s = _check_labels_scores(labels, scores)
  u = _as_1d("users", users)
  if u.shape != y.shape:
    raise ValueError(f"labels and users differ in length: {y.shape[0]} vs {u.shape[0]}")
  if not np.issubdtype(u.dtype, np.integer):
    raise ValueError(f"users: expected integer user ids, got dtype {u.dtype}")
  a, count, valid = _group_aucs(y, s, u)
  if not valid.any():
    return float("nan")
  return float(np.sum(a[valid] * count[valid]) / np.sum(count[valid]))


# --- bootstrap intervals of AUC / GAUC -------------------------------------------------------------------------

BOOTSTRAP_SAMPLES = 1000
_BOOTSTRAP_CELLS = 1 << 21  # resample draws held at once (bounds the [resamples, rows] temporaries)


def _interval(reps: np.ndarray, level: float) -> tuple[float, float, float]:
  """(standard error, lower, upper) of bootstrap replicates: their standard deviation (ddof 1) and the percentile
  interval; replicates that are NaN (a resample with one label class) are left out; NaNs when fewer than 2 remain."""
  r = reps[np.isfinite(reps)]
  if r.size < 2:
    return float("nan"), float("nan"), float("nan")
  lo, hi = np.percentile(r, [50 * (1 - level), 50 * (1 + level)])
  return float(np.std(r, ddof=1)), float(lo), float(hi)


def _check_bootstrap(num_samples: int, level: float = 0.95) -> None:
  if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
    raise ValueError(f"num_samples: expected an integer >= 2, got {num_samples!r}")
  if not 0 < level < 1:
    raise ValueError(f"level: expected a coverage in (0, 1), got {level!r}")


def _dense_ids(name: str, ids, n: int) -> tuple[np.ndarray, int]:
  g = _as_1d(name, ids)
  if g.shape != (n,):
    raise ValueError(f"labels and {name} differ in length: {n} vs {g.shape[0]}")
  if not np.issubdtype(g.dtype, np.integer):
    raise ValueError(f"{name}: expected integer ids, got dtype {g.dtype}")
  uniq, inv = np.unique(g, return_inverse=True)
  return inv.reshape(-1).astype(np.int64), len(uniq)


def _resample_counts(rng: np.random.Generator, r: int, n: int) -> np.ndarray:
  """int64 [r, n]: how often each of n units is drawn in each of r resamples of n draws with replacement (the
  multinomial counts of the ordinary bootstrap)."""
  draws = rng.integers(0, n, size=(r, n)) + (np.arange(r, dtype=np.int64) * n)[:, None]
  return np.bincount(draws.ravel(), minlength=r * n).reshape(r, n)


def auc_replicates(labels, scores, *, groups=None, num_samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
                   ) -> np.ndarray:
  """float64 [num_samples]: the AUC of each bootstrap resample (NaN where a resample has one label class).

  Without ``groups`` the rows are resampled (n draws with replacement from the n rows); with ``groups`` (integer
  ids, e.g. users) whole groups are (G draws from the G groups, each drawn group bringing all its rows: the cluster
  bootstrap, for rows that are not independent).

  Method (O(n) per resample, no sort): the scores are sorted once into blocks of equal score. A resample is a
  vector of integer weights ``w`` (how often each row was drawn), and its AUC is the weighted Mann-Whitney statistic
  ``sum_b P_b (N_<b + N_b / 2) / (P N)``, with ``P_b`` / ``N_b`` the weights of the positives / negatives in block b,
  ``N_<b`` the negative weight of the blocks below b and ``P``, ``N`` the totals. This is exactly the AUC of the
  resampled rows (each drawn copy a row; tied pairs count one half), computed with integer sums in float64.
  """
  y, s = _check_labels_scores(labels, scores)
  _check_bootstrap(num_samples)
  n = y.shape[0]
  order = np.argsort(s, kind="stable")
  new_block = np.ones(n, bool)
  new_block[1:] = s[order][1:] != s[order][:-1]
  block = np.empty(n, np.int64)
  block[order] = np.cumsum(new_block) - 1
  nb = int(new_block.sum())
  code = block + nb * y.astype(np.int64)  # cell: block b of the negatives, nb + b of the positives
  if groups is not None:
    gid, ng = _dense_ids("groups", groups, n)
  rng = np.random.default_rng(seed)
  out = np.empty(num_samples, np.float64)
  units = n if groups is None else ng
  chunk = max(1, _BOOTSTRAP_CELLS // max(units, n, 2 * nb))
  for a in range(0, num_samples, chunk):
    r = min(chunk, num_samples - a)
    offset = (np.arange(r, dtype=np.int64) * 2 * nb)[:, None]
    if groups is None:
      cell = code[rng.integers(0, n, size=(r, n))]
      cell += offset
      cells = np.bincount(cell.ravel(), minlength=r * 2 * nb)
    else:
      weight = _resample_counts(rng, r, ng)[:, gid]  # [r, n]: each row weighted by its group's count
      cells = np.bincount((code[None, :] + offset).ravel(), weights=weight.ravel(), minlength=r * 2 * nb)
      cells = np.rint(cells).astype(np.int64)  # integer sums of integer weights: exact
    cells = cells.reshape(r, 2, nb)
    neg, pos = cells[:, 0], cells[:, 1]
    twice_below = np.cumsum(neg, axis=1)  # 2 N_<b + N_b = 2 cumsum(N)_b - N_b
    twice_below *= 2
    twice_below -= neg
    num = np.einsum("ij,ij->i", pos, twice_below)  # int64, exact
    den = 2 * pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
      out[a:a + r] = np.where(den > 0, num / np.maximum(den, 1), np.nan)
  return out


def bootstrap_auc(labels, scores, *, groups=None, num_samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
  """Bootstrap ``(standard error, lower, upper)`` of ``auc(labels, scores)``; lower/upper bound the ``level``
  percentile interval (default 95%: the 2.5th and 97.5th percentiles of the replicates).

  Rows are resampled with replacement (``groups`` = integer ids: whole groups are, see ``auc_replicates``); the
  standard error is the standard deviation of the ``num_samples`` replicate AUCs. Deterministic for a ``seed``.
  NaNs when the AUC itself is undefined (one label class). A perfect (or a constant) ranking gives se 0 and the
  interval [1, 1] ([0.5, 0.5]).
  """
  _check_bootstrap(num_samples, level)
  if math.isnan(auc(labels, scores)):
    return float("nan"), float("nan"), float("nan")
  return _interval(auc_replicates(labels, scores, groups=groups, num_samples=num_samples, seed=seed), level)


def gauc_replicates(labels, scores, users, *, num_samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> np.ndarray:
  """float64 [num_samples]: GAUC of each bootstrap resample of the users (U draws with replacement from the U users
  present, a drawn user bringing all its rows; NaN where no drawn user has both classes).

  Each user's AUC and row count are computed once; a resample drawing user u ``m_u`` times has
  ``GAUC = sum_u m_u n_u AUC_u / sum_u m_u n_u`` over the users with both classes, so a resample costs O(U).
  """
  y, s = _check_labels_scores(labels, scores)
  _check_bootstrap(num_samples)
  gid, ng = _dense_ids("users", users, y.shape[0])
  a, count, valid = _group_aucs(y, s, gid)
  wa = np.where(valid, a * count, 0.0)
  wn = np.where(valid, count, 0.0)
  rng = np.random.default_rng(seed)
  out = np.empty(num_samples, np.float64)
  chunk = max(1, _BOOTSTRAP_CELLS // ng)
  for lo in range(0, num_samples, chunk):
    m = _resample_counts(rng, min(chunk, num_samples - lo), ng).astype(np.float64)
    den = m @ wn
    with np.errstate(invalid="ignore", divide="ignore"):
      out[lo:lo + len(m)] = np.where(den > 0, (m @ wa) / den, np.nan)
  return out


def bootstrap_gauc(labels, scores, users, *, num_samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
  """Bootstrap ``(standard error, lower, upper)`` of ``gauc(labels, scores, users)``, resampling users
  (``gauc_replicates``); NaNs when the GAUC itself is undefined."""
  _check_bootstrap(num_samples, level)
  if math.isnan(gauc(labels, scores, users)):
    return float("nan"), float("nan"), float("nan")
  return _interval(gauc_replicates(labels, scores, users, num_samples=num_samples, seed=seed), level)


def ranks_from_scores(scores, targets, *, exclude=None, ties: str = "pessimistic") -> np.ndarray:
  """1-based rank of each target item among all candidate items (host reference of the on-device version).

  Candidates of row b are the items ``j in 1..V-1`` other than the target, minus ``exclude[b, j]`` when given;
  column 0 (padding) is never a candidate, whatever its score. With ``ties='pessimistic'`` the rank is
  ``1 + #{candidates j : score_j >= score_target}`` (the target comes last among equal scores), with
  ``'optimistic'`` it is ``1 + #{candidates j : score_j > score_target}``.

  Args:
    scores: ``[B, V]`` scores, V = num_items + 1.
    targets: ``[B]`` target item ids in ``1..V-1``.
    exclude: optional ``[B, V]`` bool, candidates to drop (e.g. history items); ignored for the target itself.
    ties: 'pessimistic' or 'optimistic'.
  """
  s = np.asarray(scores)
  t = np.asarray(targets)
  if s.ndim != 2:
    raise ValueError(f"scores: expected [B, num_items + 1], got shape {s.shape}")
  if t.shape != (s.shape[0],):
    raise ValueError(f"targets: expected shape ({s.shape[0]},) to match scores {s.shape}, got {t.shape}")
  if ties not in TIES:
    raise ValueError(f"ties: expected one of {TIES}, got {ties!r}")
  if ((t < 1) | (t >= s.shape[1])).any():
    raise ValueError(f"targets: expected item ids in 1..{s.shape[1] - 1}, got {t[(t < 1) | (t >= s.shape[1])][:5]}")
  if np.isnan(s).any():
    raise ValueError("scores: contain NaN")
  cand = np.ones(s.shape, bool)
  cand[:, 0] = False
  if exclude is not None:
    ex = np.asarray(exclude, bool)
    if ex.shape != s.shape:
      raise ValueError(f"exclude: expected shape {s.shape}, got {ex.shape}")
    cand &= ~ex
  cand[np.arange(s.shape[0]), t] = False
  st = s[np.arange(s.shape[0]), t][:, None]
  beat = s >= st if ties == "pessimistic" else s > st
  return 1 + np.sum(beat & cand, axis=1)


def ranking_metrics(ranks, ks: Sequence[int] = (5, 10, 20, 50)) -> dict[str, float]:
  """HR@K, NDCG@K, MRR@K for each K, and MRR from 1-based target ranks (one relevant item per example).

  ``hr@K = mean([r <= K])``, ``ndcg@K = mean([r <= K] / log2(r + 1))`` (the ideal DCG of a single relevant item
  is 1), ``mrr = mean(1 / r)`` over the full ranking (no cutoff), ``mrr@K = mean([r <= K] / r)`` (RecBole's MRR@K).
  """
  r = _as_1d("ranks", ranks)
  if r.size == 0:
    raise ValueError("ranks: empty; need at least one example")
  if not np.issubdtype(r.dtype, np.integer):
    raise ValueError(f"ranks: expected integer ranks, got dtype {r.dtype}")
  if (r < 1).any():
    raise ValueError(f"ranks: expected 1-based ranks >= 1, got minimum {int(r.min())}")
  ks = tuple(ks)
  if not ks or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
    raise ValueError(f"ks: expected a non-empty sequence of positive ints, got {ks!r}")
  r = r.astype(np.float64)
  out = {}
  for k in ks:
    out[f"hr@{k}"] = float(np.mean(r <= k))
  for k in ks:
    out[f"ndcg@{k}"] = float(np.mean(np.where(r <= k, 1.0 / np.log2(r + 1), 0.0)))
  out["mrr"] = float(np.mean(1.0 / r))
  for k in ks:  # RecBole's MRR@K
    out[f"mrr@{k}"] = float(np.mean(np.where(r <= k, 1.0 / r, 0.0)))
  return out
