"""Runs a prediction function over evaluation batches and reduces the results to metrics.

CTR: the logits of every real row are kept (``N`` floats) so that AUC and GAUC are exact, not binned.
Next-item: the ``[B, num_items + 1]`` scores never leave the device; a jitted function reduces each row to the
1-based rank of its target and only ``[B]`` ranks come back to the host.

Results are fetched at the end, so the host keeps dispatching batches while the device computes.
``predict_rows`` returns those per-row outputs (logits or ranks, aligned with the input rows) and ``row_metrics``
reduces any such outputs, a model's or a rule's, to metrics; ``evaluate`` is the two in a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mos_jax.evaluation import metrics

TASKS = ("ctr", "next")


@functools.partial(jax.jit, static_argnames=("exclude_history", "ties"))
def target_ranks(logits: jax.Array, target: jax.Array, history: jax.Array, *, exclude_history: bool,
                 ties: str = "pessimistic") -> tuple[jax.Array, jax.Array]:
  """On-device rank of each target among all items; same rule as ``metrics.ranks_from_scores``.

  Args:
    logits: ``[B, V]`` scores, V = num_items + 1; column 0 is padding and never a candidate.
    target: ``[B]`` int target item ids.
    history: ``[B, S, T]`` int history items (0 = padding); used only when ``exclude_history``.
    exclude_history: drop history items (other than the target itself) from the candidates.
    ties: 'pessimistic' (equal scores rank ahead of the target) or 'optimistic' (they rank behind it).

  Returns:
    ``rank`` int32 ``[B]`` (1-based) and ``has_nan`` bool ``[B]`` (row has a NaN score: its rank is meaningless).
  """
  b, v = logits.shape
  ids = jnp.arange(v)
  score_t = jnp.take_along_axis(logits, target[:, None], axis=1)  # [B, 1]
  beats = (lambda x: x >= score_t) if ties == "pessimistic" else (lambda x: x > score_t)
  cand = (ids[None, :] > 0) & (ids[None, :] != target[:, None])  # [B, V]; fused into the sum, not stored
  rank = 1 + jnp.sum(beats(logits) & cand, axis=1, dtype=jnp.int32)
  if exclude_history:
    # Subtract the distinct history items that were counted, rather than building a [B, V] "seen" mask:
    # only [B, S*T] values are gathered, so memory stays O(B*V) for the scores alone.
    hist = jnp.sort(history.reshape(b, -1), axis=1)  # [B, L]
    first = jnp.concatenate([jnp.ones((b, 1), bool), hist[:, 1:] != hist[:, :-1]], axis=1)  # dedupe
    counted = first & (hist > 0) & (hist < v) & (hist != target[:, None])
    hist_scores = jnp.take_along_axis(logits, jnp.clip(hist, 0, v - 1), axis=1)  # [B, L]
    rank -= jnp.sum(beats(hist_scores) & counted, axis=1, dtype=jnp.int32)
  return rank, jnp.isnan(logits).any(axis=1)


class NextItemQuery(NamedTuple):
  """What a next-item ``predict_fn`` may return instead of ``[B, V]`` logits: the scores stay implicit.

  ``logits[:, j] = heads.item_scores(query, item_table[j])`` for ``j >= 1``; ranks are then computed over item
  blocks (``target_ranks_blocked``) and no ``[B, V]`` array is ever built.
  """

  query: jax.Array  # [B, D]
  item_table: jax.Array  # [V, D], V = num_items + 1, row 0 = padding


@functools.partial(jax.jit, static_argnames=("block", "exclude_history", "ties"))
def target_ranks_blocked(query: jax.Array, table: jax.Array, target: jax.Array, history: jax.Array, *, block: int,
                         exclude_history: bool, ties: str = "pessimistic") -> tuple[jax.Array, jax.Array]:
  """``target_ranks`` of the implicit scores ``query . table^T``, streamed over ``block`` items at a time.

  Peak memory is ``O(B * block)`` instead of ``O(B * V)``; the last block is padded with rows that are never
  candidates, so ``block`` need not divide V. Two passes over the blocks: the first reads each target's score out of
  its block's product, the second counts the candidates that beat it. Every score, the target's included, comes from
  the same ``[B, block]`` product, so within one call ties are decided consistently. The scores are those of one
  ``[B, V]`` matrix up to float rounding only: products of other shapes may use other kernels (which also differ
  between CPU kinds, e.g. AVX2 and AVX-512), so two scores equal in exact arithmetic may differ in the last bit, and a
  rank may move past a candidate within an ulp of the target; ranks are identical whenever the products are exact
  (e.g. small-integer inputs) or no candidate is that close. History items are dropped from the
  candidates inside each block (a binary search in the sorted history), without any ``[B, V]`` mask.
  """
  from mos_jax.models.heads import item_scores  # noqa: PLC0415  (evaluation scores items exactly as the head does)

  b, d = query.shape
  v = table.shape[0]
  nb = -(-v // block)
  blocks = jnp.pad(table, ((0, nb * block - v), (0, 0))).reshape(nb, block, d)
  starts = jnp.arange(nb) * block
  rows = jnp.arange(b)

  def target_score(acc, xs):
    start, tb = xs
    s = item_scores(query, tb)  # [B, block]
    inside = (target >= start) & (target < start + block)
    return jnp.where(inside, s[rows, jnp.clip(target - start, 0, block - 1)], acc), None

  score_t, _ = jax.lax.scan(target_score, jnp.zeros((b,), jnp.float32), (starts, blocks))
  score_t = score_t[:, None]
  beats = (lambda x: x >= score_t) if ties == "pessimistic" else (lambda x: x > score_t)
  hist = jnp.sort(history.reshape(b, -1), axis=1) if exclude_history else None  # [B, L]

  def count(carry, xs):
    total, nan = carry
    start, tb = xs
    ids = start + jnp.arange(block)
    s = item_scores(query, tb)
    real = (ids > 0) & (ids < v)
    cand = real[None, :] & (ids[None, :] != target[:, None])
    if exclude_history:
      pos = jax.vmap(lambda h: jnp.searchsorted(h, ids))(hist)  # [B, block]
      seen = jnp.take_along_axis(hist, jnp.clip(pos, 0, hist.shape[1] - 1), axis=1) == ids[None, :]
      cand = cand & ~seen
    total = total + jnp.sum(beats(s) & cand, axis=1, dtype=jnp.int32)
    nan = nan | jnp.any(jnp.isnan(s) & real[None, :], axis=1)
    return (total, nan), None

  (total, has_nan), _ = jax.lax.scan(count, (jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool)), (starts, blocks))
  return 1 + total, has_nan


def _logits_of(out: Any) -> Any:
  # Accept a bare array or a ModelOutput-like object with `.logits`.
  return out.logits if hasattr(out, "logits") else out


def _host(batch: Mapping[str, Any], key: str, index: int) -> np.ndarray:
  if key not in batch:
    raise ValueError(f"batch {index}: missing key {key!r} (have {sorted(batch)})")
  return np.asarray(batch[key])


def _weights(batch: Mapping[str, Any], index: int, size: int) -> np.ndarray:
  w = _host(batch, "weight", index)
  if w.shape != (size,):
    raise ValueError(f"batch {index}: 'weight' has shape {w.shape}, expected ({size},) to match the logits")
  if not np.all((w == 0) | (w == 1)):
    raise ValueError(f"batch {index}: 'weight' must be 1 (real row) or 0 (padding row), got {np.unique(w)[:5]}")
  return w.astype(bool)


def _fetch(pending: list) -> list[np.ndarray]:
  """Fetches all device results once, at the end (lets the host run ahead of the device)."""
  return [np.asarray(x) for x in jax.device_get(pending)]


def _ctr_rows(predict_fn, batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(logits float64, label, user) of the real rows, in batch order."""
  logits, labels, users, masks = [], [], [], []
  for i, batch in enumerate(batches):
    out = _logits_of(predict_fn(batch))
    if out.ndim != 1:
      raise ValueError(f"batch {i}: task='ctr' expects logits of shape [B], got {out.shape}")
    mask = _weights(batch, i, out.shape[0])
    label = _host(batch, "label", i)
    user = _host(batch, "user", i)
    for name, a in (("label", label), ("user", user)):
      if a.shape != out.shape:
        raise ValueError(f"batch {i}: {name!r} has shape {a.shape}, expected {out.shape} to match the logits")
    logits.append(out)
    labels.append(label[mask])
    users.append(user[mask])
    masks.append(mask)
  if not logits:
    raise ValueError("evaluate: no batches")
  host_logits = _fetch(logits)
  for i, (lg, m) in enumerate(zip(host_logits, masks)):
    if np.isnan(lg[m]).any():
      raise ValueError(f"batch {i}: predict_fn returned NaN logits for {int(np.isnan(lg[m]).sum())} real row(s)")
  s = np.concatenate([lg[m] for lg, m in zip(host_logits, masks)]).astype(np.float64)
  if s.size == 0:
    raise ValueError("evaluate: every row had weight 0; nothing to evaluate")
  return s, np.concatenate(labels), np.concatenate(users)


