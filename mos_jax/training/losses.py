"""Training losses (docs/interfaces.md): weighted cross-entropy for the task, plus the model's auxiliary loss.

The weighted mean is kept as a (sum, weight) pair so that data-parallel paths can add the pairs across devices and
divide once: that gives exactly the loss of the whole batch, whatever the split.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mos_jax.models.heads import item_scores
from mos_jax.training.config import TrainConfig

TASKS = ("ctr", "next")


def per_example_loss(logits: jax.Array, batch: dict[str, jax.Array], task: str) -> jax.Array:
  """Cross-entropy per example, float32 ``[B]``.

  ctr: sigmoid cross-entropy of ``logits[B]`` against ``batch['label'][B]``.
  next: softmax cross-entropy of ``logits[B, num_items + 1]`` against ``batch['target_item'][B]`` over all items.
  """
  logits = logits.astype(jnp.float32)  # losses in float32 even under bfloat16 compute
  if task == "ctr":
    if logits.ndim != 1:
      raise ValueError(f"ctr logits must be [B], got shape {logits.shape}")
    return optax.sigmoid_binary_cross_entropy(logits, batch["label"].astype(jnp.float32))
  if task == "next":
    if logits.ndim != 2:
      raise ValueError(f"next-item logits must be [B, num_items + 1], got shape {logits.shape}")
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["target_item"].astype(jnp.int32))
  raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def weighted_sum(logits: jax.Array, batch: dict[str, jax.Array], task: str) -> tuple[jax.Array, jax.Array]:
  """(sum of weight * loss, sum of weight) over the batch; padding rows have weight 0."""
  return weighted_sum_of(per_example_loss(logits, batch, task), batch)


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den, and 0 where the batch holds no weight at all."""
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def weighted_sum_of(per_example: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(sum of weight * loss, sum of weight) for an already computed per-example loss."""
  w = batch["weight"].astype(jnp.float32)
  return jnp.sum(w * per_example.astype(jnp.float32)), jnp.sum(w)


def total_loss(logits: jax.Array, aux_loss: jax.Array, batch: dict[str, jax.Array], task: str
               ) -> tuple[jax.Array, jax.Array]:
  """(task loss + aux loss, task loss) for one whole batch."""
  num, den = weighted_sum(logits, batch, task)
  task_loss = safe_div(num, den)
  return task_loss + aux_loss.astype(jnp.float32), task_loss


# ---------------------------------------------------------------------------------------------------------------------
# Next-item losses that scale to large catalogues (train.next_loss). Evaluation always ranks the full catalogue.

NEXT_LOSSES = ("full", "sampled", "in_batch")
PROPOSALS = ("uniform", "popularity")


def popularity_log_probs(item_counts: np.ndarray, alpha: float) -> np.ndarray:
  """float32 ``[num_items]`` log-probabilities of items 1..num_items under ``(count + 1) ** alpha``.

  ``item_counts[j - 1]`` is how often item j is a training target; the +1 keeps every item (and so every target's
  log-Q correction) finite.
  """
  c = np.asarray(item_counts, np.float64)
  if c.ndim != 1 or c.size < 1 or (c < 0).any():
    raise ValueError(f"item_counts: expected a 1-D array of counts >= 0, got shape {c.shape}")
  logits = alpha * np.log(c + 1.0)
  return (logits - np.logaddexp.reduce(logits)).astype(np.float32)


def sample_negatives(key: jax.Array, num_sampled: int, num_items: int, log_probs: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array]:
  """``num_sampled`` item ids drawn with replacement from items 1..num_items (never the padding id 0).

  Returns ``(ids int32 [N], log_expected float32 [N])``: ``log_expected = log(N * Q(id))``, the log of the id's
  expected number of draws, which the sampled softmax subtracts from its logit (log-Q correction). ``log_probs``:
  ``[num_items]`` log Q of items 1..num_items (``popularity_log_probs``); None = uniform.
  """
  if num_sampled < 1 or num_items < 1:
    raise ValueError(f"sample_negatives: num_sampled and num_items must be >= 1, got {num_sampled}, {num_items}")
  if log_probs is None:
    ids = jax.random.randint(key, (num_sampled,), 1, num_items + 1, dtype=jnp.int32)
    return ids, jnp.full((num_sampled,), math.log(num_sampled / num_items), jnp.float32)
  if log_probs.shape != (num_items,):
    raise ValueError(f"sample_negatives: log_probs has shape {log_probs.shape}, expected ({num_items},)")
  # Inverse CDF in two levels (a chunk of ~sqrt(V) items, then an item inside it): one float32 CDF over a million
  # items would have steps of ~6e-8 near 1, too coarse for items of probability ~1e-7, whose draws would then not
  # follow the Q that the correction assumes.
  k = math.isqrt(num_items - 1) + 1
  c = -(-num_items // k)
  lp = jnp.pad(log_probs.astype(jnp.float32), (0, c * k - num_items), constant_values=-jnp.inf).reshape(c, k)
  chunk = jax.nn.logsumexp(lp, axis=1)  # [C] log mass of each chunk
  chunk_cdf = jnp.cumsum(jnp.exp(chunk - jax.nn.logsumexp(chunk)))
  k1, k2 = jax.random.split(key)
  ch = jnp.clip(jnp.searchsorted(chunk_cdf, jax.random.uniform(k1, (num_sampled,)) * chunk_cdf[-1], side="right"),
                0, c - 1)
  local = jnp.cumsum(jnp.exp(lp[ch] - chunk[ch][:, None]), axis=1)  # [N, K] CDF inside each drawn chunk
  u = jax.random.uniform(k2, (num_sampled,)) * local[:, -1]
  pos = jnp.clip(jax.vmap(lambda row, x: jnp.searchsorted(row, x, side="right"))(local, u), 0, k - 1)
  ids = (ch * k + pos + 1).astype(jnp.int32)
  return ids, math.log(num_sampled) + log_probs[ids - 1].astype(jnp.float32)


def sampled_softmax_loss(query: jax.Array, table: jax.Array, target: jax.Array, sampled: jax.Array,
                         log_expected_sampled: jax.Array, log_expected_target: jax.Array) -> jax.Array:
  """Sampled softmax cross-entropy per example, float32 ``[B]``, with log-Q correction.

  Logits: the target's ``s_t - log E_t`` and, for each of the ``N`` negatives shared by the batch, ``s_j - log E_j``
  (``E`` = expected draws of that id, ``sample_negatives``); a draw that equals the row's target is masked out
  (the target is never its own negative). With every item drawn exactly once (``sampled = 1..V``, ``log E = 0``)
  this is the full softmax over all items.

  Args:
    query: ``[B, D]`` (``ModelOutput.query``); table: ``[V + 1, D]`` item table, row 0 = padding.
    target: int ``[B]``; sampled: int ``[N]``; log_expected_sampled: ``[N]``; log_expected_target: ``[B]`` or scalar.
  """
  if query.ndim != 2 or table.ndim != 2 or query.shape[1] != table.shape[1]:
    raise ValueError(f"sampled_softmax_loss: query [B, D] and table [V + 1, D] expected, got {query.shape}, "
                     f"{table.shape}")
  if sampled.ndim != 1 or log_expected_sampled.shape != sampled.shape:
    raise ValueError(f"sampled_softmax_loss: sampled [N] and log_expected_sampled [N] expected, got {sampled.shape}, "
                     f"{log_expected_sampled.shape}")
  target = target.astype(jnp.int32)
  pos = jnp.einsum("bd,bd->b", query, table[target].astype(query.dtype),
                   preferred_element_type=jnp.float32) - log_expected_target  # [B]; the rule of heads.item_scores
  neg = item_scores(query, table[sampled]) - log_expected_sampled[None, :]  # [B, N]
  neg = jnp.where(sampled[None, :] == target[:, None], -jnp.inf, neg)
  logits = jnp.concatenate([pos[:, None], neg], axis=1)
  return jax.nn.logsumexp(logits, axis=1) - pos


def in_batch_softmax_loss(query: jax.Array, table: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example, float32 ``[B]``, over the batch's targets as candidates (in-batch negatives).

  Column j scores row j's target ``t_j`` and is corrected by ``-log(c_j / n)``, ``c_j`` = how often ``t_j`` is the
  target of a real row, ``n`` = real rows (log-Q by in-batch frequency). Row i masks every other column whose item
  equals its own target (never its own negative) and the columns of padding rows (weight 0).
  """
  if query.ndim != 2 or table.ndim != 2:
    raise ValueError(f"in_batch_softmax_loss: query [B, D] and table [V + 1, D] expected, got {query.shape}, "
                     f"{table.shape}")
  target = target.astype(jnp.int32)
  real = weight > 0
  s = item_scores(query, table[target])  # [B, B]
  same = target[:, None] == target[None, :]
  counts = jnp.maximum(jnp.sum(same & real[:, None], axis=0), 1).astype(jnp.float32)  # c_j
  n = jnp.maximum(jnp.sum(real), 1).astype(jnp.float32)
  s = s - jnp.log(counts / n)[None, :]
  eye = jnp.eye(target.shape[0], dtype=bool)
  s = jnp.where(~eye & (same | ~real[None, :]), -jnp.inf, s)
  return jax.nn.logsumexp(s, axis=1) - jnp.diagonal(s)


def make_next_loss(cfg: TrainConfig, item_counts: np.ndarray | None = None
                   ) -> Callable[[jax.Array, jax.Array, dict[str, jax.Array], jax.Array], jax.Array] | None:
  """The per-example next-item loss that ``cfg.next_loss`` asks for, or None for ``full`` (softmax on the logits).

  The returned ``loss(query, table, batch, step)`` draws the step's negatives from ``negatives_seed`` folded with the
  optimizer step (so a resumed run draws the same ones). ``item_counts`` (training-target count of items
  1..num_items) is needed for ``sampled_proposal='popularity'``.
  """
  if cfg.next_loss not in NEXT_LOSSES:
    raise ValueError(f"config.train.next_loss: expected one of {NEXT_LOSSES}, got {cfg.next_loss!r}")
  if cfg.next_loss == "full":
    return None
  if cfg.next_loss == "in_batch":
    return lambda query, table, batch, step: in_batch_softmax_loss(query, table, batch["target_item"], batch["weight"])
  if cfg.sampled_proposal not in PROPOSALS:
    raise ValueError(f"config.train.sampled_proposal: expected one of {PROPOSALS}, got {cfg.sampled_proposal!r}")
  if cfg.num_sampled < 1:
    raise ValueError(f"config.train.num_sampled must be >= 1, got {cfg.num_sampled}")
  popularity = cfg.sampled_proposal == "popularity"
  log_probs = popularity_log_probs(item_counts, cfg.sampled_alpha) if popularity and item_counts is not None else None

  def loss(query, table, batch, step):
    num_items = table.shape[0] - 1
    if popularity and log_probs is None:  # raised when a step is traced, so prediction-only users need no counts
      raise ValueError("config.train.sampled_proposal='popularity' needs the training item counts (item_counts)")
    if log_probs is not None and log_probs.shape[0] != num_items:
      raise ValueError(f"item_counts cover {log_probs.shape[0]} items, the item table {num_items}")
    key = jax.random.fold_in(jax.random.key(cfg.negatives_seed), step)
    lp = None if log_probs is None else jnp.asarray(log_probs)
    ids, log_e = sample_negatives(key, cfg.num_sampled, num_items, lp)
    target = batch["target_item"].astype(jnp.int32)
    log_e_target = (jnp.float32(math.log(cfg.num_sampled / num_items)) if lp is None
                    else math.log(cfg.num_sampled) + lp[jnp.clip(target, 1, num_items) - 1])
    return sampled_softmax_loss(query, table, target, ids, log_e, log_e_target)

  return loss
