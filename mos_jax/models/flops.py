"""Analytic forward FLOPs per example for every model of ``mos_jax.models`` (docs/baselines.md).

Convention: only matrix products count, each as 2*M*N*K (a multiply-add = 2 FLOPs); element-wise work (layer norms,
softmax, GELU, masks, bias adds) and table look-ups are left out, as in the usual "model FLOPs" accounting. The
numbers follow the code of ``encoders/``, ``heads.py``, ``mos.py`` and ``moe/`` term by term; tests/test_flops.py
checks them against XLA's cost analysis of the jitted forward pass.

``count_flops(cfg, batch_size=256)`` returns a dict of per-example FLOPs:

* ``experts``: encoder FLOPs of the experts an example is *active* in (MoS: global + short + K theme experts on
  their C*T buffers; GShard: top_k full-sequence experts; Expert Choice: E*C/B of them; DSelect-k: k of them);
* ``router``, ``fusion``, ``head``: the small learned parts;
* ``total`` = experts + router + fusion + head (the model FLOPs to compare models by);
* ``dispatch``: routing-mask construction, dispatch and combine contractions (overhead, reported apart; 0 with the
  gather dispatcher except for mask construction);
* ``executed``: what the implementation runs per example, overhead included: capacity slack of GShard / Expert
  Choice (E*C/B experts per example) and every expert on every example for DSelect-k (dense). This is the figure
  XLA sees.

The MoE baselines route within the batch, so their capacity C = ceil(cf*k*B/E) and the einsum dispatch cost depend
on ``batch_size`` (default 256). Note the one-hot einsum dispatch of whole sequences costs 2*E*C*(L*D) per example,
which grows with B (it contracts over the batch): at large B the gather dispatcher is the sensible choice.
"""

from __future__ import annotations

from typing import Callable

from mos_jax.models.config import MODEL_NAMES, MOE_MODELS, ModelConfig
from mos_jax.models.moe import gating

# -- encoders: FLOPs for ONE sequence of `length` positions ---------------------------------------------------------


def _sasrec(cfg: ModelConfig, length: int) -> float:
  d, n, f = cfg.embed_dim, length, cfg.ffn_multiplier * cfg.embed_dim

  def block(q: int) -> float:  # a block computing the outputs of q query positions (keys and values: all n)
    return (
        2 * n * d * 2 * d + 2 * q * d * d  # key and value projections (all positions), query projection
        + 2 * q * n * d  # scores: heads * (q x n x d/heads)
        + 2 * q * n * d  # probs @ v
        + 2 * q * d * d  # output projection
        + 2 * q * d * f + 2 * q * f * d  # feed-forward
    )

  # the last block computes the last valid position only (encoders/sasrec.py); + its final projection
  return (cfg.num_layers - 1) * block(n) + block(1) + 2 * d * cfg.hidden_dim


def _gru4rec(cfg: ModelConfig, length: int) -> float:
  d, h = cfg.embed_dim, cfg.hidden_dim
  return 2 * length * d * 3 * h + 2 * length * h * 3 * h  # input projection (all steps) + recurrent matmul per step


def _din(cfg: ModelConfig, length: int) -> float:
  d, widths = cfg.embed_dim, (4 * cfg.embed_dim, *cfg.din.attention_units, 1)
  unit = sum(2 * length * a * b for a, b in zip(widths[:-1], widths[1:]))  # activation unit on every position
  return unit + 2 * length * d + 2 * d * cfg.hidden_dim  # + weighted sum + output projection


def _target_attention(d: int, a: int, length: int, keys: int) -> float:
  """q (1 row), K and V (all positions), scores and weighted sum over ``keys``, W_o."""
  return 2 * d * a + 2 * 2 * length * d * a + 2 * keys * a + 2 * keys * a + 2 * a * d


def _sdim(cfg: ModelConfig, length: int) -> float:
  c, d = cfg.sdim, cfg.embed_dim
  hashes = 2 * (length + 1) * d * c.num_hashes * c.hash_bits  # rotations of the items and the target
  long = 2 * length * c.num_hashes * d  # per-hash collision-weighted sums
  return hashes + long + _target_attention(d, c.attention_dim, length, length) + 2 * 2 * d * cfg.hidden_dim