def _next_rows(predict_fn, batches, exclude_history: bool, ties: str, item_block: int = 0) -> np.ndarray:
  """int64 1-based target ranks of the real rows, in batch order."""
  ranks, nans, masks = [], [], []
  for i, batch in enumerate(batches):
    out = predict_fn(batch)
    blocked = isinstance(out, NextItemQuery)
    if blocked:
      if out.query.ndim != 2 or out.item_table.ndim != 2 or out.query.shape[1] != out.item_table.shape[1]:
        raise ValueError(f"batch {i}: NextItemQuery expects query [B, D] and item_table [num_items + 1, D], got "
                         f"{out.query.shape}, {out.item_table.shape}")
      b, v = out.query.shape[0], out.item_table.shape[0]
    elif item_block > 0:
      raise ValueError(f"item_block={item_block} needs predict_fn to return a NextItemQuery (query and item table), "
                       f"got {type(out).__name__}")
    else:
      out = _logits_of(out)
      if out.ndim != 2 or out.shape[1] < 2:
        raise ValueError(f"batch {i}: task='next' expects logits of shape [B, num_items + 1], got {out.shape}")
      b, v = out.shape
    mask = _weights(batch, i, b)
    target = _host(batch, "target_item", i)
    if target.shape != (b,):
      raise ValueError(f"batch {i}: 'target_item' has shape {target.shape}, expected ({b},)")
    bad = mask & ((target < 1) | (target >= v))
    if bad.any():
      raise ValueError(f"batch {i}: 'target_item' must be in 1..{v - 1} (num_items) on real rows, "
                       f"got {target[bad][:5]}")
    target = np.where(mask, target, 1)  # padding rows may carry id 0; any valid id keeps the gather in range
    if exclude_history:
      if "items" not in batch:
        raise ValueError(f"batch {i}: exclude_history=True needs key 'items' (have {sorted(batch)})")
      history = batch["items"]  # may already live on the device; no host copy
      if np.ndim(history) < 2 or np.shape(history)[0] != b:
        raise ValueError(f"batch {i}: 'items' has shape {np.shape(history)}, expected [{b}, S, T]")
    else:
      history = jnp.zeros((b, 1), jnp.int32)  # unused; a constant shape keeps one compilation
    target, history = jnp.asarray(target, jnp.int32), jnp.asarray(history, jnp.int32)
    if blocked:
      rank, has_nan = target_ranks_blocked(out.query, out.item_table, target, history, block=item_block or v,
                                           exclude_history=exclude_history, ties=ties)
    else:
      rank, has_nan = target_ranks(out, target, history, exclude_history=exclude_history, ties=ties)
    ranks.append(rank)
    nans.append(has_nan)
    masks.append(mask)
  if not ranks:
    raise ValueError("evaluate: no batches")
  host_ranks = _fetch(ranks)
  host_nans = _fetch(nans)
  for i, (n, m) in enumerate(zip(host_nans, masks)):
    if (n & m).any():
      raise ValueError(f"batch {i}: predict_fn returned NaN scores in {int((n & m).sum())} real row(s)")
  r = np.concatenate([rk[m] for rk, m in zip(host_ranks, masks)])
  if r.size == 0:
    raise ValueError("evaluate: every row had weight 0; nothing to evaluate")
  return r.astype(np.int64)


