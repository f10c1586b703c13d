"""TransAct host (Xia et al., KDD'23), FuxiCTR's ``TransActTransformer`` semantics.

Early fusion: the target is concatenated to every behaviour (``d_model = 2D``; zeros in next-item mode, so the host
also runs target-free; ``transact.early_fusion=False`` keeps ``d_model = D``). A post-LN transformer without
positional encoding (torch ``TransformerEncoderLayer`` defaults: ``x = LN1(x + MHA(x)); x = LN2(x + FFN(x))``, ReLU,
eps 1e-5, biased q/k/v/out projections, bidirectional attention over the valid positions). The representation is
``[outputs at the k most recent valid positions (zeros where missing), Linear(max-pool over valid outputs)]``, then
``Linear(-> H)``. Padding never attends nor is attended, and the last-k pick counts recency among valid items, so
padding anywhere changes nothing; an empty row gives ``Linear(0)`` = the output bias. The training-time random time
window is not built (encoders do not receive ``times``). Attention and per-block remat as SASRec's (``attention.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.config import ModelConfig
from mos_jax.models.encoders.attention import attend, remat_block
from mos_jax.models.encoders.base import Encoder, register_encoder
from mos_jax.models.encoders.sasrec import recency_positions
from mos_jax.models.encoders.target_attention import NEG


class _PostLNBlock(nnx.Module):
  """x = LN1(x + drop(MHA(x))); x = LN2(x + drop(W2 drop(relu(W1 x))))."""

  def __init__(self, width: int, num_heads: int, ffn_dim: int, dropout: float, *, dtype, attention: str,
               rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.attention = attention
    self.q = nnx.Linear(width, width, dtype=dtype, rngs=rngs)
    self.k = nnx.Linear(width, width, dtype=dtype, rngs=rngs)
    self.v = nnx.Linear(width, width, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(width, width, dtype=dtype, rngs=rngs)
    self.norm1 = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.ff1 = nnx.Linear(width, ffn_dim, dtype=dtype, rngs=rngs)
    self.ff2 = nnx.Linear(ffn_dim, width, dtype=dtype, rngs=rngs)
    self.norm2 = nnx.LayerNorm(width, epsilon=1e-5, dtype=dtype, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    n, l, e = x.shape
    heads = lambda t: t.reshape(n, l, self.num_heads, e // self.num_heads)  # noqa: E731
    q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
    att = attend(q, k, v, mask, causal=False, impl=self.attention).reshape(n, l, e)  # f32 scores and softmax
    x = self.norm1(x + self.drop(self.proj(att), deterministic=deterministic))
    y = self.ff2(self.drop(jax.nn.relu(self.ff1(x)), deterministic=deterministic))
    return self.norm2(x + self.drop(y, deterministic=deterministic))


@register_encoder("transact")
class TransAct(Encoder):
  """(x[N,L,D], mask[N,L], target[N,D] | None) -> h[N,H]."""

  def __init__(self, cfg: ModelConfig, *, max_len: int, rngs: nnx.Rngs):
    del max_len  # no positions
    c, dt = cfg.transact, cfg.compute_dtype
    width = (2 if c.early_fusion else 1) * cfg.embed_dim
    if width % cfg.num_heads:
      raise ValueError(f"ModelConfig.num_heads={cfg.num_heads}: TransAct expects a divisor of its width {width}")
    self.out_dim = cfg.hidden_dim
    self.dtype = dt
    self.early_fusion, self.last_k, self.max_pool = c.early_fusion, c.last_k, c.max_pool
    self.remat = cfg.remat
    self.blocks = nnx.List([_PostLNBlock(width, cfg.num_heads, c.ffn_dim, cfg.dropout, dtype=dt,
                                         attention=cfg.attention, rngs=rngs) for _ in range(cfg.num_layers)])
    self.pool = nnx.Linear(width, width, dtype=dt, rngs=rngs) if c.max_pool else None
    self.out = nnx.Linear((c.last_k + int(c.max_pool)) * width, cfg.hidden_dim, dtype=dt, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array, target: jax.Array | None = None, *,
               deterministic: bool) -> jax.Array:
    mask = mask.astype(bool)
    n, l, d = x.shape
    h = x.astype(self.dtype)
    if self.early_fusion:
      t = jnp.zeros((n, d), self.dtype) if target is None else target.astype(self.dtype)
      h = jnp.concatenate([h, jnp.broadcast_to(t[:, None, :], h.shape)], axis=-1)
    h = jnp.where(mask[..., None], h, 0)
    for block in self.blocks:
      h = remat_block(block, self.remat, h, mask, deterministic=deterministic)
    h = jnp.where(mask[..., None], h, 0)
    feats = []
    if self.last_k:
      # One-hot pick of the k most recent valid outputs (static shapes); missing ones stay zero.
      recency = recency_positions(mask, l)
      pick = (recency[:, None, :] == jnp.arange(self.last_k)[None, :, None]) & mask[:, None, :]  # [N,k,L]
      feats.append(jnp.einsum("nkl,nle->nke", pick.astype(h.dtype), h).reshape(n, -1))
    if self.max_pool:
      pooled = jnp.max(jnp.where(mask[..., None], h, NEG), axis=1)
      feats.append(self.pool(jnp.where(jnp.any(mask, axis=1)[:, None], pooled, 0)))
    return self.out(jnp.concatenate(feats, axis=-1))
