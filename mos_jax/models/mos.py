"""MoS: theme-aware session routing + multi-scale experts (global, short-term, K theme experts) + fusion.

Forward pass (docs/model.md; every reconstructed choice is a ModelConfig switch, listed in docs/model.md):

    batch -> Embedder -> x[B,S,T,D], mask[B,S,T]
      global expert:      encoder(x as [B,S*T,D])                                   -> h_g[B,H]
      short-term expert:  encoder(last n sessions as [B,n*T,D])                     -> h_s[B,H]
      theme experts:      Router(session means) -> top-k -> capacity/slots (routing.py)
                          -> dispatch (dispatch.py) -> buffers[B,K,C,T,D]
                          -> K stacked encoders, one batched call on [K,B,C*T,D]      -> h_k[B,K,H]
                          -> h_k * (mean gate of theme k's kept sessions)  (gate_scaling)
      FusionGate over the 2+K outputs (target-conditioned in CTR mode; empty themes masked) -> u[B,H]
      TaskHead(u) -> logits;  aux_loss = balance + z-loss (weighted);  metrics (explicit dict)
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models import expert_sharding, routing
from mos_jax.models.config import ModelConfig
from mos_jax.models.dispatch import dispatch
from mos_jax.models.embedding import Embedder
from mos_jax.models.encoders import apply_stacked_encoders, build_encoder, build_stacked_encoders
from mos_jax.models.expert_sharding import DATA, EXPERT
from mos_jax.models.heads import TaskHead
from mos_jax.models.outputs import ModelOutput
from mos_jax.models.router import NEG, Router


class FusionGate(nnx.Module):
  """h[B,E,H], available bool[B,E], target[B,D] | None -> (u[B,H], weights f32[B,E]).

  "gate": score_e = w . tanh(W [h_e ; target]) + b_e (target only in CTR mode), softmax in float32 over the
  available experts. "mean": masked average. Unavailable experts (an empty theme) get weight 0.
  """

  def __init__(self, cfg: ModelConfig, *, num_experts: int, in_dim: int, rngs: nnx.Rngs):
    self.mode = cfg.fusion
    if cfg.fusion == "gate":
      cond = cfg.embed_dim if cfg.task == "ctr" else 0
      self.hidden = nnx.Linear(in_dim + cond, in_dim, dtype=cfg.compute_dtype, rngs=rngs)
      self.score = nnx.Linear(in_dim, 1, dtype=cfg.compute_dtype, rngs=rngs)
      self.bias = nnx.Param(jnp.zeros((num_experts,), jnp.float32))

  def __call__(self, h: jax.Array, available: jax.Array, target: jax.Array | None,
               prior: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``prior`` f32[B,E]: log-weights added to the scores before the softmax (target routing), or None."""
    if self.mode == "gate":
      z = h
      if target is not None:
        z = jnp.concatenate([h, jnp.broadcast_to(target[:, None].astype(h.dtype), h.shape[:2] + target.shape[-1:])], -1)
      scores = self.score(jnp.tanh(self.hidden(z)))[..., 0].astype(jnp.float32) + self.bias[...]
    else:
      scores = jnp.zeros(h.shape[:2], jnp.float32)
    if prior is not None:
      scores = scores + prior
    w = jax.nn.softmax(jnp.where(available, scores, NEG), axis=-1)
    w = jnp.where(available, w, 0.0)  # a user with no history at all: every expert off, u = 0
    u = jnp.einsum("be,beh->bh", w, h.astype(jnp.float32))
    return u.astype(h.dtype), w


