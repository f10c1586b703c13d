"""MoS session routing and GShard top-k routing in PyTorch: the same decisions as ``mos_jax.models.routing`` and
``mos_jax.models.moe.gating`` (top-k with ties to the lower index, capacity, priority, drop policy, chronological
slots, gate scaling, balance, z- and mutual-information losses, one-hot dispatch/combine).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class RoutingPlan(NamedTuple):
  """[B,S,k] each, as ``mos_jax.models.routing.RoutingPlan``: expert, gate, valid, keep, chronological slot."""

  expert: torch.Tensor
  gate: torch.Tensor
  valid: torch.Tensor
  keep: torch.Tensor
  slot: torch.Tensor


def capacity(num_sessions: int, num_themes: int, top_k: int, capacity_factor: float, multiple: int = 1) -> int:
  """C = ceil(cf * k * S / K), rounded up to ``multiple``, never above S rounded up."""
  c = math.ceil(capacity_factor * top_k * num_sessions / num_themes - 1e-9)
  round_up = lambda n: -(-n // multiple) * multiple  # noqa: E731
  return max(1, min(round_up(c), round_up(num_sessions)))


def top_k(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
  """(values, indices) of the k largest along the last axis; ties go to the lower index (as ``jax.lax.top_k``)."""
  values, indices = torch.sort(probs, dim=-1, descending=True, stable=True)
  return values[..., :k], indices[..., :k]


def top_k_choice(probs: torch.Tensor, session_mask: torch.Tensor, k: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """probs[B,S,K], session_mask bool[B,S] -> (expert int64[B,S,k], gate[B,S,k], valid bool[B,S,k])."""
  gate, expert = top_k(probs, k)
  valid = session_mask[..., None].expand(expert.shape)
  return expert, torch.where(valid, gate, torch.zeros_like(gate)), valid


def _exclusive_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
  return torch.cumsum(x, dim=dim) - x


def assign_slots(expert: torch.Tensor, valid: torch.Tensor, *, num_themes: int, capacity: int,
                 priority: str = "choice", drop_policy: str = "oldest") -> tuple[torch.Tensor, torch.Tensor]:
  """(keep bool[B,S,k], slot int64[B,S,k]): ``mos_jax.models.routing.assign_slots``."""
  b, s, k = expert.shape
  onehot = F.one_hot(expert, num_themes) * valid[..., None].long()  # [B,S,k,K]
  ordered = torch.flip(onehot, [1]) if drop_policy == "oldest" else onehot  # serve order over sessions
  if priority == "choice":  # every first choice before any second choice
    seq = ordered.transpose(1, 2).reshape(b, k * s, num_themes)
    rank = _exclusive_cumsum(seq, 1).reshape(b, k, s, num_themes).transpose(1, 2)
  else:
    rank = _exclusive_cumsum(ordered.reshape(b, s * k, num_themes), 1).reshape(b, s, k, num_themes)
  if drop_policy == "oldest":
    rank = torch.flip(rank, [1])
  kept_onehot = onehot * (rank < capacity).long()
  keep = kept_onehot.sum(-1) > 0
  chrono = _exclusive_cumsum(kept_onehot.reshape(b, s * k, num_themes), 1).reshape(b, s, k, num_themes)
  slot = (chrono * onehot).sum(-1)
  return keep, torch.where(keep, slot, torch.zeros_like(slot))


def theme_gates(plan: RoutingPlan, num_themes: int) -> torch.Tensor:
  """[B,K]: the mean gate of the choices each theme kept per user (0 for an empty theme)."""
  kept = F.one_hot(plan.expert, num_themes).float() * plan.keep[..., None].float()  # [B,S,k,K]
  return torch.einsum("bsje,bsj->be", kept, plan.gate) / torch.clamp(kept.sum(dim=(1, 2)), min=1.0)


def gate_weights(gate: torch.Tensor, mode: str) -> torch.Tensor:
  """ModelConfig.gate_scaling of a theme's output by its mean gate: multiply | straight_through (value 1, gradient
  1) | none."""
  if mode == "multiply":
    return gate
  if mode == "straight_through":
    return torch.where(gate > 0, 1.0 + gate - gate.detach(), torch.zeros_like(gate))
  if mode == "none":
    return torch.ones_like(gate)
  raise ValueError(f"ModelConfig.gate_scaling={mode!r}: expected 'multiply', 'straight_through' or 'none'")


def dispatch(x: torch.Tensor, mask: torch.Tensor, plan: RoutingPlan, weights: torch.Tensor, *, num_themes: int,
             capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
  """x[B,S,T,D], mask[B,S,T] -> (weight * x per slot [B,K,C,T,D], slot mask bool[B,K,C,T]); one-hot einsums."""
  e = F.one_hot(plan.expert, num_themes).float()  # [B,S,k,K]
  c = F.one_hot(plan.slot, capacity).float()  # [B,S,k,C]
  keep = plan.keep.float()
  d = torch.einsum("bsje,bsjc,bsj->bsec", e, c, keep)
  dw = torch.einsum("bsje,bsjc,bsj->bsec", e, c, keep * weights)
  buf = torch.einsum("bskc,bstd->bkctd", dw, x)
  bmask = torch.einsum("bskc,bst->bkct", d, mask.float()) > 0.5
  return buf, bmask


def masked_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
  return total / torch.clamp(count, min=1.0)


def balance_loss(probs: torch.Tensor, expert: torch.Tensor, session_mask: torch.Tensor) -> torch.Tensor:
  """Switch-style ``K * sum_e f_e * P_e`` over valid sessions (f: top-1 share, not differentiated)."""
  k = probs.shape[-1]
  m = session_mask.float()
  n = m.sum()
  f = masked_mean((F.one_hot(expert[..., 0], k).float() * m[..., None]).sum(dim=(0, 1)), n)
  p = masked_mean((probs * m[..., None]).sum(dim=(0, 1)), n)
  return k * (f.detach() * p).sum()


def z_loss(logits: torch.Tensor, session_mask: torch.Tensor) -> torch.Tensor:
  """Mean over valid rows of logsumexp(logits)^2."""
  m = session_mask.float()
  z = torch.logsumexp(logits, dim=-1)
  return masked_mean((z**2 * m).sum(), m.sum())


def mean_entropy(probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
  """Mean entropy (nats) over the valid rows; 0 * log 0 = 0."""
  safe = torch.where(probs > 0, probs, torch.ones_like(probs))
  ent = -torch.where(probs > 0, probs * torch.log(safe), torch.zeros_like(probs)).sum(-1)
  v = valid.float()
  return masked_mean((v * ent).sum(), v.sum())


def marginal_entropy(probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
  """Entropy (nats) of the mean routing distribution over the valid rows of ``probs`` [..., K]."""
  v = valid.float()[..., None]
  p = (v * probs).sum(dim=tuple(range(probs.ndim - 1))) / torch.clamp(v.sum(), min=1.0)
  safe = torch.where(p > 0, p, torch.ones_like(p))
  return -torch.where(p > 0, p * torch.log(safe), torch.zeros_like(p)).sum()


class MoERouting(NamedTuple):
  """GShard decision for B examples over E experts with C slots: ``mos_jax.models.moe.gating.Routing``."""

  dispatch: torch.Tensor  # [B,E,C] 0/1
  combine: torch.Tensor  # [B,E,C] gate weights
  metrics: dict[str, torch.Tensor]


def top_k_routing(logits: torch.Tensor, valid: torch.Tensor, *, k: int, capacity: int,
                  normalize_gates: bool = True) -> MoERouting:
  """GShard token choice: first choices (in batch order) before second choices; overflow dropped."""
  num_tokens, num_experts = logits.shape
  v = valid.float()
  probs = torch.softmax(logits, dim=-1)
  gates, experts = top_k(probs, k)  # [B,k]
  if normalize_gates and k > 1:
    gates = gates / gates.sum(-1, keepdim=True)
  choice = F.one_hot(experts, num_experts).float() * v[:, None, None]  # [B,k,E]
  choice_kb = choice.transpose(0, 1).reshape(k * num_tokens, num_experts)
  slot_kb = torch.cumsum(choice_kb, 0) - choice_kb
  keep_kb = choice_kb * (slot_kb < capacity).float()
  keep = keep_kb.reshape(k, num_tokens, num_experts).transpose(0, 1)  # [B,k,E]
  slot = slot_kb.reshape(k, num_tokens, num_experts).transpose(0, 1).long()
  slot_onehot = F.one_hot(slot.clamp(max=capacity), capacity + 1)[..., :capacity].float()  # zero row if slot >= C
  dispatch_mask = torch.einsum("bke,bkec->bec", keep, slot_onehot)
  combine = torch.einsum("bk,bke,bkec->bec", gates, keep, slot_onehot)
  count = dispatch_mask.sum(dim=(0, 2))
  metrics = {
    "balance_loss": balance_loss(probs[None], choice[:, 0, :].argmax(-1)[None, :, None], valid[None]),
    "z_loss": z_loss(logits, valid),
    "router_entropy": mean_entropy(probs, valid),
    "dropped_fraction": 1.0 - keep.sum() / torch.clamp(k * v.sum(), min=1.0),
    "expert_count": count,
    "expert_usage": count / torch.clamp(count.sum(), min=1.0),
    "capacity_utilization": count.sum() / (num_experts * capacity),
  }
  return MoERouting(dispatch_mask, combine, metrics)
