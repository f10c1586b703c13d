"""Item and side-feature embeddings shared by every model (MoS, plain backbone, MoE baselines)."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.config import ModelConfig


class Embedder(nnx.Module):
  """Item (+ category) tables; the item table is also the tied output layer of the next-item head.

  Embeddings of the item id and of its category are summed. Padding (id 0) embeds to exactly zero, whatever the
  table holds, so padding can never leak into a model. Outputs are in ``cfg.compute_dtype``; tables are float32.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(stddev=cfg.embed_dim**-0.5)
    self.dtype = cfg.compute_dtype
    m = cfg.embedding_rows_multiple
    rows = lambda n: -(-(n + 1) // m) * m  # noqa: E731  (padded so the rows can be split over a mesh axis)
    self.num_items = cfg.num_items
    self.item = nnx.Embed(rows(cfg.num_items), cfg.embed_dim, embedding_init=init, rngs=rngs)
    self.use_category = cfg.use_category and cfg.num_cats > 0
    self.cat = (nnx.Embed(rows(cfg.num_cats), cfg.embed_dim, embedding_init=init, rngs=rngs) if self.use_category
                else None)

  def __call__(self, items: jax.Array, cats: jax.Array | None = None) -> jax.Array:
    """``items``, ``cats``: int [...] -> float [..., D] (zero where items == 0)."""
    x = self.item(items)
    if self.use_category and cats is not None:
      x = x + self.cat(cats)
    return jnp.where((items > 0)[..., None], x, 0).astype(self.dtype)

  @property
  def item_table(self) -> jax.Array:
    """float32 [num_items + 1, D], row 0 = padding (rows added by ``embedding_rows_multiple`` left out)."""
    table = self.item.embedding[...]
    return table if table.shape[0] == self.num_items + 1 else table[: self.num_items + 1]

  def embed_batch(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batch dict -> (x[B,S,T,D], mask bool[B,S,T], target[B,D]) with the keys of docs/interfaces.md."""
    items = jnp.asarray(batch["items"])
    cats = batch.get("cats")
    x = self(items, None if cats is None else jnp.asarray(cats))
    target_cat = batch.get("target_cat")
    target = self(jnp.asarray(batch["target_item"]), None if target_cat is None else jnp.asarray(target_cat))
    return x, items > 0, target
