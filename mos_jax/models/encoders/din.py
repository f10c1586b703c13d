"""DIN host (Zhou et al., KDD'18): target attention by an activation unit, then a weighted sum of the behaviours.

The activation unit is an MLP over ``[x_l, t, x_l - t, x_l * t]`` giving one weight per position; as in DIN the
weights are not normalised (``din.use_softmax`` switches to a masked softmax). The weighted sum over the valid
positions goes through ``Linear(D -> H)``. Hidden activation ReLU (DIN's Dice needs batch statistics, which padding
would bias). CTR only: ``target=None`` raises. Masking is exact (padding weights are 0), so padding anywhere and
theme subsets need no compaction; an empty row gives ``Linear(0)`` = the output bias.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.config import ModelConfig
from mos_jax.models.encoders.base import Encoder, register_encoder
from mos_jax.models.encoders.target_attention import masked_softmax, require_target


@register_encoder("din")
class DIN(Encoder):
  """(x[N,L,D], mask[N,L], target[N,D]) -> h[N,H]."""

  def __init__(self, cfg: ModelConfig, *, max_len: int, rngs: nnx.Rngs):
    del max_len  # no positions
    d, dt, units = cfg.embed_dim, cfg.compute_dtype, cfg.din.attention_units
    self.out_dim = cfg.hidden_dim
    self.dtype = dt
    self.use_softmax = cfg.din.use_softmax
    widths = (4 * d, *units)
    self.unit = nnx.List([nnx.Linear(a, b, dtype=dt, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    self.score = nnx.Linear(widths[-1], 1, dtype=dt, rngs=rngs)
    self.out = nnx.Linear(d, cfg.hidden_dim, dtype=dt, rngs=rngs)
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)

  def weights(self, x: jax.Array, mask: jax.Array, target: jax.Array) -> jax.Array:
    """float32 attention weights [N,L]; exactly 0 on padding."""
    t = jnp.broadcast_to(target[:, None, :], x.shape)
    z = jnp.concatenate([x, t, x - t, x * t], axis=-1)
    for layer in self.unit:
      z = jax.nn.relu(layer(z))
    s = self.score(z)[..., 0].astype(jnp.float32)
    return masked_softmax(s, mask) if self.use_softmax else jnp.where(mask, s, 0.0)

  def __call__(self, x: jax.Array, mask: jax.Array, target: jax.Array | None = None, *,
               deterministic: bool) -> jax.Array:
    target = require_target("din", target)
    mask = mask.astype(bool)
    x = jnp.where(mask[..., None], x.astype(self.dtype), 0)
    w = self.weights(x, mask, target.astype(self.dtype))
    pooled = jnp.einsum("nl,nld->nd", w.astype(self.dtype), x)
    return self.out(self.drop(pooled, deterministic=deterministic))
