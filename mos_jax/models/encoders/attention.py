"""Masked multi-head self-attention shared by SASRec and TransAct, and the per-block rematerialisation switch.

``attend(q, k, v, key_mask, *, causal, impl)`` on ``[N,L,heads,dh]`` goes through ``jax.nn.dot_product_attention``
(``impl`` = ``xla`` | ``cudnn``: XLA's fused kernel selection, cuDNN flash attention on GPUs) or the hand-written
``einsum`` path (kept as the reference, and needed where the probabilities themselves are used, e.g. attention
dropout). Both compute the scores with float32 accumulation, mask with a finite large negative, take the softmax in
float32 and cast the probabilities back to the compute dtype, so they agree within float rounding
(tests/test_longseq.py). A query with no allowed key gets the uniform average over all keys in both (its output is
never read: padding queries are masked later).

``remat_block(block, policy, *args, **kwargs)`` calls an NNX block under ``nnx.remat`` (``jax.checkpoint``) with one
of :data:`REMAT_POLICIES`: activations inside the block are recomputed in the backward pass instead of being stored.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

ATTENTION_IMPLS = ("xla", "cudnn", "einsum")
_NEG = -1e9  # the einsum path's finite "minus infinity" (as before: rows with nothing allowed stay finite)

# ModelConfig.remat -> jax.checkpoint policy (None: no remat). "full" saves nothing inside a block; "dots" keeps
# the outputs of weight matmuls (no batch dimensions: the projections and the FFN, O(L*D)) and recomputes the
# attention scores and probabilities (O(L^2)), the part that dominates memory at long L.
REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def attend(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, *, causal: bool,
           impl: str = "xla") -> jax.Array:
  """q [N,Lq,heads,dh], k, v [N,Lk,heads,dh], key_mask bool[N,Lk] (valid keys) -> [N,Lq,heads,dh] in v's dtype.

  Query i attends to the valid keys j (and only j <= i when ``causal``, which needs Lq = Lk), scaled by
  ``dh ** -0.5``. One query row (Lq = 1) is a matrix-vector product with nothing for cuDNN's fused kernel to tile,
  so ``cudnn`` takes XLA's path there.
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"ModelConfig.attention={impl!r}: expected one of {ATTENTION_IMPLS}")
  if impl == "cudnn" and q.shape[1] == 1:
    impl = "xla"
  mask = key_mask.astype(bool)[:, None, None, :]  # [N,1,1,Lk]
  if impl != "einsum":
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation=impl)
  l = q.shape[1]
  scores = jnp.einsum("nqhd,nkhd->nhqk", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
  if causal:
    mask = mask & jnp.tril(jnp.ones((l, l), bool))[None, None]
  probs = jax.nn.softmax(jnp.where(mask, scores, _NEG), axis=-1).astype(v.dtype)
  return jnp.einsum("nhqk,nkhd->nqhd", probs, v)


def check_remat(policy: str) -> str:
  if policy not in REMAT_POLICIES:
    raise ValueError(f"ModelConfig.remat={policy!r}: expected one of {tuple(REMAT_POLICIES)}")
  return policy


def remat_block(block: nnx.Module, policy: str, *args: Any, **kwargs: Any) -> Any:
  """``block(*args, **kwargs)``, under ``nnx.remat`` with ``REMAT_POLICIES[policy]`` unless policy is ``none``.

  Keyword arguments are static (e.g. ``deterministic``); dropout RNG counters inside the block advance as usual.
  """
  if check_remat(policy) == "none":
    return block(*args, **kwargs)
  fn = nnx.remat(lambda b, *a: b(*a, **kwargs), policy=REMAT_POLICIES[policy])
  return fn(block, *args)


__all__ = ["ATTENTION_IMPLS", "REMAT_POLICIES", "attend", "check_remat", "remat_block"]
