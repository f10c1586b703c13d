"""TWIN host (Chang et al., KDD'23): one target-attention relevance both selects (GSU) and weights (ESU) behaviours.

Long part: ``q = W_q t``, ``K = W_k x``, ``V = W_v x``; float32 scores ``q·K / sqrt(A/heads)`` per head, padding
at -1e9; the top ``k = min(topk, L)`` positions (static) are kept, their values gathered and weighted by a softmax
over the *same* selected scores, heads concatenated, ``W_o`` back to D. ``twin.shared_topk`` picks one set per row by
the head-summed score (the paper's single GSU set) instead of one per head (FuxiCTR). Short part: a separate
multi-head target attention over the ``short_seq_len`` most recent valid items. ``h = Linear([short, long] -> H)``.
Cross-feature bias (``Kc > 0``) is not built (its natural feature, the time gap, does not reach encoders).

Masking is exact (selected padding gets softmax weight 0), so no compaction; an empty row gives ``Linear(0)`` = the
output bias. CTR only: ``target=None`` raises.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.config import ModelConfig
from mos_jax.models.encoders.base import register_encoder
from mos_jax.models.encoders.target_attention import NEG, LongShortTargetEncoder, TargetAttention, masked_softmax


def select_topk(scores: jax.Array, mask: jax.Array, k: int, shared: bool) -> tuple[jax.Array, jax.Array]:
  """scores[N,h,L] f32, mask[N,L] -> (indices int32[N,h,k], valid bool[N,h,k]), sorted by decreasing score."""
  s = jnp.where(mask[:, None, :], scores, NEG)
  if shared:
    _, idx = jax.lax.top_k(jnp.sum(s, axis=1), k)  # [N,k]: padding sums to ~ -h*1e9, after every valid item
    idx = jnp.broadcast_to(idx[:, None, :], s.shape[:2] + (k,))
  else:
    _, idx = jax.lax.top_k(s, k)
  valid = jnp.take_along_axis(jnp.broadcast_to(mask[:, None, :], s.shape), idx, axis=-1)
  return idx, valid


@register_encoder("twin")
class TWIN(LongShortTargetEncoder):
  """(x[N,L,D], mask[N,L], target[N,D]) -> h[N,H]."""

  name = "twin"

  def __init__(self, cfg: ModelConfig, *, max_len: int, rngs: nnx.Rngs):
    del max_len
    c, d, dt = cfg.twin, cfg.embed_dim, cfg.compute_dtype
    self.out_dim = cfg.hidden_dim
    self.dtype = dt
    self.topk, self.shared_topk, self.short_seq_len = c.topk, c.shared_topk, c.short_seq_len
    self.long = TargetAttention(d, c.attention_dim, c.num_heads, dtype=dt, rngs=rngs)
    self.short = TargetAttention(d, c.attention_dim, c.num_heads, dtype=dt, rngs=rngs)
    self.out = nnx.Linear(2 * d, cfg.hidden_dim, dtype=dt, rngs=rngs)
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)

  def long_interest(self, x: jax.Array, mask: jax.Array, target: jax.Array) -> jax.Array:
    k = min(self.topk, x.shape[1])
    scores, v = self.long.scores(x, target)  # [N,h,L] f32, [N,L,h,dh]
    idx, valid = select_topk(scores, mask, k, self.shared_topk)
    top_scores = jnp.take_along_axis(scores, idx, axis=-1)
    p = masked_softmax(top_scores, valid).astype(v.dtype)  # [N,h,k]
    v_top = jnp.take_along_axis(jnp.swapaxes(v, 1, 2), idx[..., None], axis=2)  # [N,h,k,dh]
    att = jnp.einsum("nhk,nhkd->nhd", p, v_top)
    return self.long.o(att.reshape(att.shape[0], -1))
