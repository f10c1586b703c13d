"""Routing math of the sequence-level MoE baselines, as pure functions.

One routing "token" is one example (a whole user sequence); the routing group is the batch. Every function here is
shape-static: capacities are Python ints computed from static sizes, never from data.

* ``top_k_routing``: GShard token choice (top-k per example, capacity per expert, priority by cumulative sum with all
  first choices ahead of all second choices, overflow dropped and counted).
* ``expert_choice_routing``: each expert picks its top-C examples by softmax score (Zhou et al. 2022).
* ``dselect_k_weights``: DSelect-k smooth-step binary-encoded selectors (Hazimeh et al. 2021), dense weights [B, E].

``Routing`` carries both a mask form (``dispatch``/``combine`` [B,E,C]) and an index form (``index``/``slot_valid``
[E,C]) so the einsum and the gather dispatchers in ``dispatch.py`` read the same decision.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mos_jax.models import routing

_F32 = jnp.float32


class Routing(NamedTuple):
  """One routing decision for a group of B examples over E experts with C slots each."""

  dispatch: jax.Array  # float32 [B,E,C]: 1 where example b sits in slot c of expert e
  combine: jax.Array  # float32 [B,E,C]: gate weight of that assignment (0 elsewhere); carries router gradients
  index: jax.Array  # int32 [E,C]: example in each slot (0 for empty slots)
  slot_valid: jax.Array  # bool [E,C]: slot holds an example
  metrics: dict[str, jax.Array]  # balance_loss, z_loss, dropped_fraction, expert_count [E], expert_usage [E], ...


def capacity(num_tokens: int, num_experts: int, capacity_factor: float, k: int = 1) -> int:
  """Slots per expert: ``ceil(cf * k * B / E)``, clipped to [1, B] (an expert never holds an example twice)."""
  if num_tokens < 1 or num_experts < 1 or k < 1 or capacity_factor <= 0:
    raise ValueError(
        f"capacity: expected num_tokens, num_experts, k >= 1 and capacity_factor > 0, got "
        f"num_tokens={num_tokens}, num_experts={num_experts}, k={k}, capacity_factor={capacity_factor}"
    )
  return routing.capacity(num_tokens, num_experts, k, capacity_factor)  # MoS's rule, tokens = examples


def expert_choice_eval_k(capacity_factor: float, num_experts: int) -> int:
  """Experts per example of Expert Choice at evaluation: the training average E * C / B ~ cf, rounded, in [1, E]."""
  return max(1, min(num_experts, round(capacity_factor)))


def router_z_loss(logits: jax.Array, valid: jax.Array, axis_name: str | None = None) -> jax.Array:
  """ST-MoE z-loss: mean over valid examples of logsumexp(logits)^2; the same rule as MoS's session router."""
  return routing.z_loss(logits, valid, axis_name)


def load_balance_loss(probs: jax.Array, top1: jax.Array, valid: jax.Array, axis_name: str | None = None
                      ) -> jax.Array:
  """Switch/GShard balance loss ``E * sum_e f_e * P_e`` (1 when uniform).

  ``f_e``: fraction of valid examples whose first choice is e (before capacity); ``P_e``: their mean probability.
  """
  # MoS's session balance loss with one routing group of B tokens: probs[1,B,E], first choice [1,B,1], valid [1,B].
  return routing.balance_loss(probs[None], jnp.argmax(top1, axis=-1)[None, :, None], valid[None], axis_name)


