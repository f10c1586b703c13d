"""MoS, the plain backbone and GShard in PyTorch, as ``nn.Module``s with the semantics of ``mos_jax.models``.

``build_model(cfg)`` takes the same ``ModelConfig``; ``model(batch) -> ModelOutput(logits, aux_loss, metrics)`` with
the batch keys of docs/interfaces.md as torch tensors. ``model.train()`` / ``model.eval()`` play the role of
``deterministic`` (dropout; GShard's capacity: batch-routed in training, each example on its own in evaluation).
Switches this reference does not port are refused by ``check_supported`` with the field's name.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mos_jax.models.config import ModelConfig
from mos_jax.reference.torch import routing
from mos_jax.reference.torch.encoders import ENCODERS, NEG, build_encoder

PAD_LOGIT = -1e9
SUPPORTED_MODELS = ("mos", "backbone", "gshard")


class ModelOutput(NamedTuple):
  logits: torch.Tensor  # CTR [B]; next-item [B, num_items + 1], column 0 = -1e9
  aux_loss: torch.Tensor  # weighted balance + z-loss; 0 without routing
  metrics: dict[str, torch.Tensor]


def check_supported(cfg: ModelConfig) -> ModelConfig:
  """Raises ValueError naming the first ``ModelConfig`` field this PyTorch reference does not port; returns cfg.

  Ported: models mos / backbone / gshard; backbones sasrec (every ``sasrec.*`` option) and gru4rec (``gru4rec.bias``);
  float32; every routing switch of MoS except ``route_by='label'`` (``router_input``, ``target_routing``,
  ``router_mi_weight`` and ``theme_params`` included); fusion gate / mean; CTR and next-item heads. ``attention``,
  ``dispatch`` and ``remat`` change how JAX computes, not what: any value is accepted.
  """
  cfg.validate()

  def refuse(field: str, value, ported: str):
    raise ValueError(f"ModelConfig.{field}={value!r} is not ported to the PyTorch reference (ported: {ported})")

  if cfg.name not in SUPPORTED_MODELS:
    refuse("name", cfg.name, ", ".join(SUPPORTED_MODELS))
  if cfg.backbone not in ENCODERS:
    refuse("backbone", cfg.backbone, ", ".join(ENCODERS))
  if cfg.dtype != "float32":
    refuse("dtype", cfg.dtype, "float32")
  if cfg.name == "mos" and cfg.route_by != "router":
    refuse("route_by", cfg.route_by, "router")
  return cfg


def session_summary(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """Masked mean over T: x[B,S,T,D], mask[B,S,T] -> [B,S,D] (zeros for padding sessions)."""
  m = mask.float()[..., None]
  return (x * m).sum(2) / torch.clamp(m.sum(2), min=1.0)


def last_item(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """The session's most recent valid item: x[B,S,T,D], mask[B,S,T] -> [B,S,D] (zeros for padding sessions)."""
  t = torch.arange(mask.shape[-1], device=mask.device)
  last = torch.where(mask, t, 0).max(dim=-1).values  # [B,S]
  out = torch.take_along_dim(x, last[..., None, None], dim=2)[:, :, 0]
  return torch.where(mask.any(-1)[..., None], out, torch.zeros_like(out))


