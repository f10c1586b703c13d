"""Multi-head target attention (MHTA), the short-term branch shared by SDIM and TWIN (FuxiCTR semantics).

``q = W_q t``, ``K = W_k x``, ``V = W_v x`` (no biases), per-head softmax of ``q·K / sqrt(A/heads)`` over the allowed
positions, heads concatenated, ``W_o`` back to D. Scores and softmax run in float32; a row with no allowed position
gives exactly 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.encoders.base import Encoder
from mos_jax.models.encoders.sasrec import recency_positions

NEG = -1e9  # finite "minus infinity" (as in SASRec): empty rows and their gradients stay finite


def masked_softmax(scores: jax.Array, allowed: jax.Array, axis: int = -1) -> jax.Array:
  """float32 softmax of ``scores`` over ``allowed`` entries; an all-masked slice gives all zeros."""
  s = jnp.where(allowed, scores.astype(jnp.float32), NEG)
  p = jax.nn.softmax(s, axis=axis)
  return jnp.where(jnp.any(allowed, axis=axis, keepdims=True), p, 0.0)


class TargetAttention(nnx.Module):
  """(x[N,L,D], allowed[N,L], target[N,D]) -> [N,D]."""

  def __init__(self, embed_dim: int, attention_dim: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
    if attention_dim % num_heads:
      raise ValueError(f"attention_dim={attention_dim}: expected a multiple of num_heads={num_heads}")
    self.num_heads = num_heads
    self.q = nnx.Linear(embed_dim, attention_dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.k = nnx.Linear(embed_dim, attention_dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.v = nnx.Linear(embed_dim, attention_dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.o = nnx.Linear(attention_dim, embed_dim, use_bias=False, dtype=dtype, rngs=rngs)

  def heads(self, t: jax.Array) -> jax.Array:
    """[..., A] -> [..., heads, A/heads]."""
    return t.reshape(*t.shape[:-1], self.num_heads, t.shape[-1] // self.num_heads)

  def scores(self, x: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float32 scaled scores [N,heads,L] (unmasked) and the values [N,L,heads,A/heads]."""
    q, k, v = self.heads(self.q(target)), self.heads(self.k(x)), self.heads(self.v(x))
    s = jnp.einsum("nhd,nlhd->nhl", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    return s, v

  def __call__(self, x: jax.Array, allowed: jax.Array, target: jax.Array) -> jax.Array:
    s, v = self.scores(x, target)
    p = masked_softmax(s, allowed[:, None, :]).astype(v.dtype)
    att = jnp.einsum("nhl,nlhd->nhd", p, v)
    return self.o(att.reshape(att.shape[0], -1))


def require_target(name: str, target: jax.Array | None) -> jax.Array:
  """The CTR target, or a ValueError naming the host (target-aware hosts have no next-item variant)."""
  if target is None:
    raise ValueError(f"encoder {name!r} needs the CTR target embedding (target=None, i.e. next-item mode); "
                     f"use task='ctr' or a target-free backbone (sasrec, gru4rec, mamba4rec)")
  return target


class LongShortTargetEncoder(Encoder):
  """The shape SDIM and TWIN share: [short-term target attention over the ``short_seq_len`` most recent valid items ;
  the host's ``long_interest`` over the whole sequence] -> dropout -> Linear(2D -> H).

  Subclasses set ``name``, ``dtype``, ``short_seq_len``, ``short`` (TargetAttention), ``drop``, ``out`` and implement
  ``long_interest(x, mask, target) -> [N, D]``.
  """

  name: str

  def long_interest(self, x: jax.Array, mask: jax.Array, target: jax.Array) -> jax.Array:
    raise NotImplementedError

  def __call__(self, x: jax.Array, mask: jax.Array, target: jax.Array | None = None, *,
               deterministic: bool) -> jax.Array:
    target = require_target(self.name, target).astype(self.dtype)
    mask = mask.astype(bool)
    x = jnp.where(mask[..., None], x.astype(self.dtype), 0)
    recent = mask & (recency_positions(mask, x.shape[1]) < self.short_seq_len)
    feats = jnp.concatenate([self.short(x, recent, target), self.long_interest(x, mask, target)], axis=-1)
    return self.out(self.drop(feats, deterministic=deterministic))
