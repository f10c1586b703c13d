"""Mamba4Rec host (Liu et al., RelKD@KDD'24): Mamba blocks with Mamba4Rec's LayerNorm / FFN wrapping.

    x -> Dropout -> LayerNorm(eps 1e-12) -> num_layers x [h = Mamba(x); h = LN(drop(h) (+ x if num_layers > 1));
                                                          h = LN(h + drop(W2 drop(GELU(W1 h))))]  (inner 4D)
    -> output at the most recent valid position -> Linear(D -> H) (identity when H == D)

Mamba block (mamba_ssm ``Mamba``): ``in_proj D->2E`` (x | z), depthwise causal conv (kernel ``d_conv``, bias) + SiLU,
``x_proj E->R+2Nst``, ``dt_proj R->E`` (softplus), selective scan (selective_scan.py), ``* SiLU(z)``, ``out_proj E->D``;
``E = expand*D``, ``R = ceil(D/16)``. Init ``mamba4rec`` (default): every Linear N(0, 0.02) with zero biases (dt bias
too, so the initial delta = softplus(0)); ``mamba_ssm``: the Mamba block's own init (uniform Linear weights, dt bias
= inverse softplus of dt ~ logU[1e-3, 1e-1]). Both keep ``A_log = log(1..Nst)``, ``D = 1`` and the conv's
U(+-1/sqrt(d_conv)) init.

Padding: the conv window and the recurrence would leak padding, so each row is first compacted (stable argsort of
the mask: padding first, valid items right-aligned in their order); the conv input and the scan input u are zeroed
on padding, so the state is exactly 0 until the first valid item, as in the unpadded run. An empty row gives 0.
Target-free: ``target`` is ignored (works in next-item mode).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.config import ModelConfig
from mos_jax.models.encoders.attention import remat_block
from mos_jax.models.encoders.base import Encoder, register_encoder
from mos_jax.models.encoders.selective_scan import selective_scan
from mos_jax.models.host_configs import Mamba4RecConfig


def compact(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Right-aligns the valid positions of each row, keeping their order: x[N,L,D], mask[N,L] -> same shapes."""
  order = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True)
  return jnp.take_along_axis(x, order[..., None], axis=1), jnp.take_along_axis(mask, order, axis=1)


