"""Static-shape dispatch of whole examples to expert slots, and the weighted combine back.

Two implementations of one interface, chosen by ``ModelConfig.dispatch``:

* einsum: one-hot ``[B,E,C]`` masks contracted with the inputs (dense, MXU friendly, costs 2*B*E*C*F FLOPs);
* gather: ``x[index]`` per slot and a scatter-add on the way back (no FLOPs beyond the gate multiply).

The einsums run at ``Precision.HIGHEST``: a one-hot dispatch must be an exact copy, and the default precision rounds
float32 operands to bfloat16 (TPU) or TF32 (GPU). Both give the same values and gradients (exactly for dispatch; to
float rounding for combine when an example sits in several slots, since the sum order may differ).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mos_jax.models.moe.gating import Routing

_HI = jax.lax.Precision.HIGHEST


def _cast_back(y: jax.Array, dtype: jnp.dtype) -> jax.Array:
  if dtype == jnp.bool_:
    return y > 0.5
  if jnp.issubdtype(dtype, jnp.integer):
    return jnp.round(y).astype(dtype)
  return y.astype(dtype)


def dispatch_einsum(x: jax.Array, routing: Routing) -> jax.Array:
  """[B, ...] -> [E, C, ...]; empty slots are zeros (False for masks)."""
  num_tokens = x.shape[0]
  compute = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
  flat = x.reshape(num_tokens, -1).astype(compute)  # [B,F]
  y = jnp.einsum("bec,bf->ecf", routing.dispatch.astype(compute), flat, precision=_HI)  # [E,C,F]
  return _cast_back(y, x.dtype).reshape(y.shape[:2] + x.shape[1:])


def dispatch_gather(x: jax.Array, routing: Routing) -> jax.Array:
  """[B, ...] -> [E, C, ...] by indexing; empty slots are zeros (False for masks)."""
  y = jnp.take(x, routing.index, axis=0)  # [E,C,...]
  valid = routing.slot_valid.reshape(routing.slot_valid.shape + (1,) * (x.ndim - 1))
  return jnp.where(valid, y, jnp.zeros((), x.dtype))


def combine_einsum(y: jax.Array, routing: Routing) -> jax.Array:
  """Expert outputs [E,C,H] -> float32 [B,H]: sum over slots of gate * output."""
  return jnp.einsum("bec,ech->bh", routing.combine, y.astype(jnp.float32), precision=_HI)


def combine_gather(y: jax.Array, routing: Routing) -> jax.Array:
  """Expert outputs [E,C,H] -> float32 [B,H] by a scatter-add of the gated slot outputs."""
  num_tokens, num_experts, cap = routing.combine.shape
  # Gate of each slot, read from the mask form so the router gradient flows the same way as in combine_einsum.
  comb_ecb = jnp.transpose(routing.combine, (1, 2, 0))  # [E,C,B]
  gate = jnp.take_along_axis(comb_ecb, routing.index[..., None], axis=2)[..., 0]  # [E,C]
  gate = jnp.where(routing.slot_valid, gate, 0.0)
  contrib = (gate[..., None] * y.astype(jnp.float32)).reshape(num_experts * cap, -1)  # [E*C,H]
  out = jnp.zeros((num_tokens, contrib.shape[-1]), jnp.float32)
  return out.at[routing.index.reshape(-1)].add(contrib)


DISPATCHERS = {
    "einsum": (dispatch_einsum, combine_einsum),
    "gather": (dispatch_gather, combine_gather),
}
