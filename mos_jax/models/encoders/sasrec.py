"""SASRec host: causal self-attention Transformer with learned positions (Kang & McAuley, 2018).

Reconstructed details (docs/model.md): pre-LayerNorm blocks; positions count *recency among valid items* (0 = most
recent) so padding anywhere in the session grid never shifts them; the sequence representation is the output at the
most recent valid position, projected to H. ``target`` is ignored. Self-attention runs through ``attention.attend``
(``cfg.attention``: fused ``jax.nn.dot_product_attention`` or the einsum reference) and each block under
``cfg.remat`` (docs/model.md, "Long sequences").

``cfg.sasrec`` (SASRecConfig) switches each of these to RecBole's SASRec (post-LN blocks, input LayerNorm, positions
from the oldest kept item, exact GELU, LN eps, normal(initializer_range) init, attention dropout, no output
projection); docs/protocol.md maps every RecBole setting.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.config import ModelConfig
from mos_jax.models.encoders.attention import attend, remat_block
from mos_jax.models.encoders.base import Encoder, register_encoder

_NEG = -1e9  # finite "minus infinity": rows with nothing to attend to stay finite (and their gradients too)


def recency_positions(mask: jax.Array, max_len: int) -> jax.Array:
  """mask[N,L] -> int32[N,L]: number of valid positions after this one (clipped to max_len - 1)."""
  after = jnp.cumsum(mask[:, ::-1].astype(jnp.int32), axis=1)[:, ::-1] - mask.astype(jnp.int32)
  return jnp.clip(after, 0, max_len - 1)


def oldest_positions(mask: jax.Array, max_len: int) -> jax.Array:
  """mask[N,L] -> int32[N,L]: number of valid positions before this one (clipped to max_len - 1).

  For a left-padded row this is RecBole's ``arange(len)`` over its right-padded copy of the same items.
  """
  before = jnp.cumsum(mask.astype(jnp.int32), axis=1) - mask.astype(jnp.int32)
  return jnp.clip(before, 0, max_len - 1)


_ACTIVATIONS = {"gelu_tanh": jax.nn.gelu, "gelu": lambda x: jax.nn.gelu(x, approximate=False), "relu": jax.nn.relu}


def _linear_init(std: float) -> dict:
  """Linear kwargs: Flax's defaults when std == 0, else normal(std) kernels and zero biases (RecBole)."""
  return {} if std == 0 else {"kernel_init": nnx.initializers.normal(stddev=std),
                              "bias_init": nnx.initializers.zeros_init()}


def last_valid(h: jax.Array, mask: jax.Array) -> jax.Array:
  """h[N,L,H], mask[N,L] -> h at the last valid position [N,H] (zeros for an empty row)."""
  idx = jnp.arange(mask.shape[1])
  last = jnp.max(jnp.where(mask, idx, 0), axis=1)  # [N]
  out = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
  return jnp.where(jnp.any(mask, axis=1)[:, None], out, 0)