class Embedder(nn.Module):
  """Item (+ category) tables, summed; id 0 embeds to exactly zero. The item table is the tied next-item output."""

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    self.item = nn.Embedding(cfg.num_items + 1, cfg.embed_dim)
    self.use_category = cfg.use_category and cfg.num_cats > 0
    self.cat = nn.Embedding(cfg.num_cats + 1, cfg.embed_dim) if self.use_category else None

  def forward(self, items: torch.Tensor, cats: torch.Tensor | None = None) -> torch.Tensor:
    x = self.item(items)
    if self.cat is not None and cats is not None:
      x = x + self.cat(cats)
    return torch.where((items > 0)[..., None], x, torch.zeros_like(x))

  @property
  def item_table(self) -> torch.Tensor:
    return self.item.weight

  def embed_batch(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (x[B,S,T,D], mask bool[B,S,T], target[B,D])."""
    items = batch["items"].long()
    cats = batch.get("cats")
    x = self(items, None if cats is None else cats.long())
    tc = batch.get("target_cat")
    target = self(batch["target_item"].long(), None if tc is None else tc.long())
    return x, items > 0, target


class CTRHead(nn.Module):
  """MLP over [u, t, u*t] (t = target projected to H) -> logit [B]."""

  def __init__(self, cfg: ModelConfig, *, in_dim: int):
    super().__init__()
    self.target_proj = nn.Linear(cfg.embed_dim, in_dim)
    self.hidden = nn.Linear(3 * in_dim, cfg.head_hidden)
    self.out = nn.Linear(cfg.head_hidden, 1)
    self.drop = nn.Dropout(cfg.dropout)

  def forward(self, u: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    t = self.target_proj(target)
    z = F.gelu(self.hidden(torch.cat([u, t, u * t], dim=-1)), approximate="tanh")
    return self.out(self.drop(z))[:, 0]


class NextItemHead(nn.Module):
  """proj(u) . item_table^T -> scores [B, V], column 0 = -1e9."""

  def __init__(self, cfg: ModelConfig, *, in_dim: int):
    super().__init__()
    self.proj = nn.Linear(in_dim, cfg.embed_dim)

  def forward(self, u: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
    scores = self.proj(u) @ item_table.T
    return torch.cat([torch.full_like(scores[:, :1], PAD_LOGIT), scores[:, 1:]], dim=1)


class TaskHead(nn.Module):
  """The head ``cfg.task`` asks for (``head.head`` holds it, as in JAX)."""

  def __init__(self, cfg: ModelConfig, *, in_dim: int):
    super().__init__()
    self.task = cfg.task
    self.head = CTRHead(cfg, in_dim=in_dim) if cfg.task == "ctr" else NextItemHead(cfg, in_dim=in_dim)

  def forward(self, u: torch.Tensor, target: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
    return self.head(u, target) if self.task == "ctr" else self.head(u, item_table)


class Router(nn.Module):
  """Session summaries [B,S,D] -> logits [B,S,K] (padding sessions = -1e9): linear or cosine prototypes.

  ``summarize`` turns the session grid into the summaries (``router_input``: mean | last | attention pooling with the
  learned query ``pool_query``, zero at init = the mean).
  """

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    d, k = cfg.embed_dim, cfg.num_themes
    self.kind, self.temperature, self.input = cfg.router, cfg.router_temperature, cfg.router_input
    self.pool_query = nn.Parameter(torch.zeros(d)) if cfg.router_input == "attention" else None
    self.mlp = nn.Linear(d, d) if cfg.router_mlp else None
    if cfg.router == "linear":
      self.proj = nn.Linear(d, k)
    else:
      self.prototypes = nn.Parameter(torch.randn(k, d))
      self.log_scale = (nn.Parameter(torch.tensor(-math.log(cfg.router_temperature)))
                        if cfg.router_learn_temperature else None)

  def summarize(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x[B,S,T,D], mask[B,S,T] -> [B,S,D] (zeros for padding sessions)."""
    if self.input == "mean":
      return session_summary(x, mask)
    if self.input == "last":
      return last_item(x, mask)
    scores = torch.einsum("bstd,d->bst", x, self.pool_query).masked_fill(~mask, NEG)
    w = torch.where(mask, torch.softmax(scores, dim=-1), torch.zeros_like(scores))
    return torch.einsum("bst,bstd->bsd", w, x)

  def forward(self, s: torch.Tensor, session_mask: torch.Tensor) -> torch.Tensor:
    if self.mlp is not None:
      s = s + F.gelu(self.mlp(s), approximate="tanh")
    if self.kind == "linear":
      logits = self.proj(s)
    else:
      unit = lambda v: v * torch.rsqrt((v * v).sum(-1, keepdim=True) + 1e-12)  # noqa: E731
      scale = 1.0 / self.temperature if self.log_scale is None else torch.exp(self.log_scale)
      logits = torch.einsum("bsd,kd->bsk", unit(s), unit(self.prototypes)) * scale
    return logits.masked_fill(~session_mask[..., None], NEG)


class FusionGate(nn.Module):
  """h[B,E,H], available bool[B,E], target[B,D] | None -> (u[B,H], weights[B,E]); empty experts get weight 0."""

  def __init__(self, cfg: ModelConfig, *, num_experts: int, in_dim: int):
    super().__init__()
    self.mode = cfg.fusion
    if cfg.fusion == "gate":
      cond = cfg.embed_dim if cfg.task == "ctr" else 0
      self.hidden = nn.Linear(in_dim + cond, in_dim)
      self.score = nn.Linear(in_dim, 1)
      self.bias = nn.Parameter(torch.zeros(num_experts))

  def forward(self, h: torch.Tensor, available: torch.Tensor, target: torch.Tensor | None,
              prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``prior`` [B,E]: log-weights added to the scores before the softmax (target routing), or None."""
    if self.mode == "gate":
      z = h if target is None else torch.cat([h, target[:, None].expand(-1, h.shape[1], -1)], dim=-1)
      scores = self.score(torch.tanh(self.hidden(z)))[..., 0] + self.bias
    else:
      scores = h.new_zeros(h.shape[:2])
    if prior is not None:
      scores = scores + prior
    w = torch.softmax(scores.masked_fill(~available, NEG), dim=-1)
    w = torch.where(available, w, torch.zeros_like(w))
    return torch.einsum("be,beh->bh", w, h), w


class MoS(nn.Module):
  """Mixture of Sequence: global, short-term and K routed theme experts, fused (docs/model.md).

  Expert order in the fusion: global, short-term, theme 0..K-1 (those switched on). Theme experts
  (``theme_params='separate'``) are an ``nn.ModuleList`` (``theme_experts.k``), run one after the other; ``shared``:
  one encoder ``shared_theme_expert`` runs every theme; ``global``: the global expert runs them.
  """

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    check_supported(cfg)
    s, t, k = cfg.num_sessions, cfg.session_len, cfg.num_themes
    self.cfg = cfg
    self.task, self.num_themes = cfg.task, k
    self.short_sessions = min(cfg.short_sessions, s)
    self.capacity = routing.capacity(s, k, cfg.top_k, cfg.capacity_factor, cfg.capacity_multiple)
    self.embedder = Embedder(cfg)
    self.global_expert = build_encoder(cfg, max_len=s * t) if cfg.use_global_expert else None
    self.short_expert = build_encoder(cfg, max_len=self.short_sessions * t) if cfg.use_short_expert else None
    self.router = Router(cfg) if cfg.use_theme_experts else None
    theme, tp = cfg.use_theme_experts, cfg.theme_params
    self.theme_experts = (nn.ModuleList([build_encoder(cfg, max_len=self.capacity * t) for _ in range(k)])
                          if theme and tp == "separate" else None)
    self.shared_theme_expert = build_encoder(cfg, max_len=self.capacity * t) if theme and tp == "shared" else None
    num_experts = int(cfg.use_global_expert) + int(cfg.use_short_expert) + (k if cfg.use_theme_experts else 0)
    self.fusion = FusionGate(cfg, num_experts=num_experts, in_dim=cfg.hidden_dim)
    self.head = TaskHead(cfg, in_dim=cfg.hidden_dim)

  def route(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[routing.RoutingPlan, torch.Tensor, dict]:
    """x[B,S,T,D], mask[B,S,T] -> (plan, weighted aux loss, routing metrics)."""
    cfg = self.cfg
    smask = mask.any(-1)
    logits = self.router(self.router.summarize(x, mask), smask)
    probs = torch.where(smask[..., None], torch.softmax(logits, dim=-1), torch.zeros_like(logits))
    expert, gate, valid = routing.top_k_choice(probs, smask, cfg.top_k)
    bal, zl = routing.balance_loss(probs, expert, smask), routing.z_loss(logits, smask)
    ent = routing.mean_entropy(probs, smask)
    aux = cfg.balance_loss_weight * bal + cfg.z_loss_weight * zl
    metrics = {}
    if cfg.router_mi_weight:  # confident per session, every theme used over the batch
      mi_loss = ent - routing.marginal_entropy(probs, smask)
      aux = aux + cfg.router_mi_weight * mi_loss
      metrics["mi_loss"] = mi_loss
    keep, slot = routing.assign_slots(expert, valid, num_themes=self.num_themes, capacity=self.capacity,
                                      priority=cfg.routing_priority, drop_policy=cfg.drop_policy)
    plan = routing.RoutingPlan(expert, gate, valid, keep, slot)
    kept = (F.one_hot(expert, self.num_themes).float() * keep[..., None].float()).sum(dim=(1, 2))  # [B,K]
    metrics.update({
      "balance_loss": bal, "z_loss": zl, "router_entropy": ent,
      "dropped_fraction": (valid & ~keep).sum() / torch.clamp(valid.sum(), min=1).float(),
      "theme_sessions": kept.mean(0),
      "expert_usage": kept.sum(0) / torch.clamp(kept.sum(), min=1.0),
    })
    return plan, aux, metrics

  def forward(self, batch: Mapping[str, torch.Tensor]) -> ModelOutput:
    x, mask, target = self.embedder.embed_batch(batch)
    b, s, t, d = x.shape
    tgt = target if self.task == "ctr" else None
    smask = mask.any(-1)
    outs, avail = [], []
    aux, metrics = x.new_zeros(()), {}
    if self.global_expert is not None:
      outs.append(self.global_expert(x.reshape(b, s * t, d), mask.reshape(b, s * t), tgt))
      avail.append(smask.any(1, keepdim=True))
    if self.short_expert is not None:
      n = self.short_sessions
      outs.append(self.short_expert(x[:, -n:].reshape(b, n * t, d), mask[:, -n:].reshape(b, n * t), tgt))
      avail.append(smask[:, -n:].any(1, keepdim=True))
    if self.router is not None:
      k, c = self.num_themes, self.capacity
      plan, aux, metrics = self.route(x, mask)
      ones = torch.ones_like(plan.gate)  # plain dispatch: the gate scales the experts' outputs
      buf, bmask = routing.dispatch(x, mask, plan, ones, num_themes=k, capacity=c)  # [B,K,C,T,D], [B,K,C,T]
      xs, ms = buf.reshape(b, k, c * t, d), bmask.reshape(b, k, c * t)
      if self.theme_experts is not None:
        hk = [enc(xs[:, e], ms[:, e], tgt) for e, enc in enumerate(self.theme_experts)]
      else:  # one encoder's weights for every theme: the K subsequences are B*K rows of one call
        enc = self.shared_theme_expert if self.shared_theme_expert is not None else self.global_expert
        ts = None if tgt is None else tgt[:, None].expand(b, k, tgt.shape[-1]).reshape(b * k, -1)
        hk = enc(xs.reshape(b * k, c * t, d), ms.reshape(b * k, c * t), ts).reshape(b, k, -1).unbind(1)
      g = routing.gate_weights(routing.theme_gates(plan, k), self.cfg.gate_scaling)  # [B,K]
      outs.extend(h * g[:, e, None] for e, h in enumerate(hk))
      avail.append(bmask.any(dim=(2, 3)))
    hs = torch.stack(outs, dim=1)  # [B,E,H]
    prior = None
    if self.cfg.target_routing:  # log p(theme | candidate) on the theme experts, 0 on global / short-term
      p_t = torch.softmax(self.router(tgt[:, None], torch.ones(b, 1, dtype=torch.bool, device=x.device))[:, 0], -1)
      log_p = torch.log(torch.clamp(p_t, min=1e-9))
      prior = torch.cat([log_p.new_zeros(b, hs.shape[1] - self.num_themes), log_p], dim=1)
      metrics["target_router_entropy"] = (-(p_t * log_p).sum(-1)).mean()
    u, w = self.fusion(hs, torch.cat(avail, dim=1), tgt, prior)
    metrics["fusion_weights"] = w.mean(0)
    return ModelOutput(self.head(u, target, self.embedder.item_table), aux, metrics)


class BackboneModel(nn.Module):
  """embed -> encoder(x[B,S*T,D]) -> head."""

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    check_supported(cfg)
    self.task = cfg.task
    self.embedder = Embedder(cfg)
    self.encoder = build_encoder(cfg, max_len=cfg.num_sessions * cfg.session_len)
    self.head = TaskHead(cfg, in_dim=cfg.hidden_dim)

  def forward(self, batch: Mapping[str, torch.Tensor]) -> ModelOutput:
    x, mask, target = self.embedder.embed_batch(batch)
    b, s, t, d = x.shape
    u = self.encoder(x.reshape(b, s * t, d), mask.reshape(b, s * t), target if self.task == "ctr" else None)
    return ModelOutput(self.head(u, target, self.embedder.item_table), x.new_zeros(()), {})


class GShard(nn.Module):
  """Sequence-level GShard top-k: E full encoders, each example routed by [mean of x | target (CTR)].

  Training routes the batch with capacity ``ceil(cf * k * B / E)``; evaluation routes every example on its own
  (capacity B: nothing dropped), as ``mos_jax.models.moe.MoEModel``.
  """

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    check_supported(cfg)
    moe = cfg.moe.validate()
    self.cfg, self.task = cfg, cfg.task
    self.embedder = Embedder(cfg)
    self.experts = nn.ModuleList([build_encoder(cfg, max_len=cfg.num_sessions * cfg.session_len)
                                  for _ in range(moe.num_experts)])
    self.router = nn.Linear(cfg.embed_dim * (2 if cfg.task == "ctr" else 1), moe.num_experts)
    self.head = TaskHead(cfg, in_dim=cfg.hidden_dim)

  def route(self, feats: torch.Tensor, valid: torch.Tensor) -> routing.MoERouting:
    moe, b = self.cfg.moe, feats.shape[0]
    cap = routing.capacity(b, moe.num_experts, moe.top_k, moe.capacity_factor) if self.training else b
    return routing.top_k_routing(self.router(feats), valid, k=moe.top_k, capacity=cap,
                                 normalize_gates=moe.normalize_gates)

  def forward(self, batch: Mapping[str, torch.Tensor]) -> ModelOutput:
    x, mask, target = self.embedder.embed_batch(batch)
    b, s, t, d = x.shape
    x, mask = x.reshape(b, s * t, d), mask.reshape(b, s * t)
    weight = batch.get("weight")
    valid = torch.ones(b, dtype=torch.bool, device=x.device) if weight is None else weight > 0
    tgt = target if self.task == "ctr" else None
    mean = session_summary(x[:, None], mask[:, None])[:, 0]
    r = self.route(mean if tgt is None else torch.cat([mean, tgt], dim=-1), valid)
    xe = torch.einsum("bec,bld->ecld", r.dispatch, x)  # [E,C,L,D]
    me = torch.einsum("bec,bl->ecl", r.dispatch, mask.float()) > 0.5
    te = None if tgt is None else torch.einsum("bec,bd->ecd", r.dispatch, tgt)
    h = torch.stack([enc(xe[e], me[e], None if te is None else te[e]) for e, enc in enumerate(self.experts)])
    u = torch.einsum("bec,ech->bh", r.combine, h)
    m = r.metrics
    aux = self.cfg.z_loss_weight * m["z_loss"] + self.cfg.balance_loss_weight * m["balance_loss"]
    return ModelOutput(self.head(u, target, self.embedder.item_table), aux, dict(m))


def build_model(cfg: ModelConfig) -> nn.Module:
  """``cfg.name``: mos | backbone | gshard (other names and unported switches raise ValueError naming the field)."""
  check_supported(cfg)
  return {"mos": MoS, "backbone": BackboneModel, "gshard": GShard}[cfg.name](cfg)
