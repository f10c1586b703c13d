"""GRU4Rec host: a GRU over the valid items (Hidasi et al., 2016); the last hidden state is the representation.

Padding steps keep the previous state (masked update), so padding anywhere changes nothing and an empty row gives
the zero initial state. The input projection runs on all steps at once; only the recurrent matmul is scanned.
``target`` is ignored. ``cfg.gru4rec`` drops the gate biases and switches to Xavier-uniform kernels, as RecBole's
GRU4Rec (``nn.GRU(bias=False)``, ``xavier_uniform_`` on both weight matrices); docs/protocol.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.config import ModelConfig
from mos_jax.models.encoders.base import Encoder, register_encoder


@register_encoder("gru4rec")
class GRU4Rec(Encoder):
  """(x[N,L,D], mask[N,L], target ignored) -> h[N,H] (float32 recurrence, matmuls in the compute dtype)."""

  def __init__(self, cfg: ModelConfig, *, max_len: int, rngs: nnx.Rngs):
    del max_len  # a GRU has no position table
    h, dt, opt = cfg.hidden_dim, cfg.compute_dtype, cfg.gru4rec
    self.out_dim = h
    self.dtype = dt
    # xavier_uniform over the stacked [in, 3H] kernel: the same bound as PyTorch's over weight_ih_l0 [3H, in].
    init = {"kernel_init": nnx.initializers.xavier_uniform()} if opt.init == "xavier" else {}
    # [r | z | n] input parts; the recurrent parts' bias sits inside r*(.) as in PyTorch.
    self.inp = nnx.Linear(cfg.embed_dim, 3 * h, use_bias=opt.bias, dtype=dt, rngs=rngs, **init)
    self.rec = nnx.Linear(h, 3 * h, use_bias=opt.bias, dtype=dt, rngs=rngs, **init)
    self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array, target: jax.Array | None = None, *,
               deterministic: bool) -> jax.Array:
    del target
    n, _, _ = x.shape
    hdim = self.out_dim
    xw = self.inp(self.drop(x.astype(self.dtype), deterministic=deterministic)).astype(jnp.float32)  # [N,L,3H]
    kernel = self.rec.kernel[...].astype(self.dtype)
    bias = 0.0 if self.rec.bias is None else self.rec.bias[...].astype(jnp.float32)

    def step(h, inputs):
      xt, mt = inputs  # [N,3H], [N]
      hw = jnp.dot(h.astype(self.dtype), kernel, preferred_element_type=jnp.float32) + bias
      r = jax.nn.sigmoid(xt[:, :hdim] + hw[:, :hdim])
      z = jax.nn.sigmoid(xt[:, hdim:2 * hdim] + hw[:, hdim:2 * hdim])
      cand = jnp.tanh(xt[:, 2 * hdim:] + r * hw[:, 2 * hdim:])
      new = (1 - z) * cand + z * h
      return jnp.where(mt[:, None], new, h), None

    h0 = jnp.zeros((n, hdim), jnp.float32)
    h, _ = jax.lax.scan(step, h0, (jnp.swapaxes(xw, 0, 1), jnp.swapaxes(mask.astype(bool), 0, 1)))
    return h.astype(self.dtype)
