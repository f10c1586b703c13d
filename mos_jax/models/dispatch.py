"""Dispatch of sessions into theme buffers, two ways behind one interface (docs/model.md).

    dispatch(x[B,S,...], mask[B,S,...], plan, *, num_themes, capacity, weights[B,S,k], method)
      -> (buffers[B,K,C,...] = weight * x of the session in each slot (0 for empty slots), buffer_mask[B,K,C,...])

"einsum": one-hot dispatch tensor [B,S,K,C] contracted with x (MaxText / V-MoE style; dense, matmul-friendly).
"gather": the session index of each slot [B,K,C] is scattered from the plan, then x is gathered (memory O(B·K·C)).
Both compute weight * x in float32 with exactly one non-zero term per slot, so their outputs are bit-identical and
their gradients agree (each session's gradient sums the same k terms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mos_jax.models.routing import RoutingPlan


def slot_sessions(plan: RoutingPlan, *, num_themes: int, capacity: int) -> jax.Array:
  """int32 [B,K,C]: the session feeding each slot, −1 for an empty slot."""
  b, s, k = plan.expert.shape
  rows = jnp.broadcast_to(jnp.arange(b)[:, None, None], (b, s, k))
  sessions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32)[None, :, None], (b, s, k))
  slot = jnp.where(plan.keep, plan.slot, capacity)  # out of range -> dropped by mode="drop"
  out = jnp.full((b, num_themes, capacity), -1, jnp.int32)
  return out.at[rows, plan.expert, slot].set(sessions, mode="drop")


def slot_weights(plan: RoutingPlan, weights: jax.Array, *, num_themes: int, capacity: int) -> jax.Array:
  """float32 [B,K,C]: the weight of the session in each slot (0 for empty slots); differentiable in weights."""
  b, s, k = plan.expert.shape
  rows = jnp.broadcast_to(jnp.arange(b)[:, None, None], (b, s, k))
  slot = jnp.where(plan.keep, plan.slot, capacity)
  out = jnp.zeros((b, num_themes, capacity), jnp.float32)
  return out.at[rows, plan.expert, slot].add(weights.astype(jnp.float32), mode="drop")


def _einsum(x, mask, plan, weights, num_themes, capacity):
  e = jax.nn.one_hot(plan.expert, num_themes, dtype=jnp.float32)  # [B,S,k,K]
  c = jax.nn.one_hot(plan.slot, capacity, dtype=jnp.float32)  # [B,S,k,C]
  keep = plan.keep.astype(jnp.float32)
  # HIGHEST everywhere: a one-hot dispatch must copy exactly; default precision rounds float32 operands (bf16 passes
  # on TPU, TF32 on GPU), which would perturb the gate weights and the session embeddings.
  hi = jax.lax.Precision.HIGHEST
  d = jnp.einsum("bsje,bsjc,bsj->bsec", e, c, keep, precision=hi)  # [B,S,K,C] 0/1 dispatch
  dw = d if weights is None else jnp.einsum("bsje,bsjc,bsj->bsec", e, c, keep * weights.astype(jnp.float32),
                                            precision=hi)  # weighted
  # buffers[B,K,C,...] = sum_s dw[b,s,k,c] * x[b,s,...]; exactly one non-zero term per slot.
  buf = jnp.einsum("bskc,bs...->bkc...", dw, x.astype(jnp.float32), precision=hi)
  bmask = jnp.einsum("bskc,bs...->bkc...", d, mask.astype(jnp.float32), precision=hi)
  return buf.astype(x.dtype), bmask > 0.5


def _gather(x, mask, plan, weights, num_themes, capacity):
  idx = slot_sessions(plan, num_themes=num_themes, capacity=capacity)  # [B,K,C]
  take = jax.vmap(lambda xb, ib: xb[jnp.maximum(ib, 0)])  # per row: [S,...] by [K,C] -> [K,C,...]
  full = idx >= 0
  w = (full.astype(jnp.float32) if weights is None
       else slot_weights(plan, weights, num_themes=num_themes, capacity=capacity))  # [B,K,C]
  expand = lambda a, like: a.reshape(a.shape + (1,) * (like.ndim - 2))  # [B,K,C] -> [B,K,C,1,...]  # noqa: E731
  buf = take(x, idx).astype(jnp.float32) * expand(w, x)
  bmask = take(mask, idx) & expand(full, mask)
  return buf.astype(x.dtype), bmask


_METHODS = {"einsum": _einsum, "gather": _gather}


def dispatch(x: jax.Array, mask: jax.Array, plan: RoutingPlan, *, num_themes: int, capacity: int,
             weights: jax.Array | None = None, method: str = "einsum") -> tuple[jax.Array, jax.Array]:
  """See the module docstring. ``weights`` None: plain dispatch (weight 1, and no weighted einsum to compute)."""
  if method not in _METHODS:
    raise ValueError(f"ModelConfig.dispatch={method!r}: expected one of {tuple(_METHODS)}")
  return _METHODS[method](x, mask.astype(bool), plan, weights, num_themes, capacity)
