"""Routing math of MoS on static shapes: capacity, top-k choice, priority, chronological slots (docs/model.md).

Routing groups are per user: each row b routes its own S sessions to K theme buffers of C slots.
Everything here is a pure function of arrays, so it is tested on exact small arrays against a Python loop.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class RoutingPlan(NamedTuple):
  """Where each (session, choice) goes. All arrays are [B, S, k]; k = choices per session (top-k).

  expert: int32 chosen theme (meaningful where ``valid``).
  gate:   float32 router probability of that theme (1 when routing by label).
  valid:  bool, the session is real (not padding) and the choice exists.
  keep:   bool, valid and it won a slot (not dropped for capacity).
  slot:   int32 position in the theme buffer (meaningful where ``keep``); kept sessions of one theme fill slots
          0, 1, ... in time order, so every buffer is chronological.
  """

  expert: jax.Array
  gate: jax.Array
  valid: jax.Array
  keep: jax.Array
  slot: jax.Array


def capacity(num_sessions: int, num_themes: int, top_k: int, capacity_factor: float, multiple: int = 1) -> int:
  """C = ceil(cf * k * S / K), rounded up to ``multiple``, never above S rounded up (a theme can hold all S)."""
  c = math.ceil(capacity_factor * top_k * num_sessions / num_themes - 1e-9)  # 1e-9: 1.5*4/... float noise
  round_up = lambda n: -(-n // multiple) * multiple  # noqa: E731
  return max(1, min(round_up(c), round_up(num_sessions)))


def top_k_choice(probs: jax.Array, session_mask: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """probs f32[B,S,K], session_mask bool[B,S] -> (expert int32[B,S,k], gate f32[B,S,k], valid bool[B,S,k])."""
  gate, expert = jax.lax.top_k(probs, k)
  valid = jnp.broadcast_to(session_mask[..., None], expert.shape)
  return expert.astype(jnp.int32), jnp.where(valid, gate, 0.0), valid


def label_choice(labels: jax.Array, num_themes: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Routing by an external label: labels int[B,S] (−1 = padding) -> top-1 (expert, gate = 1, valid).

  Labels outside [0, K) are treated as padding (never routed); MoS reports their fraction as a metric.
  """
  labels = labels.astype(jnp.int32)
  valid = (labels >= 0) & (labels < num_themes)
  expert = jnp.where(valid, labels, 0)[..., None]
  return expert, valid[..., None].astype(jnp.float32), valid[..., None]


def _exclusive_cumsum(x: jax.Array, axis: int) -> jax.Array:
  return jnp.cumsum(x, axis=axis) - x


def assign_slots(expert: jax.Array, valid: jax.Array, *, num_themes: int, capacity: int,
                 priority: str = "choice", drop_policy: str = "oldest") -> tuple[jax.Array, jax.Array]:
  """Decides who is kept under capacity, then gives kept sessions chronological slots.

  expert int[B,S,k], valid bool[B,S,k] -> (keep bool[B,S,k], slot int32[B,S,k]).

  priority "choice": all first choices are served before any second choice (GShard-style); "time": choices are
  served session by session. Within one choice rank, drop_policy "oldest" serves the most recent sessions first
  (so the oldest overflow is dropped), "newest" serves the oldest first. Slots are then a running count over kept
  sessions in time order, independent of the priority order.
  """
  if priority not in ("choice", "time"):
    raise ValueError(f"ModelConfig.routing_priority={priority!r}: expected 'choice' or 'time'")
  if drop_policy not in ("oldest", "newest"):
    raise ValueError(f"ModelConfig.drop_policy={drop_policy!r}: expected 'oldest' or 'newest'")
  b, s, k = expert.shape
  onehot = jax.nn.one_hot(expert, num_themes, dtype=jnp.int32) * valid[..., None]  # [B,S,k,K]
  ordered = onehot[:, ::-1] if drop_policy == "oldest" else onehot  # serve order over sessions
  if priority == "choice":
    seq = jnp.swapaxes(ordered, 1, 2).reshape(b, k * s, num_themes)  # [B, k*S, K]: rank-major
    rank = _exclusive_cumsum(seq, axis=1).reshape(b, k, s, num_themes).swapaxes(1, 2)
  else:
    seq = ordered.reshape(b, s * k, num_themes)  # session-major
    rank = _exclusive_cumsum(seq, axis=1).reshape(b, s, k, num_themes)
  if drop_policy == "oldest":
    rank = rank[:, ::-1]
  kept_onehot = onehot * (rank < capacity)  # [B,S,k,K]
  keep = jnp.sum(kept_onehot, axis=-1) > 0
  # Chronological slot: how many kept sessions of the same theme come earlier in time.
  chrono = _exclusive_cumsum(kept_onehot.reshape(b, s * k, num_themes), axis=1).reshape(b, s, k, num_themes)
  slot = jnp.sum(chrono * onehot, axis=-1).astype(jnp.int32)
  return keep, jnp.where(keep, slot, 0)


def make_plan(expert: jax.Array, gate: jax.Array, valid: jax.Array, *, num_themes: int, capacity: int,
              priority: str = "choice", drop_policy: str = "oldest") -> RoutingPlan:
  keep, slot = assign_slots(expert, valid, num_themes=num_themes, capacity=capacity, priority=priority,
                            drop_policy=drop_policy)
  return RoutingPlan(expert, gate, valid, keep, slot)


