"""Task heads shared by every model: CTR logit and next-item scores tied to the item embedding table."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.config import ModelConfig

PAD_LOGIT = -1e9  # next-item column 0 (the padding id) can never be predicted


class CTRHead(nnx.Module):
  """(u[B,H], target[B,D], extra[B,F] | None) -> float32 logit [B]: MLP over [u, t, u*t(, extra)] with t = target
  projected to H; ``extra`` (``num_extra`` features, e.g. ``history_match``) joins the MLP's input."""

  def __init__(self, cfg: ModelConfig, *, in_dim: int, rngs: nnx.Rngs, num_extra: int = 0):
    dt = cfg.compute_dtype
    self.target_proj = nnx.Linear(cfg.embed_dim, in_dim, dtype=dt, rngs=rngs)
    self.hidden = nnx.Linear(3 * in_dim + num_extra, cfg.head_hidden, dtype=dt, rngs=rngs)
    self.out = nnx.Linear(cfg.head_hidden, 1, dtype=dt, rngs=rngs)
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)

  def __call__(self, u: jax.Array, target: jax.Array, *, deterministic: bool, extra: jax.Array | None = None
               ) -> jax.Array:
    t = self.target_proj(target)
    u = u.astype(t.dtype)
    parts = [u, t, u * t] + ([] if extra is None else [extra.astype(t.dtype)])
    z = jax.nn.gelu(self.hidden(jnp.concatenate(parts, axis=-1)))
    return self.out(self.drop(z, deterministic=deterministic))[:, 0].astype(jnp.float32)


def history_match(batch: Mapping[str, jax.Array]) -> jax.Array:
  """float32 [B, 2]: log(1 + occurrences in the history ``items[B,S,T]`` of the target item, of its category)."""
  items = jnp.asarray(batch["items"]).reshape(len(batch["target_item"]), -1)
  n_item = jnp.sum((items == jnp.asarray(batch["target_item"])[:, None]) & (items > 0), axis=1)
  if "cats" in batch and "target_cat" in batch:
    cats = jnp.asarray(batch["cats"]).reshape(items.shape)
    tc = jnp.asarray(batch["target_cat"])[:, None]
    n_cat = jnp.sum((cats == tc) & (tc > 0) & (items > 0), axis=1)
  else:
    n_cat = jnp.zeros_like(n_item)
  return jnp.log1p(jnp.stack([n_item, n_cat], axis=-1).astype(jnp.float32))


class CTRBias(nnx.Module):
  """float32 [B]: a learned bias of the target item plus one of its category (zero-initialised; padding ids 0)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    zeros = nnx.initializers.zeros_init()
    self.item = nnx.Embed(cfg.num_items + 1, 1, embedding_init=zeros, rngs=rngs)
    self.cat = nnx.Embed(cfg.num_cats + 1, 1, embedding_init=zeros, rngs=rngs) if cfg.num_cats > 0 else None

  def __call__(self, item: jax.Array, cat: jax.Array | None) -> jax.Array:
    b = self.item(item)[:, 0]
    if self.cat is not None and cat is not None:
      b = b + self.cat(jnp.asarray(cat))[:, 0]
    return b.astype(jnp.float32)


def item_scores(q: jax.Array, items: jax.Array) -> jax.Array:
  """(q[B,D], items[N,D]) -> float32 scores [B,N] = q . items^T (bf16 inputs when q is bf16, float32 accumulation).

  The one scoring rule of the next-item head, shared by the full logits, the sampled / in-batch losses and the
  blocked evaluation, so that every path scores an item identically.
  """
  return jnp.einsum("bd,nd->bn", q, items.astype(q.dtype), preferred_element_type=jnp.float32)


class NextItemHead(nnx.Module):
  """(u[B,H], item_table[V,D]) -> float32 scores [B,V] = proj(u) . table^T, column 0 = PAD_LOGIT."""

  def __init__(self, cfg: ModelConfig, *, in_dim: int, rngs: nnx.Rngs):
    self.proj = nnx.Linear(in_dim, cfg.embed_dim, dtype=cfg.compute_dtype, rngs=rngs)

  def query(self, u: jax.Array) -> jax.Array:
    """The query q[B,D] whose dot product with an item embedding is that item's score."""
    return self.proj(u)

  def __call__(self, u: jax.Array, item_table: jax.Array) -> jax.Array:
    return item_scores(self.query(u), item_table).at[:, 0].set(PAD_LOGIT)


class TaskHead(nnx.Module):
  """The head ``cfg.task`` asks for, behind one call: ``head(u, target, item_table, deterministic=...)``.

  ``u[B,in_dim]`` is the user representation, ``target[B,D]`` the target embedding (used in CTR mode only),
  ``item_table[V,D]`` the tied item table (used in next-item mode only). Returns the logits of docs/interfaces.md.
  """

  def __init__(self, cfg: ModelConfig, *, in_dim: int, rngs: nnx.Rngs):
    self.task = cfg.task
    self.bias = CTRBias(cfg, rngs=rngs) if cfg.task == "ctr" and cfg.ctr_bias else None
    self.history_match = cfg.task == "ctr" and cfg.history_match
    if cfg.task == "ctr":
      self.head = CTRHead(cfg, in_dim=in_dim, rngs=rngs, num_extra=2 if self.history_match else 0)
    else:
      self.head = NextItemHead(cfg, in_dim=in_dim, rngs=rngs)

  def __call__(self, u: jax.Array, target: jax.Array, item_table: jax.Array, *, deterministic: bool,
               batch: Mapping[str, jax.Array] | None = None) -> jax.Array:
    return self.forward(u, target, item_table, deterministic=deterministic, batch=batch)[0]

  def forward(self, u: jax.Array, target: jax.Array, item_table: jax.Array, *, deterministic: bool,
              batch: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, jax.Array | None]:
    """(logits, query): next-item also returns the query ``q[B,D]`` (``ModelOutput.query``), CTR None.

    A caller that uses only the query (sampled losses, blocked evaluation) leaves the ``[B,V]`` logits unused, and
    ``jax.jit`` does not compute them. ``batch`` (its target ids) is needed with ``ModelConfig.ctr_bias``.
    """
    if self.task == "ctr":
      if batch is None and (self.bias is not None or self.history_match):
        raise ValueError("ModelConfig.ctr_bias / history_match: the head needs the batch (its target and history ids)")
      extra = history_match(batch) if self.history_match else None
      logits = self.head(u, target, deterministic=deterministic, extra=extra)
      if self.bias is not None:
        logits = logits + self.bias(jnp.asarray(batch["target_item"]), batch.get("target_cat"))
      return logits, None
    q = self.head.query(u)
    return item_scores(q, item_table).at[:, 0].set(PAD_LOGIT), q