class MoS(nnx.Module):
  """Mixture of Sequence. ``model(batch, deterministic=...) -> ModelOutput`` (docs/interfaces.md).

  Expert order in the fusion (and in ``metrics['fusion_weights']``): global, short-term, theme 0..K-1, each present
  only when switched on. Theme-expert parameters are stacked [K, ...] under ``theme_experts`` (``theme_params``:
  one encoder ``shared_theme_expert`` for every theme, or the global expert's).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    s, t, k = cfg.num_sessions, cfg.session_len, cfg.num_themes
    self.task, self.num_themes, self.top_k = cfg.task, k, cfg.top_k
    self.route_by, self.dispatch_method, self.gate_scaling = cfg.route_by, cfg.dispatch, cfg.gate_scaling
    self.priority, self.drop_policy = cfg.routing_priority, cfg.drop_policy
    self.target_routing = cfg.target_routing
    self.balance_weight, self.z_weight = cfg.balance_loss_weight, cfg.z_loss_weight
    self.mi_weight = cfg.router_mi_weight
    self.batch_axis: str | None = None  # set by the pmap step (models.set_batch_axis): aux statistics are global
    self.short_sessions = min(cfg.short_sessions, s)
    self.capacity = routing.capacity(s, k, cfg.top_k if cfg.route_by == "router" else 1, cfg.capacity_factor,
                                     cfg.capacity_multiple)
    self.embedder = Embedder(cfg, rngs=rngs)
    self.global_expert = build_encoder(cfg, max_len=s * t, rngs=rngs) if cfg.use_global_expert else None
    self.short_expert = build_encoder(cfg, max_len=self.short_sessions * t, rngs=rngs) if cfg.use_short_expert else None
    self.router = Router(cfg, rngs=rngs) if cfg.use_theme_experts and cfg.route_by == "router" else None
    self.theme_params = cfg.theme_params
    theme, tp = cfg.use_theme_experts, cfg.theme_params
    # stacked [K, ...] (theme_params=separate): the expert-parallel sharding splits modules of this name
    self.theme_experts = (build_stacked_encoders(cfg, num=k, max_len=self.capacity * t, rngs=rngs)
                          if theme and tp == "separate" else None)
    # theme_params=shared: one unstacked encoder for every theme, replicated like the global expert
    self.shared_theme_expert = (build_encoder(cfg, max_len=self.capacity * t, rngs=rngs)
                                if theme and tp == "shared" else None)
    self.use_theme_experts = cfg.use_theme_experts
    num_experts = int(cfg.use_global_expert) + int(cfg.use_short_expert) + (k if cfg.use_theme_experts else 0)
    self.fusion = FusionGate(cfg, num_experts=num_experts, in_dim=cfg.hidden_dim, rngs=rngs)
    self.head = TaskHead(cfg, in_dim=cfg.hidden_dim, rngs=rngs)

  def route(self, x: jax.Array, mask: jax.Array, batch: Mapping[str, jax.Array]
            ) -> tuple[routing.RoutingPlan, jax.Array, dict[str, jax.Array]]:
    """x[B,S,T,D], mask[B,S,T] -> (plan, weighted aux loss, routing metrics)."""
    smask = jnp.any(mask, axis=-1)  # [B,S]
    metrics: dict[str, jax.Array] = {}
    n_real = jnp.maximum(jnp.sum(smask), 1).astype(jnp.float32)
    if self.route_by == "router":
      logits = self.router(self.router.summarize(x, mask), smask)  # [B,S,K] f32
      probs = jnp.where(smask[..., None], jax.nn.softmax(logits, axis=-1), 0.0)
      expert, gate, valid = routing.top_k_choice(probs, smask, self.top_k)
      bal = routing.balance_loss(probs, expert, smask, self.batch_axis)
      zl = routing.z_loss(logits, smask, self.batch_axis)
      ent = routing.mean_entropy(probs, smask, self.batch_axis)
      aux = self.balance_weight * bal + self.z_weight * zl
      if self.mi_weight:
        mi_loss = ent - routing.marginal_entropy(probs, smask, self.batch_axis)
        aux = aux + self.mi_weight * mi_loss
        metrics["mi_loss"] = mi_loss
      metrics.update(balance_loss=bal, z_loss=zl, router_entropy=ent)
    else:
      if "session_theme" not in batch:
        raise KeyError("ModelConfig.route_by='label' needs batch['session_theme'] (int32 [B,S], -1 = padding)")
      expert, gate, valid = routing.label_choice(jnp.asarray(batch["session_theme"]), self.num_themes)
      valid = valid & smask[..., None]
      gate = gate * valid
      aux = jnp.zeros((), jnp.float32)
      metrics["unrouted_fraction"] = jnp.sum(smask & ~valid[..., 0]) / n_real
    plan = routing.make_plan(expert, gate, valid, num_themes=self.num_themes, capacity=self.capacity,
                             priority=self.priority, drop_policy=self.drop_policy)
    kept = jnp.sum(jax.nn.one_hot(plan.expert, self.num_themes) * plan.keep[..., None], axis=(1, 2))  # [B,K]
    n_valid = jnp.maximum(jnp.sum(plan.valid), 1).astype(jnp.float32)
    metrics.update(
      dropped_fraction=jnp.sum(plan.valid & ~plan.keep) / n_valid,
      theme_sessions=jnp.mean(kept, axis=0),
      expert_usage=jnp.sum(kept, axis=0) / jnp.maximum(jnp.sum(kept), 1.0),
    )
    return plan, aux, metrics

  def __call__(self, batch: Mapping[str, jax.Array], *, deterministic: bool) -> ModelOutput:
    x, mask, target = self.embedder.embed_batch(batch)
    b, s, t, d = x.shape
    tgt = target if self.task == "ctr" else None
    smask = jnp.any(mask, axis=-1)
    outs, avail = [], []
    aux, metrics = jnp.zeros((), jnp.float32), {}
    if self.global_expert is not None:
      outs.append(self.global_expert(x.reshape(b, s * t, d), mask.reshape(b, s * t), tgt,
                                     deterministic=deterministic)[:, None])
      avail.append(jnp.any(smask, axis=1, keepdims=True))
    if self.short_expert is not None:
      n = self.short_sessions  # already min(short_sessions, S)
      outs.append(self.short_expert(x[:, -n:].reshape(b, n * t, d), mask[:, -n:].reshape(b, n * t), tgt,
                                    deterministic=deterministic)[:, None])
      avail.append(jnp.any(smask[:, -n:], axis=1, keepdims=True))
    if self.use_theme_experts:
      k, c = self.num_themes, self.capacity
      plan, aux, metrics = self.route(x, mask, batch)
      buf, bmask = dispatch(x, mask, plan, num_themes=k, capacity=c, method=self.dispatch_method)  # [B,K,C,T,D]
      # Expert parallelism (a no-op without an expert mesh axis): buffers split (data, expert), so each device
      # builds and encodes only its own themes' buffers for its own rows (expert_sharding.py).
      buf, bmask = (expert_sharding.constrain(a, (DATA, EXPERT)) for a in (buf, bmask))
      xs = jnp.swapaxes(buf.reshape(b, k, c * t, d), 0, 1)  # [K,B,C*T,D]: one batched call over themes
      ms = jnp.swapaxes(bmask.reshape(b, k, c * t), 0, 1)
      ts = None if tgt is None else jnp.broadcast_to(tgt[None], (k,) + tgt.shape)
      if self.theme_params == "separate":
        xs, ms = (expert_sharding.constrain(a, (EXPERT, DATA)) for a in (xs, ms))
        ts = None if ts is None else expert_sharding.constrain(ts, (EXPERT, DATA))
        h = apply_stacked_encoders(self.theme_experts, xs, ms, ts, deterministic=deterministic)  # [K,B,H]
        h = expert_sharding.constrain(h, (EXPERT, DATA))  # the fusion sums a row's themes across the expert axis
      else:  # one encoder's weights for every theme: the K subsequences are K*B rows of one call
        enc = self.shared_theme_expert if self.theme_params == "shared" else self.global_expert
        h = enc(xs.reshape(k * b, c * t, d), ms.reshape(k * b, c * t),
                None if ts is None else ts.reshape(k * b, -1), deterministic=deterministic).reshape(k, b, -1)
      # The gate scales each theme's output, not its input, so that SASRec's positions and the items stay in
      # proportion inside every expert (issue 22); the router learns through it.
      g = routing.gate_weights(routing.theme_gates(plan, k), self.gate_scaling)  # [B,K]
      h = (h.astype(jnp.float32) * jnp.swapaxes(g, 0, 1)[..., None]).astype(h.dtype)
      outs.append(jnp.swapaxes(h, 0, 1))
      avail.append(jnp.any(bmask, axis=(2, 3)))
    hs = jnp.concatenate([o.astype(x.dtype) for o in outs], axis=1)  # [B,E,H]
    prior = None
    if self.target_routing:  # log p(theme | candidate) on the theme experts, 0 on global / short-term
      p_t = jax.nn.softmax(self.router(tgt[:, None].astype(jnp.float32), jnp.ones((b, 1), bool))[:, 0], axis=-1)
      prior = jnp.concatenate([jnp.zeros((b, hs.shape[1] - self.num_themes), jnp.float32),
                               jnp.log(jnp.maximum(p_t, 1e-9))], axis=1)
      metrics["target_router_entropy"] = jnp.mean(-jnp.sum(p_t * jnp.log(jnp.maximum(p_t, 1e-9)), axis=-1))
    u, w = self.fusion(hs, jnp.concatenate(avail, axis=1), tgt, prior)
    metrics["fusion_weights"] = jnp.mean(w, axis=0)
    logits, query = self.head.forward(u, target, self.embedder.item_table, deterministic=deterministic,
                                      batch=batch)
    return ModelOutput(logits, aux, metrics, query)
