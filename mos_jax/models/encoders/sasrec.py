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


def last_index(mask: jax.Array) -> jax.Array:
  """mask[N,L] -> int32[N]: the last valid position of each row (0 for an empty row)."""
  return jnp.max(jnp.where(mask, jnp.arange(mask.shape[1]), 0), axis=1)


def take_rows(h: jax.Array, index: jax.Array) -> jax.Array:
  """h[N,L,...], index[N] -> h[n, index[n]]: [N,...]."""
  return jnp.take_along_axis(h, index.reshape(-1, *[1] * (h.ndim - 1)), axis=1)[:, 0]


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

  def __call__(self, x: jax.Array, mask: jax.Array, last: jax.Array | None = None, *,
               deterministic: bool) -> jax.Array:
    """x[N,L,D] -> [N,L,D]; with ``last`` (int[N]) only row n's position last[n] is computed: -> [N,D].

    Only the encoder's last block takes ``last``: its output is read at one position per row, and that position's
    output needs every position's keys and values but nothing else of the other positions (the queries, the
    attention rows, the projection and the feed-forward are per position), so the block computes 1/L of them.
    Dropout masks are drawn for the rows computed.
    """
    n, l, d = x.shape
    h = x if self.post_norm else self.norm1(x)
    split = lambda t, rows: t.reshape(n, rows, self.num_heads, d // self.num_heads)  # noqa: E731
    if last is None:
      q, k, v = (split(t, l) for t in jnp.split(self.qkv(h), 3, axis=-1))
      causal, x_out = True, x
    else:  # the query of one row; keys and values of all (the fused kernel's q and kv columns, sliced)
      kernel, bias = self.qkv.kernel[...], self.qkv.bias[...]
      dot = lambda a, w, b: (jnp.dot(a.astype(h.dtype), w.astype(h.dtype)) + b.astype(h.dtype))  # noqa: E731
      q = split(dot(take_rows(h, last), kernel[:, :d], bias[:d])[:, None], 1)
      k, v = (split(t, l) for t in jnp.split(dot(h, kernel[:, d:], bias[d:]), 2, axis=-1))
      # every valid key precedes the last valid query, so the causal mask adds nothing for it
      causal, x_out = False, take_rows(x, last)[:, None]
    lq = q.shape[1]
    if self.attn_drop is None:  # valid keys only (causal for full rows); float32 scores and softmax (attention.py)
      att = attend(q, k, v, mask, causal=causal, impl=self.attention).reshape(n, lq, d)
    else:  # attention dropout acts on the probabilities, so this path spells them out
      scores = jnp.einsum("nqhd,nkhd->nhqk", q, k, preferred_element_type=jnp.float32)
      scores = scores * (d // self.num_heads) ** -0.5
      allowed = mask[:, None, :] if not causal else jnp.tril(jnp.ones((l, l), bool))[None] & mask[:, None, :]
      scores = jnp.where(allowed[:, None], scores, _NEG)
      probs = self.attn_drop(jax.nn.softmax(scores, axis=-1).astype(x.dtype), deterministic=deterministic)
      att = jnp.einsum("nhqk,nkhd->nqhd", probs, v).reshape(n, lq, d)
    x = x_out + self.drop(self.proj(att), deterministic=deterministic)
    if self.post_norm:
      x = self.norm1(x)
    y = self.drop(self.ff2(self.act(self.ff1(x if self.post_norm else self.norm2(x)))), deterministic=deterministic)
    out = self.norm2(x + y) if self.post_norm else x + y
    return out if last is None else out[:, 0]


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
    last = last_index(mask)
    for block in self.blocks[:-1]:
      h = remat_block(block, self.remat, h, mask, deterministic=deterministic)
    h = remat_block(self.blocks[-1], self.remat, h, mask, last, deterministic=deterministic)  # [N,D]: last valid
    if self.norm is not None:
      h = self.norm(h)
    h = jnp.where(jnp.any(mask, axis=1)[:, None], h, 0)  # empty rows -> zeros
    return h if self.out is None else self.out(h)
