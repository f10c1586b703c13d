"""SASRec host: causal self-attention Transformer with learned positions (Kang & McAuley, 2018).

Reconstructed details (docs/model.md): pre-LayerNorm blocks; positions count *recency among valid items* (0 = most
recent) so padding anywhere in the session grid never shifts them; the sequence representation is the output at the
most recent valid position, projected to H. ``target`` is ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.config import ModelConfig
from mos_jax.models.encoders.base import Encoder, register_encoder

_NEG = -1e9  # finite "minus infinity": rows with nothing to attend to stay finite (and their gradients too)


def recency_positions(mask: jax.Array, max_len: int) -> jax.Array:
  """mask[N,L] -> int32[N,L]: number of valid positions after this one (clipped to max_len - 1)."""
  after = jnp.cumsum(mask[:, ::-1].astype(jnp.int32), axis=1)[:, ::-1] - mask.astype(jnp.int32)
  return jnp.clip(after, 0, max_len - 1)


def last_valid(h: jax.Array, mask: jax.Array) -> jax.Array:
  """h[N,L,H], mask[N,L] -> h at the last valid position [N,H] (zeros for an empty row)."""
  idx = jnp.arange(mask.shape[1])
  last = jnp.max(jnp.where(mask, idx, 0), axis=1)  # [N]
  out = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
  return jnp.where(jnp.any(mask, axis=1)[:, None], out, 0)


class _Block(nnx.Module):
  """Pre-LN block: x + MHA(LN(x)); x + FFN(LN(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, dt = cfg.embed_dim, cfg.compute_dtype
    self.num_heads = cfg.num_heads
    self.norm1 = nnx.LayerNorm(d, dtype=dt, rngs=rngs)
    self.qkv = nnx.Linear(d, 3 * d, dtype=dt, rngs=rngs)
    self.proj = nnx.Linear(d, d, dtype=dt, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d, dtype=dt, rngs=rngs)
    self.ff1 = nnx.Linear(d, cfg.ffn_multiplier * d, dtype=dt, rngs=rngs)
    self.ff2 = nnx.Linear(cfg.ffn_multiplier * d, d, dtype=dt, rngs=rngs)
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)

  def __call__(self, x: jax.Array, allowed: jax.Array, *, deterministic: bool) -> jax.Array:
    n, l, d = x.shape
    q, k, v = jnp.split(self.qkv(self.norm1(x)), 3, axis=-1)
    heads = lambda t: t.reshape(n, l, self.num_heads, d // self.num_heads)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    # scores[N, heads, Lq, Lk] in float32; softmax in float32 too.
    scores = jnp.einsum("nqhd,nkhd->nhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores * (d // self.num_heads) ** -0.5
    scores = jnp.where(allowed[:, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
    att = jnp.einsum("nhqk,nkhd->nqhd", probs, v).reshape(n, l, d)
    x = x + self.drop(self.proj(att), deterministic=deterministic)
    y = self.ff2(jax.nn.gelu(self.ff1(self.norm2(x))))
    return x + self.drop(y, deterministic=deterministic)


@register_encoder("sasrec")
class SASRec(Encoder):
  """(x[N,L,D], mask[N,L], target ignored) -> h[N,H]."""

  def __init__(self, cfg: ModelConfig, *, max_len: int, rngs: nnx.Rngs):
    d, dt = cfg.embed_dim, cfg.compute_dtype
    self.max_len = max_len
    self.out_dim = cfg.hidden_dim
    self.dtype = dt
    self.pos = nnx.Embed(max_len, d, embedding_init=nnx.initializers.normal(stddev=d**-0.5), rngs=rngs)
    self.blocks = nnx.List([_Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.norm = nnx.LayerNorm(d, dtype=dt, rngs=rngs)
    self.out = nnx.Linear(d, cfg.hidden_dim, dtype=dt, rngs=rngs)
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array, target: jax.Array | None = None, *,
               deterministic: bool) -> jax.Array:
    del target
    mask = mask.astype(bool)
    pos = self.pos(recency_positions(mask, self.max_len)).astype(self.dtype)
    h = jnp.where(mask[..., None], x.astype(self.dtype) + pos, 0)
    h = self.drop(h, deterministic=deterministic)
    l = x.shape[1]
    causal = jnp.tril(jnp.ones((l, l), bool))
    allowed = causal[None] & mask[:, None, :]  # [N, Lq, Lk]: earlier-or-same, valid keys only
    for block in self.blocks:
      h = block(h, allowed, deterministic=deterministic)
    return self.out(last_valid(self.norm(h), mask))