def _uniform(bound: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class MambaBlock(nnx.Module):
  """(x[N,L,D], mask[N,L]) -> [N,L,D]; mask marks valid positions, all of them after every padding position."""

  def __init__(self, d: int, c: Mamba4RecConfig, *, dtype, rngs: nnx.Rngs):
    e, r, nst, k = c.expand * d, math.ceil(d / 16), c.d_state, c.d_conv
    self.dtype, self.dt_rank, self.d_state, self.d_conv, self.scan_impl = dtype, r, nst, k, c.scan_impl
    self.scan_chunk = c.scan_chunk
    if c.init == "mamba4rec":
      lin = dict(kernel_init=nnx.initializers.normal(0.02), bias_init=nnx.initializers.zeros_init())
      dt_kernel, dt_bias = lin["kernel_init"], nnx.initializers.zeros_init()
    else:  # torch nn.Linear default U(+-1/sqrt(fan_in)); dt_proj as mamba_ssm
      lin = {}
      dt_kernel = _uniform(r**-0.5)

      def dt_bias(key, shape, dtype=jnp.float32):
        dt = jnp.exp(jax.random.uniform(key, shape, dtype, math.log(1e-3), math.log(1e-1)))
        dt = jnp.maximum(dt, 1e-4)
        return dt + jnp.log(-jnp.expm1(-dt))  # inverse softplus

    def linear(a, b, bias, **kw):  # explicit initialisers (dt_proj), else the mode's Linear init
      init = kw or lin or dict(kernel_init=_uniform(a**-0.5))
      return nnx.Linear(a, b, use_bias=bias, dtype=dtype, rngs=rngs, **init)

    self.in_proj = linear(d, 2 * e, False)
    self.conv_w = nnx.Param(_uniform(k**-0.5)(rngs.params(), (k, e)))  # [K,E]: torch weight[e,0,k] transposed
    self.conv_b = nnx.Param(_uniform(k**-0.5)(rngs.params(), (e,)))
    self.x_proj = linear(e, r + 2 * nst, False)
    self.dt_proj = linear(r, e, True, kernel_init=dt_kernel, bias_init=dt_bias)
    self.A_log = nnx.Param(jnp.log(jnp.broadcast_to(jnp.arange(1, nst + 1, dtype=jnp.float32), (e, nst))))
    self.D = nnx.Param(jnp.ones((e,), jnp.float32))
    self.out_proj = linear(e, d, False)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask[..., None]
    xs, z = jnp.split(self.in_proj(x), 2, axis=-1)
    xs = jnp.where(m, xs, 0)
    # Depthwise causal conv as K shifted multiply-adds (cross-correlation, left padding K-1, as torch Conv1d).
    w, l = self.conv_w[...].astype(xs.dtype), xs.shape[1]
    padded = jnp.pad(xs, ((0, 0), (self.d_conv - 1, 0), (0, 0)))
    conv = sum(padded[:, j:j + l] * w[j] for j in range(self.d_conv)) + self.conv_b[...].astype(xs.dtype)
    u = jnp.where(m, jax.nn.silu(conv), 0)
    dbc = self.x_proj(u)
    dt, b, c = jnp.split(dbc, [self.dt_rank, self.dt_rank + self.d_state], axis=-1)
    delta = jax.nn.softplus(self.dt_proj(dt).astype(jnp.float32))
    y = selective_scan(u, delta, -jnp.exp(self.A_log[...]), b, c, self.D[...], impl=self.scan_impl,
                       chunk=self.scan_chunk)
    return self.out_proj(y.astype(self.dtype) * jax.nn.silu(z))


class _MambaLayer(nnx.Module):
  def __init__(self, d: int, c: Mamba4RecConfig, num_layers: int, dropout: float, *, dtype, rngs: nnx.Rngs):
    init = dict(kernel_init=nnx.initializers.normal(0.02), bias_init=nnx.initializers.zeros_init()) \
      if c.init == "mamba4rec" else {}
    self.residual = num_layers > 1  # Mamba4Rec: no residual around a single Mamba block
    self.mamba = MambaBlock(d, c, dtype=dtype, rngs=rngs)
    self.norm = nnx.LayerNorm(d, epsilon=1e-12, dtype=dtype, rngs=rngs)
    self.ff1 = nnx.Linear(d, 4 * d, dtype=dtype, rngs=rngs, **init)
    self.ff2 = nnx.Linear(4 * d, d, dtype=dtype, rngs=rngs, **init)
    self.ff_norm = nnx.LayerNorm(d, epsilon=1e-12, dtype=dtype, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool) -> jax.Array:
    h = self.drop(self.mamba(x, mask), deterministic=deterministic)
    h = self.norm(h + x if self.residual else h)
    f = self.ff2(self.drop(jax.nn.gelu(self.ff1(h), approximate=False), deterministic=deterministic))
    return self.ff_norm(h + self.drop(f, deterministic=deterministic))


@register_encoder("mamba4rec")
class Mamba4Rec(Encoder):
  """(x[N,L,D], mask[N,L], target ignored) -> h[N,H]."""

  def __init__(self, cfg: ModelConfig, *, max_len: int, rngs: nnx.Rngs):
    del max_len  # no positions
    d, dt = cfg.embed_dim, cfg.compute_dtype
    self.out_dim = cfg.hidden_dim
    self.dtype = dt
    self.remat = cfg.remat
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)
    self.norm = nnx.LayerNorm(d, epsilon=1e-12, dtype=dt, rngs=rngs)
    self.layers = nnx.List([_MambaLayer(d, cfg.mamba4rec, cfg.num_layers, cfg.dropout, dtype=dt, rngs=rngs)
                            for _ in range(cfg.num_layers)])
    init = dict(kernel_init=nnx.initializers.normal(0.02), bias_init=nnx.initializers.zeros_init()) \
      if cfg.mamba4rec.init == "mamba4rec" else {}
    self.out = nnx.Linear(d, cfg.hidden_dim, dtype=dt, rngs=rngs, **init) if cfg.hidden_dim != d else None

  def __call__(self, x: jax.Array, mask: jax.Array, target: jax.Array | None = None, *,
               deterministic: bool) -> jax.Array:
    del target
    x, mask = compact(x.astype(self.dtype), mask.astype(bool))
    h = self.norm(self.drop(jnp.where(mask[..., None], x, 0), deterministic=deterministic))
    for layer in self.layers:
      h = remat_block(layer, self.remat, h, mask, deterministic=deterministic)
    h = jnp.where(mask[:, -1:], h[:, -1], 0)  # the most recent valid item sits at L-1 after compaction
    return h if self.out is None else self.out(h)
