"""Theme router of MoS (docs/model.md): session summaries -> float32 logits over K themes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.config import ModelConfig

NEG = -1e9  # logit of padding sessions: finite so softmax and its gradient stay finite


def session_summary(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Masked mean over T: x[B,S,T,D], mask[B,S,T] -> float32 [B,S,D] (zeros for padding sessions)."""
  m = mask.astype(jnp.float32)[..., None]
  return jnp.sum(x.astype(jnp.float32) * m, axis=2) / jnp.maximum(jnp.sum(m, axis=2), 1.0)


def last_item(x: jax.Array, mask: jax.Array) -> jax.Array:
  """The session's most recent valid item: x[B,S,T,D], mask[B,S,T] -> float32 [B,S,D] (zeros for padding)."""
  t = jnp.arange(mask.shape[-1])
  last = jnp.max(jnp.where(mask, t, 0), axis=-1)  # [B,S]
  out = jnp.take_along_axis(x.astype(jnp.float32), last[..., None, None], axis=2)[:, :, 0]
  return jnp.where(jnp.any(mask, axis=-1)[..., None], out, 0.0)


class Router(nnx.Module):
  """summaries[B,S,D], session_mask[B,S] -> logits f32[B,S,K] (padding sessions = NEG).

  ``linear``: a dense layer; ``prototype``: cosine similarity to K learned theme prototypes times a logit scale,
  exp(``log_scale``), learned from 1 / temperature (``cfg.router_learn_temperature``), else fixed 1 / temperature.
  ``router_mlp`` adds a residual GELU layer on the summaries first. Runs in float32 (routing decisions are discrete:
  bfloat16 rounding would flip them). ``summarize`` turns a session grid into the summaries (``cfg.router_input``).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, k = cfg.embed_dim, cfg.num_themes
    self.kind = cfg.router
    self.temperature = cfg.router_temperature
    self.input = cfg.router_input
    # attention pooling: one learned query scores the items of a session
    self.pool_query = nnx.Param(jnp.zeros((d,), jnp.float32)) if cfg.router_input == "attention" else None
    self.mlp = nnx.Linear(d, d, rngs=rngs) if cfg.router_mlp else None
    if cfg.router == "linear":
      self.proj = nnx.Linear(d, k, rngs=rngs)
    else:
      self.prototypes = nnx.Param(jax.random.normal(rngs.params(), (k, d), jnp.float32))
      # learned: cosines lie in [-1, 1], so a fixed temperature caps how confident the router can get
      self.log_scale = (nnx.Param(jnp.asarray(-math.log(cfg.router_temperature), jnp.float32))
                        if cfg.router_learn_temperature else None)

  def summarize(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x[B,S,T,D], mask[B,S,T] -> float32 [B,S,D]: session mean | last item | attention pooling (zeros = padding)."""
    if self.input == "mean":
      return session_summary(x, mask)
    if self.input == "last":
      return last_item(x, mask)
    xf = x.astype(jnp.float32)
    scores = jnp.where(mask, jnp.einsum("bstd,d->bst", xf, self.pool_query[...]), NEG)
    w = jnp.where(mask, jax.nn.softmax(scores, axis=-1), 0.0)  # zero query at init = the session mean
    return jnp.einsum("bst,bstd->bsd", w, xf)

  def __call__(self, summaries: jax.Array, session_mask: jax.Array) -> jax.Array:
    s = summaries.astype(jnp.float32)
    if self.mlp is not None:
      s = s + jax.nn.gelu(self.mlp(s))
    if self.kind == "linear":
      logits = self.proj(s)
    else:
      unit = lambda v: v * jax.lax.rsqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)  # noqa: E731
      # logits[B,S,K] = cos(s, prototype_k) * scale, scale = exp(log_scale) (learned) or 1 / temperature
      scale = 1.0 / self.temperature if self.log_scale is None else jnp.exp(self.log_scale[...])
      logits = jnp.einsum("bsd,kd->bsk", unit(s), unit(self.prototypes[...])) * scale
    return jnp.where(session_mask[..., None], logits, NEG)