def theme_gates(plan: RoutingPlan, num_themes: int) -> jax.Array:
  """f32[B,K]: the mean gate of the choices each theme kept per user (0 for an empty theme); differentiable in gate."""
  kept = jax.nn.one_hot(plan.expert, num_themes, dtype=jnp.float32) * plan.keep[..., None]  # [B,S,k,K]
  total = jnp.sum(kept * plan.gate.astype(jnp.float32)[..., None], axis=(1, 2))  # exact sums, no matmul
  return total / jnp.maximum(jnp.sum(kept, axis=(1, 2)), 1.0)


def gate_weights(gate: jax.Array, mode: str) -> jax.Array:
  """How theme-expert outputs are scaled so that the router learns (ModelConfig.gate_scaling).

  ``gate``: a theme's mean gate per user (``theme_gates``). The scaling acts on the expert's output, not on its input,
  so an expert sees its sessions exactly as the global expert does (item and position embeddings at their own sizes).
  "multiply": by the gate itself; "straight_through": by 1 in value with gradient 1 w.r.t. the gate
  (1 + g - stop_grad(g)), so the router gets the gradient it would get under "multiply" at gate 1, never the x / g
  blow-up of g / stop_grad(g) for small gates; "none": by 1 (the router then gets no gradient from the experts, only
  from the aux losses). Where the gate is 0 (an empty theme) "multiply" and "straight_through" give weight 0.
  """
  if mode == "multiply":
    return gate
  if mode == "straight_through":
    # Zero gates (empty themes, label routing of invalid sessions) keep weight 0, as under "multiply".
    return jnp.where(gate > 0, 1.0 + gate - jax.lax.stop_gradient(gate), 0.0)
  if mode == "none":
    return jnp.ones_like(gate)
  raise ValueError(f"ModelConfig.gate_scaling={mode!r}: expected 'multiply', 'straight_through' or 'none'")


def batch_mean(total: jax.Array, count: jax.Array, axis_name: str | None = None) -> jax.Array:
  """``total / count`` over the whole batch; under ``axis_name`` (pmap) over the whole global batch.

  With an axis, the value is ``psum(total) / psum(count)`` on every device, while its gradient is that of this
  device's share ``total / psum(count)`` only: summing the devices' gradients (as the pmap step does) then gives the
  gradient of the global mean, whatever the autodiff rule of ``psum`` (no differentiated collective).
  """
  total, count = total.astype(jnp.float32), count.astype(jnp.float32)
  if axis_name is None:
    return total / jnp.maximum(count, 1.0)
  n = jnp.maximum(jax.lax.psum(jax.lax.stop_gradient(count), axis_name), 1.0)
  others = jax.lax.stop_gradient(jax.lax.psum(total, axis_name) - total)
  return (total + others) / n


def balance_loss(probs: jax.Array, expert: jax.Array, session_mask: jax.Array, axis_name: str | None = None
                 ) -> jax.Array:
  """Switch-style load balance K * sum_e f_e * P_e over valid sessions (f: top-1 share, P: mean probability).

  Equals 1 when routing is uniform; grows as sessions pile onto few themes. ``axis_name``: f and P are the global
  batch's (``batch_mean``), so data-parallel devices share one statistic.
  """
  k = probs.shape[-1]
  m = session_mask.astype(jnp.float32)
  n = jnp.sum(m)
  f = batch_mean(jnp.sum(jax.nn.one_hot(expert[..., 0], k) * m[..., None], axis=(0, 1)), n, axis_name)
  p = batch_mean(jnp.sum(probs * m[..., None], axis=(0, 1)), n, axis_name)
  return k * jnp.sum(jax.lax.stop_gradient(f) * p)


def mean_entropy(probs: jax.Array, valid: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Mean entropy (nats) over the valid rows of ``probs`` [..., K] (valid [...]); 0 * log 0 = 0.

  ``axis_name`` (pmap): the global batch's mean, with this device's share of the gradient (``batch_mean``).
  """
  ent = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), axis=-1)
  v = valid.astype(jnp.float32)
  return batch_mean(jnp.sum(v * ent), jnp.sum(v), axis_name)


def marginal_entropy(probs: jax.Array, valid: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Entropy (nats) of the mean routing distribution over the valid rows of ``probs`` [..., K] (of the global batch
  under ``axis_name``): log K when every theme gets the same share, 0 when one theme gets everything.

  Under ``axis_name`` the mean distribution comes from ``batch_mean``: its value is the global one on every device,
  its gradient this device's share, so the entropy's gradient (chain rule at the global mean) summed over devices is
  the gradient of the global entropy, once (a differentiated ``psum`` would count it once per device).
  """
  v = valid.astype(jnp.float32)[..., None]
  p = batch_mean(jnp.sum(v * probs, axis=tuple(range(probs.ndim - 1))), jnp.sum(v), axis_name)
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))


def z_loss(logits: jax.Array, session_mask: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Router z-loss: mean over valid sessions (of the global batch under ``axis_name``) of logsumexp(logits)^2."""
  m = session_mask.astype(jnp.float32)
  z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
  return batch_mean(jnp.sum(z**2 * m), jnp.sum(m), axis_name)
