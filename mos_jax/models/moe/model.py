"""Sequence-level MoE baselines: E full backbone encoders over the whole S*T sequence, routed per example.

    embed -> x[B,L,D], mask[B,L], target[B,D]            (shared Embedder; L = S*T)
    router input r[B,R] = [masked mean of x | target (CTR only)]   (float32)
    gshard / expert_choice: logits[B,E] -> Routing -> dispatch x to [E,C,L,D] -> stacked experts -> h[E,C,H]
                            -> combine (gate-weighted) -> u[B,H]
    dselect_k:              weights[B,E] (smooth-step selectors) -> every expert on every example h[E,B,H]
                            -> u = sum_e w[b,e] h[e,b]
    head(u, target, item_table) -> logits                  (shared TaskHead)

The experts are the registry's encoders with stacked parameters under ``self.experts`` (leading axis E), so the
training code can shard them over the mesh's ``expert`` axis. An example that no expert holds (dropped by capacity,
or not chosen under Expert Choice) gets u = 0: there is no residual path around a sequence-level expert.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models import expert_sharding, routing
from mos_jax.models.config import MOE_MODELS, ModelConfig
from mos_jax.models.embedding import Embedder
from mos_jax.models.encoders import apply_stacked_encoders, build_stacked_encoders
from mos_jax.models.heads import TaskHead
from mos_jax.models.moe import dispatch as dispatch_lib
from mos_jax.models.moe import gating
from mos_jax.models.outputs import ModelOutput
from mos_jax.models.router import session_summary

_F32 = jnp.float32


def routing_features(x: jax.Array, mask: jax.Array, target: jax.Array | None) -> jax.Array:
  """Router input per example: masked mean of x[B,L,D] (zeros when empty), then the target (CTR) -> float32 [B,R]."""
  mean = session_summary(x[:, None], mask[:, None])[:, 0]  # the whole sequence as one session: [B,D]
  return mean if target is None else jnp.concatenate([mean, target.astype(_F32)], axis=-1)


def _split(a: jax.Array) -> jax.Array:
  """[E, C or B, ...] split over (expert, data) under an expert-parallel mesh; ``a`` itself otherwise."""
  return expert_sharding.constrain(a, (expert_sharding.EXPERT, expert_sharding.DATA))


class MoEModel(nnx.Module):
  """GShard | Expert Choice | DSelect-k over the shared embedding, encoders and heads (``cfg.name`` picks)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    moe = cfg.moe.validate()
    if cfg.name not in MOE_MODELS:
      raise ValueError(f"ModelConfig.name={cfg.name!r}: expected one of {MOE_MODELS}")
    self.kind = cfg.name
    self.task = cfg.task
    self.dispatch = cfg.dispatch
    self.num_experts = moe.num_experts
    self.top_k = moe.top_k
    self.capacity_factor = moe.capacity_factor if cfg.name == "gshard" else moe.expert_choice_capacity_factor
    self.normalize_gates = moe.normalize_gates
    self.eval_top_k = gating.expert_choice_eval_k(moe.expert_choice_capacity_factor, moe.num_experts)
    self.dselect_k = moe.dselect_k
    self.gamma = moe.dselect_gamma
    self.entropy_weight = moe.dselect_entropy_weight
    self.balance_weight = cfg.balance_loss_weight
    self.z_weight = cfg.z_loss_weight
    self.batch_axis: str | None = None  # set by the pmap step (models.set_batch_axis): aux statistics are global
    self.embedder = Embedder(cfg, rngs=rngs)
    self.experts = build_stacked_encoders(cfg, num=moe.num_experts, max_len=cfg.num_sessions * cfg.session_len,
                                          rngs=rngs)
    feat = cfg.embed_dim * (2 if cfg.task == "ctr" else 1)
    if cfg.name == "dselect_k":
      self.num_bits = gating.binary_codes(moe.num_experts).shape[1]
      self.selector = nnx.Linear(feat, moe.dselect_k * self.num_bits, rngs=rngs)  # float32 routing params
      self.mix = nnx.Linear(feat, moe.dselect_k, rngs=rngs)
    else:
      self.router = nnx.Linear(feat, moe.num_experts, rngs=rngs)
    self.head = TaskHead(cfg, in_dim=cfg.hidden_dim, rngs=rngs)

  def embed(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """-> x[B,L,D], mask[B,L], target[B,D], router features[B,R], valid rows bool[B] (weight > 0)."""
    x, mask, target = self.embedder.embed_batch(batch)
    b, s, t, d = x.shape
    x, mask = x.reshape(b, s * t, d), mask.reshape(b, s * t)
    weight = batch.get("weight")
    valid = jnp.ones((b,), bool) if weight is None else jnp.asarray(weight) > 0
    feats = routing_features(x, mask, target if self.task == "ctr" else None)
    return x, mask, target, feats, valid

  def route(self, feats: jax.Array, valid: jax.Array, deterministic: bool = False) -> gating.Routing:
    """Token-choice (GShard) or expert-choice routing of the B examples.

    Training (``deterministic=False``) routes over the batch with capacity from the static B. Evaluation routes each
    example on its own scores only, so predictions never depend on the evaluation batch (size, order or neighbours):
    GShard with capacity B (nothing is dropped), Expert Choice as token choice of the top ``eval_top_k`` experts
    (the number of experts an example gets on average in training) with the raw softmax gates (docs/baselines.md).
    """
    logits = self.router(feats.astype(_F32))  # [B,E] float32
    num_tokens = feats.shape[0]
    if self.kind == "gshard":
      cap = num_tokens if deterministic else gating.capacity(num_tokens, self.num_experts, self.capacity_factor,
                                                             k=self.top_k)
      return gating.top_k_routing(logits, valid, k=self.top_k, capacity=cap, normalize_gates=self.normalize_gates,
                                  axis_name=self.batch_axis)
    if deterministic:
      return gating.top_k_routing(logits, valid, k=self.eval_top_k, capacity=num_tokens, normalize_gates=False)
    cap = gating.capacity(num_tokens, self.num_experts, self.capacity_factor)
    return gating.expert_choice_routing(logits, valid, capacity=cap, axis_name=self.batch_axis)

  def dselect_weights(self, feats: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    sel = self.selector(feats.astype(_F32)).reshape(feats.shape[0], self.dselect_k, self.num_bits)  # [B,k,m]
    return gating.dselect_k_weights(sel, self.mix(feats.astype(_F32)), num_experts=self.num_experts,
                                    gamma=self.gamma, axis_name=self.batch_axis)

  def __call__(self, batch: Mapping[str, jax.Array], deterministic: bool) -> ModelOutput:
    x, mask, target, feats, valid = self.embed(batch)
    ctr_target = target if self.task == "ctr" else None
    if self.kind == "dselect_k":
      u, aux, metrics = self._dense(x, mask, ctr_target, feats, valid, deterministic)
    else:
      u, aux, metrics = self._sparse(x, mask, ctr_target, feats, valid, deterministic)
    logits, query = self.head.forward(u, target, self.embedder.item_table, deterministic=deterministic,
                                      batch=batch)
    return ModelOutput(logits, aux.astype(_F32), metrics, query)

  def _sparse(self, x, mask, target, feats, valid, deterministic):
    r = self.route(feats, valid, deterministic)
    send, gather_back = dispatch_lib.DISPATCHERS[self.dispatch]
    # Expert parallelism (a no-op without an expert mesh axis): slots split (expert, data), so each device encodes
    # only its experts' share of the slots (expert_sharding.py).
    xe, me = _split(send(x, r)), _split(send(mask, r))  # [E,C,L,D], [E,C,L]
    te = None if target is None else _split(send(target, r))  # [E,C,D]
    h = _split(apply_stacked_encoders(self.experts, xe, me, te, deterministic=deterministic))  # [E,C,H]
    u = gather_back(h, r)  # [B,H] float32, gate-weighted
    m = r.metrics
    aux = self.z_weight * m["z_loss"]
    if self.kind == "gshard":
      aux = aux + self.balance_weight * m["balance_loss"]
    return u, aux, dict(m)

  def _dense(self, x, mask, target, feats, valid, deterministic):
    w, regs = self.dselect_weights(feats)  # [B,E]
    e = self.num_experts
    rep = lambda a: _split(jnp.broadcast_to(a[None], (e,) + a.shape))  # noqa: E731  every expert, every example
    h = _split(apply_stacked_encoders(self.experts, rep(x), rep(mask), None if target is None else rep(target),
                                      deterministic=deterministic))  # [E,B,H]
    u = jnp.einsum("be,ebh->bh", w, h.astype(_F32), precision=jax.lax.Precision.HIGHEST)  # [B,H]
    # Unreachable-code penalty with weight 1 as in the reference implementation; exactly 0 when E is a power of 2.
    aux = self.entropy_weight * regs["selector_entropy"] + regs["unreachable_penalty"]
    v = valid.astype(_F32)
    n = jnp.maximum(jnp.sum(v), 1.0)
    usage = jnp.sum(w * v[:, None], axis=0) / n  # [E] mean weight per expert
    wn = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-9)
    metrics = {
        **regs,
        "expert_usage": usage / jnp.maximum(jnp.sum(usage), 1e-9),
        "router_entropy": routing.mean_entropy(wn, valid),
        "experts_per_example": jnp.sum((w > 1e-6) * v[:, None]) / n,  # experts with non-zero weight
        "dropped_fraction": jnp.zeros((), _F32),  # dense: every example reaches every expert
    }
    return u, aux, metrics