class _Block(nnx.Module):
  """Pre-LN block: x + MHA(LN(x)); x + FFN(LN(x)).

  Post-LN (``cfg.sasrec.norm='post'``, BERT / RecBole): LN(x + MHA(x)); LN(x + FFN(x)).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, dt, opt = cfg.embed_dim, cfg.compute_dtype, cfg.sasrec
    lin = _linear_init(opt.init_std)
    self.num_heads = cfg.num_heads
    self.attention = cfg.attention
    self.post_norm = opt.norm == "post"
    self.act = _ACTIVATIONS[opt.activation]
    self.norm1 = nnx.LayerNorm(d, epsilon=opt.layer_norm_eps, dtype=dt, rngs=rngs)
    self.qkv = nnx.Linear(d, 3 * d, dtype=dt, rngs=rngs, **lin)
    self.proj = nnx.Linear(d, d, dtype=dt, rngs=rngs, **lin)
    self.norm2 = nnx.LayerNorm(d, epsilon=opt.layer_norm_eps, dtype=dt, rngs=rngs)
    self.ff1 = nnx.Linear(d, cfg.ffn_multiplier * d, dtype=dt, rngs=rngs, **lin)
    self.ff2 = nnx.Linear(cfg.ffn_multiplier * d, d, dtype=dt, rngs=rngs, **lin)
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)
    self.attn_drop = nnx.Dropout(opt.attn_dropout, rngs=rngs) if opt.attn_dropout > 0 else None

  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    n, l, d = x.shape
    q, k, v = jnp.split(self.qkv(x if self.post_norm else self.norm1(x)), 3, axis=-1)
    heads = lambda t: t.reshape(n, l, self.num_heads, d // self.num_heads)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    if self.attn_drop is None:  # causal, valid keys only; float32 scores and softmax (attention.py)
      att = attend(q, k, v, mask, causal=True, impl=self.attention).reshape(n, l, d)
    else:  # attention dropout acts on the probabilities, so this path spells them out
      scores = jnp.einsum("nqhd,nkhd->nhqk", q, k, preferred_element_type=jnp.float32)
      scores = scores * (d // self.num_heads) ** -0.5
      allowed = jnp.tril(jnp.ones((l, l), bool))[None] & mask[:, None, :]  # [N, Lq, Lk]
      scores = jnp.where(allowed[:, None], scores, _NEG)
      probs = self.attn_drop(jax.nn.softmax(scores, axis=-1).astype(x.dtype), deterministic=deterministic)
      att = jnp.einsum("nhqk,nkhd->nqhd", probs, v).reshape(n, l, d)
    x = x + self.drop(self.proj(att), deterministic=deterministic)
    if self.post_norm:
      x = self.norm1(x)
    y = self.drop(self.ff2(self.act(self.ff1(x if self.post_norm else self.norm2(x)))), deterministic=deterministic)
    return self.norm2(x + y) if self.post_norm else x + y


@register_encoder("sasrec")
class SASRec(Encoder):
  """(x[N,L,D], mask[N,L], target ignored) -> h[N,H]."""

  def __init__(self, cfg: ModelConfig, *, max_len: int, rngs: nnx.Rngs):
    d, dt, opt = cfg.embed_dim, cfg.compute_dtype, cfg.sasrec
    if not opt.out_proj and cfg.hidden_dim != d:
      raise ValueError(f"ModelConfig.sasrec.out_proj=False needs hidden_dim == embed_dim, got {cfg.hidden_dim} "
                       f"and {d}")
    self.max_len = max_len
    self.remat = cfg.remat
    self.out_dim = cfg.hidden_dim
    self.dtype = dt
    self.oldest_first = opt.positions == "oldest"
    pos_std = opt.init_std if opt.init_std > 0 else d**-0.5
    self.pos = nnx.Embed(max_len, d, embedding_init=nnx.initializers.normal(stddev=pos_std), rngs=rngs)
    eps = opt.layer_norm_eps
    self.in_norm = nnx.LayerNorm(d, epsilon=eps, dtype=dt, rngs=rngs) if opt.input_norm else None
    self.blocks = nnx.List([_Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.norm = nnx.LayerNorm(d, epsilon=eps, dtype=dt, rngs=rngs) if opt.final_norm else None
    lin = _linear_init(opt.init_std)
    self.out = nnx.Linear(d, cfg.hidden_dim, dtype=dt, rngs=rngs, **lin) if opt.out_proj else None
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array, target: jax.Array | None = None, *,
               deterministic: bool) -> jax.Array:
    del target
    mask = mask.astype(bool)
    positions = (oldest_positions if self.oldest_first else recency_positions)(mask, self.max_len)
    h = x.astype(self.dtype) + self.pos(positions).astype(self.dtype)
    if self.in_norm is not None:
      h = self.in_norm(h)
    h = self.drop(jnp.where(mask[..., None], h, 0), deterministic=deterministic)
    for block in self.blocks:
      h = remat_block(block, self.remat, h, mask, deterministic=deterministic)
    if self.norm is not None:
      h = self.norm(h)
    h = last_valid(h, mask)
    return h if self.out is None else self.out(h)