def _check_options(task: str, ties: str) -> None:
  if task not in TASKS:
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
  if ties not in metrics.TIES:
    raise ValueError(f"ties: expected one of {metrics.TIES}, got {ties!r}")


def row_metrics(outputs: np.ndarray, *, task: str, label: np.ndarray | None = None, user: np.ndarray | None = None,
                ks: Sequence[int] = (5, 10, 20, 50), logloss_eps: float = metrics.LOGLOSS_EPS,
                with_logloss: bool = True) -> dict[str, float]:
  """Metrics of per-row outputs (what ``predict_rows`` returns, or a rule's scores/ranks).

  Args:
    outputs: CTR: ``[N]`` scores (logits; higher = more likely clicked). Next-item: ``[N]`` int 1-based ranks.
    task: 'ctr' or 'next'.
    label, user: ``[N]`` CTR labels in {0, 1} and user ids (GAUC grouping); unused for next-item.
    ks: cutoffs for HR@K and NDCG@K (next-item).
    logloss_eps: probability clipping of the CTR logloss.
    with_logloss: CTR only; False for scores that are not logits (a rule's), whose logloss means nothing.

  Returns:
    The keys of ``evaluate`` (``logloss`` dropped when ``with_logloss`` is False).
  """
  if task not in TASKS:
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
  out = np.asarray(outputs)
  if task == "next":
    result = metrics.ranking_metrics(out, ks)
    result["num_examples"] = int(out.size)
    return result
  if label is None or user is None:
    raise ValueError("row_metrics: task='ctr' needs label and user")
  result = {"logloss": metrics.logloss(label, metrics.sigmoid(out), eps=logloss_eps)} if with_logloss else {}
  result["auc"] = metrics.auc(label, out)  # on logits: same order as the probabilities, without saturation ties
  result["gauc"] = metrics.gauc(label, out, user)
  result["num_examples"] = int(out.size)
  return result