def _twin(cfg: ModelConfig, length: int) -> float:
  c, d = cfg.twin, cfg.embed_dim
  k = min(c.topk, length)
  a = c.attention_dim
  long = 2 * d * a + 2 * 2 * length * d * a + 2 * length * a  # q, K and V, scores
  long += 2 * k * a + 2 * a * d  # weighted sum over the k selected, W_o
  return long + _target_attention(d, a, length, length) + 2 * 2 * d * cfg.hidden_dim


def _transact(cfg: ModelConfig, length: int) -> float:
  c, n = cfg.transact, length
  e = (2 if c.early_fusion else 1) * cfg.embed_dim
  per_block = 2 * n * e * 3 * e + 2 * n * n * e + 2 * n * n * e + 2 * n * e * e + 2 * 2 * n * e * c.ffn_dim
  out = 2 * c.last_k * n * e + (2 * e * e if c.max_pool else 0)  # one-hot last-k pick, max-pool projection
  return cfg.num_layers * per_block + out + 2 * (c.last_k + int(c.max_pool)) * e * cfg.hidden_dim


def _mamba4rec(cfg: ModelConfig, length: int) -> float:
  # The conv (2*L*E*d_conv) and the scan (~9*L*E*Nst) are element-wise in the code, so not counted (module docstring).
  c, d, n = cfg.mamba4rec, cfg.embed_dim, length
  e, r = c.expand * cfg.embed_dim, -(-cfg.embed_dim // 16)
  block = 2 * n * d * 2 * e + 2 * n * e * (r + 2 * c.d_state) + 2 * n * r * e + 2 * n * e * d
  ffn = 2 * 2 * n * d * 4 * d
  return cfg.num_layers * (block + ffn) + (2 * d * cfg.hidden_dim if cfg.hidden_dim != d else 0)


ENCODER_FLOPS: dict[str, Callable[[ModelConfig, int], float]] = {
  "sasrec": _sasrec, "gru4rec": _gru4rec, "din": _din, "sdim": _sdim, "twin": _twin, "transact": _transact,
  "mamba4rec": _mamba4rec}
TARGET_BLIND = ("sasrec", "gru4rec", "mamba4rec")  # hosts that ignore the CTR target


def encoder_flops(cfg: ModelConfig, length: int) -> float:
  """Forward FLOPs of one ``cfg.backbone`` encoder on one sequence of ``length`` positions."""
  if cfg.backbone not in ENCODER_FLOPS:
    raise ValueError(f"count_flops: ModelConfig.backbone={cfg.backbone!r} has no FLOPs formula; expected one of "
                     f"{tuple(ENCODER_FLOPS)} (add one to mos_jax/models/flops.py:ENCODER_FLOPS)")
  return float(ENCODER_FLOPS[cfg.backbone](cfg, length))


def head_flops(cfg: ModelConfig) -> float:
  """TaskHead on u[H]: CTR MLP over [u, proj(target), u*proj(target)], or next-item scores over all items."""
  d, h = cfg.embed_dim, cfg.hidden_dim
  if cfg.task == "ctr":
    return float(2 * d * h + 2 * 3 * h * cfg.head_hidden + 2 * cfg.head_hidden)
  return float(2 * h * d + 2 * d * (cfg.num_items + 1))


# -- models -----------------------------------------------------------------------------------------------------------


def _result(experts: float, router: float, fusion: float, head: float, dispatch: float, executed_experts: float,
            **parts: float) -> dict[str, float]:
  total = experts + router + fusion + head
  out = {**parts, "experts": experts, "router": router, "fusion": fusion, "head": head, "total": total,
         "dispatch": dispatch, "executed": executed_experts + router + fusion + head + dispatch}
  return {k: float(v) for k, v in out.items()}


def _mos(cfg: ModelConfig) -> dict[str, float]:
  from mos_jax.models import routing  # the core's capacity rule, so both always agree

  s, t, k, d, h = cfg.num_sessions, cfg.session_len, cfg.num_themes, cfg.embed_dim, cfg.hidden_dim
  n_short = min(cfg.short_sessions, s)
  top_k = cfg.top_k if cfg.route_by == "router" else 1
  c = routing.capacity(s, k, top_k, cfg.capacity_factor, cfg.capacity_multiple)
  glob = encoder_flops(cfg, s * t) if cfg.use_global_expert else 0.0
  short = encoder_flops(cfg, n_short * t) if cfg.use_short_expert else 0.0
  theme = k * encoder_flops(cfg, c * t) if cfg.use_theme_experts else 0.0
  router = dispatch = 0.0
  if cfg.use_theme_experts:
    if cfg.route_by == "router":
      router = 2 * s * d * k + (2 * s * d * d if cfg.router_mlp else 0)  # linear and prototype alike: [S,D]x[D,K]
      if cfg.target_routing:  # the router on the candidate too: one more row
        router += 2 * d * k + (2 * d * d if cfg.router_mlp else 0)
    if cfg.dispatch == "einsum":
      # one [S,k]x[S,k,C]->[S,K,C] 0/1 mask einsum (the gate scales the experts' outputs, not the dispatch), then
      # buffers and buffer masks.
      dispatch = (2 * s * top_k * c + 2 * s * k * c * top_k) + 2 * s * k * c * t * d + 2 * s * k * c * t
  n_fused = int(cfg.use_global_expert) + int(cfg.use_short_expert) + (k if cfg.use_theme_experts else 0)
  fusion = 2 * n_fused * h  # weighted sum of the expert outputs
  if cfg.fusion == "gate":
    cond = d if cfg.task == "ctr" else 0
    fusion += 2 * n_fused * (h + cond) * h + 2 * n_fused * h
  return _result(glob + short + theme, router, fusion, head_flops(cfg), dispatch, glob + short + theme,
                 global_expert=glob, short_expert=short, theme_experts=theme)


def _moe(cfg: ModelConfig, batch_size: int) -> dict[str, float]:
  moe = cfg.moe
  e, d, h, length = moe.num_experts, cfg.embed_dim, cfg.hidden_dim, cfg.num_sessions * cfg.session_len
  feat = d * (2 if cfg.task == "ctr" else 1)
  enc = encoder_flops(cfg, length)
  if cfg.name == "dselect_k":
    m = gating.binary_codes(e).shape[1]
    router = 2 * feat * (moe.dselect_k * m + moe.dselect_k) + 2 * moe.dselect_k * e  # + mixing of the k selectors
    # Dense: every expert on every example, then the weighted sum over experts (the only overhead).
    return _result(moe.dselect_k * enc, router, 0.0, head_flops(cfg), 2 * e * h, e * enc, experts_executed=e * enc)
  k = moe.top_k if cfg.name == "gshard" else 1
  cf = moe.capacity_factor if cfg.name == "gshard" else moe.expert_choice_capacity_factor
  c = gating.capacity(batch_size, e, cf, k=k)
  slots = e * c / batch_size  # expert slots per example (capacity slack included)
  # GShard builds dispatch/combine masks with two [B,k,E]x[B,k,E,C] einsums (+ the [B,k]x[B,k,E] gate product).
  dispatch = (2 * 2 * k * e * c + 2 * k * e) if cfg.name == "gshard" else 0.0
  if cfg.dispatch == "einsum":
    # x and mask; the CTR target too, but only for hosts that read it (JAX drops the unused dispatch).
    per_slot = length * d + length + (d if cfg.task == "ctr" and cfg.backbone not in TARGET_BLIND else 0)
    # 'bec,bf->ecf' and 'bec,ech->bh' contract over the batch: 2*B*E*C*F per batch = 2*E*C*F per example.
    dispatch += 2 * e * c * per_slot + 2 * e * c * h
  active = k * enc if cfg.name == "gshard" else slots * enc
  return _result(active, 2 * feat * e, 0.0, head_flops(cfg), dispatch, slots * enc,
                 experts_executed=slots * enc)


def count_flops(cfg: ModelConfig, *, batch_size: int = 256) -> dict[str, float]:
  """Forward FLOPs per example of the model ``cfg.name`` (see the module docstring for the keys).

  ``batch_size`` (the MoE routing group) only matters for gshard / expert_choice.
  """
  if batch_size < 1:
    raise ValueError(f"count_flops: batch_size={batch_size!r}: expected an integer >= 1")
  if cfg.name == "mos":
    return _mos(cfg)
  if cfg.name == "backbone":
    enc = encoder_flops(cfg, cfg.num_sessions * cfg.session_len)
    return _result(enc, 0.0, 0.0, head_flops(cfg), 0.0, enc)
  if cfg.name in MOE_MODELS:
    return _moe(cfg, batch_size)
  raise ValueError(f"count_flops: ModelConfig.name={cfg.name!r}: expected one of {MODEL_NAMES}")


__all__ = ["ENCODER_FLOPS", "count_flops", "encoder_flops", "head_flops"]