def _index_from_dispatch(dispatch: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Index form of a 0/1 dispatch mask [B,E,C] (at most one example per slot)."""
  index = jnp.argmax(dispatch, axis=0).astype(jnp.int32)  # [E,C]
  slot_valid = jnp.sum(dispatch, axis=0) > 0
  return jnp.where(slot_valid, index, 0), slot_valid


def _usage_metrics(dispatch: jax.Array, num_slots_total: int) -> dict[str, jax.Array]:
  count = jnp.sum(dispatch, axis=(0, 2))  # [E] examples held by each expert
  total = jnp.sum(count)
  return {
      "expert_count": count,
      "expert_usage": count / jnp.maximum(total, 1.0),  # distribution of kept assignments over experts
      "capacity_utilization": total / num_slots_total,
  }


def top_k_routing(
    logits: jax.Array, valid: jax.Array, *, k: int, capacity: int, normalize_gates: bool = True,
    axis_name: str | None = None) -> Routing:
  """GShard token-choice routing of B examples to E experts (``logits`` [B,E], ``valid`` bool [B]).

  Priority: every example's first choice (in batch order) before any second choice, i.e. one cumulative sum over the
  [k*B] assignments in (choice, example) order. An assignment whose slot is >= ``capacity`` is dropped. Invalid rows
  (padding rows of an evaluation batch) are never routed. With ``normalize_gates`` the k gates of an example sum to 1
  (GShard); the gate of a dropped assignment is simply lost, as in GShard. ``axis_name`` (pmap): the balance and
  z-losses are the global batch's statistics; capacity stays per device (each device's batch is a routing group).
  """
  num_tokens, num_experts = logits.shape
  if not 1 <= k <= num_experts:
    raise ValueError(f"top_k_routing: expected 1 <= k <= num_experts={num_experts}, got k={k}")
  logits = logits.astype(_F32)
  v = valid.astype(_F32)
  probs = jax.nn.softmax(logits, axis=-1)  # [B,E] float32
  gates, experts = jax.lax.top_k(probs, k)  # [B,k]; ties go to the lower expert index
  if normalize_gates and k > 1:
    gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
  choice = jax.nn.one_hot(experts, num_experts, dtype=_F32) * v[:, None, None]  # [B,k,E]
  # Priority order (k, b): flatten choice-major so first choices come first, then count per expert.
  choice_kb = jnp.swapaxes(choice, 0, 1).reshape(k * num_tokens, num_experts)  # [k*B,E]
  slot_kb = jnp.cumsum(choice_kb, axis=0) - choice_kb  # [k*B,E] assignments ahead in this expert's queue
  keep_kb = choice_kb * (slot_kb < capacity)
  keep = jnp.swapaxes(keep_kb.reshape(k, num_tokens, num_experts), 0, 1)  # [B,k,E]
  slot = jnp.swapaxes(slot_kb.reshape(k, num_tokens, num_experts), 0, 1).astype(jnp.int32)  # [B,k,E]
  slot_onehot = jax.nn.one_hot(slot, capacity, dtype=_F32)  # [B,k,E,C]; zero row when slot >= C
  # The k experts of an example are distinct, so summing over k never stacks two assignments in one (b, e).
  hi = jax.lax.Precision.HIGHEST  # one-hot products: exact 0/1 masks and unrounded gates on every backend
  dispatch = jnp.einsum("bke,bkec->bec", keep, slot_onehot, precision=hi)  # [B,E,C]
  combine = jnp.einsum("bk,bke,bkec->bec", gates, keep, slot_onehot, precision=hi)  # [B,E,C]
  index, slot_valid = _index_from_dispatch(dispatch)
  num_assign = k * jnp.sum(v)
  metrics = {
      "balance_loss": load_balance_loss(probs, choice[:, 0, :], valid, axis_name),
      "z_loss": router_z_loss(logits, valid, axis_name),
      "router_entropy": routing.mean_entropy(probs, valid),
      "dropped_fraction": 1.0 - jnp.sum(keep) / jnp.maximum(num_assign, 1.0),
      **_usage_metrics(dispatch, num_experts * capacity),
  }
  return Routing(dispatch, combine, index, slot_valid, metrics)


def expert_choice_routing(logits: jax.Array, valid: jax.Array, *, capacity: int, axis_name: str | None = None
                          ) -> Routing:
  """Expert-choice routing: expert e takes the ``capacity`` valid examples with the highest ``softmax(logits)[:, e]``.

  An example may be taken by several experts or by none (then its expert output is zero: counted as dropped).
  Slots beyond the number of valid examples stay empty. Ties go to the lower example index.
  """
  num_tokens, num_experts = logits.shape
  logits = logits.astype(_F32)
  probs = jax.nn.softmax(logits, axis=-1)  # [B,E] softmax over experts, as in the Expert Choice paper
  scores = jnp.where(valid[:, None], probs, -1.0)  # invalid rows rank last
  _, index = jax.lax.top_k(scores.T, capacity)  # [E,C] example per slot, best first
  slot_valid = jnp.take(valid, index)  # [E,C]
  index = jnp.where(slot_valid, index, 0).astype(jnp.int32)
  gate = jnp.take_along_axis(probs.T, index, axis=1) * slot_valid  # [E,C] differentiable w.r.t. logits
  onehot = jax.nn.one_hot(index, num_tokens, dtype=_F32) * slot_valid[..., None]  # [E,C,B]
  dispatch = jnp.transpose(onehot, (2, 0, 1))  # [B,E,C]
  combine = dispatch * gate[None]
  taken = jnp.sum(dispatch, axis=(1, 2)) > 0  # [B]
  v = valid.astype(_F32)
  metrics = {
      "z_loss": router_z_loss(logits, valid, axis_name),
      "router_entropy": routing.mean_entropy(probs, valid),
      "dropped_fraction": jnp.sum(v * (1.0 - taken)) / jnp.maximum(jnp.sum(v), 1.0),
      "experts_per_example": jnp.sum(dispatch) / jnp.maximum(jnp.sum(v), 1.0),
      **_usage_metrics(dispatch, num_experts * capacity),
  }
  return Routing(dispatch, combine, index, slot_valid, metrics)


def smooth_step(t: jax.Array, gamma: float) -> jax.Array:
  """Cubic smooth step of DSelect-k: 0 below -gamma/2, 1 above gamma/2, C^1 in between."""
  cubic = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
  return jnp.where(t <= -gamma / 2, 0.0, jnp.where(t >= gamma / 2, 1.0, cubic))


def binary_codes(num_experts: int) -> np.ndarray:
  """float32 [E, m] with m = ceil(log2 E) (at least 1): row e is e in binary, most significant bit first."""
  m = max(1, math.ceil(math.log2(num_experts)))
  return np.array([[(e >> (m - 1 - j)) & 1 for j in range(m)] for e in range(num_experts)], np.float32)


def dselect_k_weights(
    selector_logits: jax.Array, mix_logits: jax.Array, *, num_experts: int, gamma: float,
    axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DSelect-k expert weights per example.

  Args:
    selector_logits: [B,k,m] logits of the k single-expert selectors (m = ceil(log2 E) binary bits).
    mix_logits: [B,k] logits of the softmax that mixes the k selectors.
  Returns:
    weights [B,E] (sum to 1 when E is a power of 2) and the selector regularisers: ``selector_entropy`` (mean entropy
    of each selector's output; pushing it to 0 makes each selector pick one expert) and ``unreachable_penalty`` (mean
    of 1/sum of a selector's weights; only non-zero pressure when E is not a power of 2, as in the reference code),
    both means over the global batch under ``axis_name`` (pmap).
  """
  codes = jnp.asarray(binary_codes(num_experts))  # [E,m]
  if selector_logits.shape[-1] != codes.shape[1]:
    raise ValueError(
        f"dselect_k_weights: selector_logits last axis must be ceil(log2 E)={codes.shape[1]}, "
        f"got shape {selector_logits.shape}"
    )
  s = smooth_step(selector_logits.astype(_F32), gamma)[:, :, None, :]  # [B,k,1,m]
  # Selector i puts weight prod_j (s_ij if bit j of e else 1 - s_ij) on expert e.
  per_bit = codes * s + (1.0 - codes) * (1.0 - s)  # [B,k,E,m]
  selectors = jnp.prod(per_bit, axis=-1)  # [B,k,E]
  mix = jax.nn.softmax(mix_logits.astype(_F32), axis=-1)  # [B,k]
  weights = jnp.einsum("bk,bke->be", mix, selectors)  # [B,E]
  ent = -jnp.sum(selectors * jnp.log(selectors + 1e-6), axis=-1)  # [B,k]
  reach = jnp.sum(selectors, axis=-1)  # [B,k]
  regs = {
      "selector_entropy": routing.batch_mean(jnp.sum(ent), jnp.asarray(ent.size), axis_name),
      "unreachable_penalty": routing.batch_mean(jnp.sum(1.0 / jnp.maximum(reach, 1e-6)), jnp.asarray(reach.size),
                                                axis_name) - 1.0,
  }
  return weights, regs