def ctr_intervals(outputs: np.ndarray, *, label: np.ndarray, user: np.ndarray,
                  num_samples: int = metrics.BOOTSTRAP_SAMPLES, seed: int = 0) -> dict[str, Any]:
  """Bootstrap uncertainty of the CTR ``auc`` / ``gauc`` of per-row scores (docs/metrics.md, "Uncertainty").

  Returns ``auc_se`` and ``auc_ci95`` ([lower, upper], the 95% percentile interval) resampling rows;
  ``auc_se_users`` and ``auc_ci95_users`` resampling users (a drawn user brings all its rows: the honest error when a
  user contributes several targets, whose rows are not independent); ``gauc_se`` and ``gauc_ci95`` resampling users;
  ``bootstrap_samples``. Deterministic for a ``seed``; NaN where the metric itself is undefined.
  """
  kw = dict(num_samples=num_samples, seed=seed)
  out: dict[str, Any] = {}
  for se_key, ci_key, (se, lo, hi) in (
      ("auc_se", "auc_ci95", metrics.bootstrap_auc(label, outputs, **kw)),
      ("auc_se_users", "auc_ci95_users", metrics.bootstrap_auc(label, outputs, groups=user, **kw)),
      ("gauc_se", "gauc_ci95", metrics.bootstrap_gauc(label, outputs, user, **kw))):
    out[se_key], out[ci_key] = se, [lo, hi]
  out["bootstrap_samples"] = int(num_samples)
  return out


