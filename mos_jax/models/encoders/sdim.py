"""SDIM host (Cao et al., CIKM'22, "Sampling is all you need on modeling long-term user behaviors").

Long-term interest by SimHash: ``m`` hashes of ``tau`` bits each, from fixed random rotations ``R[D,m,tau]``
(``bit = r > 0``, ``bucket = sum_t bit_t 2^t``). An item collides with the target under hash j when their buckets
match; the long interest is ``mean_j sum_l collide[l,j] * x_l`` (optionally each hash's sum L2-normalised first,
``sdim.l2_norm``). Short-term interest: multi-head target attention over the ``short_seq_len`` most recent valid
items. ``h = Linear([short, long] -> H)``. Gradients reach x only through the sums (buckets are discrete).

Masking is exact (padding never collides, never attends), so padding anywhere and MoS theme subsets need no
compaction; an empty row gives ``Linear(0)`` = the output bias. CTR only: ``target=None`` raises.
``R`` is a :class:`HashRotation` variable, not an ``nnx.Param``: checkpointed with the model, never trained.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.config import ModelConfig
from mos_jax.models.encoders.base import register_encoder
from mos_jax.models.encoders.target_attention import LongShortTargetEncoder, TargetAttention


class HashRotation(nnx.Variable):
  """Fixed SimHash rotations (outside nnx.Param: no gradient, no optimizer state, no weight decay)."""


def hash_buckets(x: jax.Array, rotation: jax.Array) -> jax.Array:
  """x[..., D], rotation[D, m, tau] -> int32 bucket codes [..., m] (float32 projections; ties give bit 0)."""
  r = jnp.einsum("...d,dmt->...mt", x.astype(jnp.float32), rotation.astype(jnp.float32))
  powers = 2 ** jnp.arange(rotation.shape[-1], dtype=jnp.int32)
  return jnp.sum((r > 0).astype(jnp.int32) * powers, axis=-1)


@register_encoder("sdim")
class SDIM(LongShortTargetEncoder):
  """(x[N,L,D], mask[N,L], target[N,D]) -> h[N,H]."""

  name = "sdim"

  def __init__(self, cfg: ModelConfig, *, max_len: int, rngs: nnx.Rngs):
    del max_len
    c, d, dt = cfg.sdim, cfg.embed_dim, cfg.compute_dtype
    self.out_dim = cfg.hidden_dim
    self.dtype = dt
    self.short_seq_len = c.short_seq_len
    self.l2_norm = c.l2_norm
    self.rotation = HashRotation(jax.random.normal(rngs.params(), (d, c.num_hashes, c.hash_bits), jnp.float32))
    self.short = TargetAttention(d, c.attention_dim, c.num_heads, dtype=dt, rngs=rngs)
    self.out = nnx.Linear(2 * d, cfg.hidden_dim, dtype=dt, rngs=rngs)
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)

  def collisions(self, x: jax.Array, mask: jax.Array, target: jax.Array) -> jax.Array:
    """bool [N,L,m]: valid item l shares hash j's bucket with the target."""
    rot = self.rotation[...]
    return (hash_buckets(x, rot) == hash_buckets(target, rot)[:, None, :]) & mask[..., None]

  def long_interest(self, x: jax.Array, mask: jax.Array, target: jax.Array) -> jax.Array:
    collide = self.collisions(x, mask, target)
    per_hash = jnp.einsum("nlm,nld->nmd", collide.astype(x.dtype), x, preferred_element_type=jnp.float32)
    if self.l2_norm:
      per_hash = per_hash * jax.lax.rsqrt(jnp.maximum(jnp.sum(per_hash**2, -1, keepdims=True), 1e-12))
    return jnp.mean(per_hash, axis=1).astype(x.dtype)