def predict_rows(predict_fn: Callable[[Mapping[str, Any]], Any], batches: Iterable[Mapping[str, Any]], *, task: str,
                 exclude_history: bool = False, ties: str = "pessimistic", item_block: int = 0) -> np.ndarray:
  """Per-row model outputs of the real rows (``weight == 1``), in the order the batches give them.

  With batches from ``make_iterator(arrays, shuffle=False, pad_to_full=True, ...)`` row ``i`` of the result is row
  ``i`` of ``arrays`` (the padding rows that fill the last batch are dropped), so a slice of the split is a slice of
  the result. Same arguments and input checks as ``evaluate``.

  ``item_block > 0`` (next-item): ``predict_fn`` returns a ``NextItemQuery`` and the ranks are streamed over blocks
  of that many items (``target_ranks_blocked``: same ranks, memory ``O(B * item_block)``). A ``NextItemQuery`` with
  ``item_block = 0`` is ranked in one block.

  Returns:
    CTR: float64 ``[N]`` logits. Next-item: int64 ``[N]`` 1-based rank of the target among all items.
  """
  _check_options(task, ties)
  if item_block < 0:
    raise ValueError(f"item_block: expected >= 0 (0 = all items at once), got {item_block}")
  if task == "ctr":
    return _ctr_rows(predict_fn, batches)[0]
  return _next_rows(predict_fn, batches, exclude_history, ties, item_block)


def evaluate(predict_fn: Callable[[Mapping[str, Any]], Any], batches: Iterable[Mapping[str, Any]], *, task: str,
             ks: Sequence[int] = (5, 10, 20, 50), exclude_history: bool = False, ties: str = "pessimistic",
             logloss_eps: float = metrics.LOGLOSS_EPS, item_block: int = 0) -> dict[str, float]:
  """Evaluates ``predict_fn`` on every batch; rows with ``weight == 0`` are padding and never count.

  Args:
    predict_fn: ``batch -> logits`` (typically jitted); CTR: ``[B]``, next-item: ``[B, num_items + 1]``. An
      object with a ``.logits`` attribute (a ``ModelOutput``) is accepted too.
    batches: iterable of batch dicts (docs/interfaces.md); needs ``weight``, and ``label``/``user`` (CTR) or
      ``target_item`` (next-item; ``items`` too when ``exclude_history``).
    task: 'ctr' or 'next'.
    ks: cutoffs for HR@K and NDCG@K (next-item).
    exclude_history: next-item only; drop the example's history items (except the target) from the candidates.
      Default False: RecBole's sequential full ranking and repeat consumption (the target may be a history item).
    ties: next-item tie rule, 'pessimistic' (default; see docs/metrics.md) or 'optimistic'.
    logloss_eps: probability clipping of the CTR logloss (FuxiCTR: 1e-7).
    item_block: next-item only; > 0 streams the ranking over blocks of that many items (``predict_fn`` then returns
      a ``NextItemQuery``; see ``predict_rows``).

  Returns:
    CTR: ``logloss``, ``auc``, ``gauc``, ``num_examples``. Next-item: ``hr@K``, ``ndcg@K`` and ``mrr@K`` for each K,
    ``mrr``, ``num_examples``. ``auc``/``gauc`` are NaN when undefined (one label class).
  """
  _check_options(task, ties)
  if task == "ctr":
    s, y, u = _ctr_rows(predict_fn, batches)
    return row_metrics(s, task="ctr", label=y, user=u, logloss_eps=logloss_eps)
  metrics.ranking_metrics(np.ones(1, np.int64), ks)  # validate ks before running the model
  rows = predict_rows(predict_fn, batches, task="next", exclude_history=exclude_history, ties=ties,
                      item_block=item_block)
  return row_metrics(rows, task="next", ks=ks)
