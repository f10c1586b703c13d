"""Configuration of the models (owned by ``mos_jax.models``).

Every reconstructed choice of the MoS forward pass (docs/model.md) is a switch here with a documented default;
docs/model.md lists them with the reasoning behind each default.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mos_jax.models.host_configs import (DINConfig, GRU4RecConfig, Mamba4RecConfig, SASRecConfig, SDIMConfig,
                                         TransActConfig, TWINConfig)

MOE_MODELS = ("gshard", "expert_choice", "dselect_k")  # sequence-level MoE baselines (mos_jax.models.moe)
MODEL_NAMES = ("mos", "backbone") + MOE_MODELS

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class MoEConfig:
  """Sequence-level MoE baselines (GShard, Expert Choice, DSelect-k); docs/baselines.md.

  One routing token = one example (a whole user sequence); the routing group is the batch. Each expert is a full
  backbone encoder over all S*T items. Aux-loss weights come from ModelConfig.balance_loss_weight / z_loss_weight.
  """

  num_experts: int = 4  # E
  top_k: int = 2  # GShard: experts per example
  capacity_factor: float = 1.25  # GShard: C = ceil(cf * top_k * B / E), clipped to [1, B]
  normalize_gates: bool = True  # GShard: the top_k gates of an example sum to 1
  expert_choice_capacity_factor: float = 2.0  # Expert Choice: C = ceil(cf * B / E); 2 ~ slots of top-2 at cf=1
  dselect_k: int = 2  # DSelect-k: number of single-expert selectors (k)
  dselect_gamma: float = 1.0  # DSelect-k smooth-step width
  dselect_entropy_weight: float = 0.0  # DSelect-k: weight of the selector-entropy regulariser (sparsity pressure)

  def validate(self) -> "MoEConfig":
    """Raises ValueError naming the offending field; returns self."""

    def bad(field, value, expected):
      raise ValueError(f"ModelConfig.moe.{field}={value!r}: expected {expected}")

    if self.num_experts < 1:
      bad("num_experts", self.num_experts, "an integer >= 1")
    if not 1 <= self.top_k <= self.num_experts:
      bad("top_k", self.top_k, f"an integer in [1, num_experts={self.num_experts}]")
    if not 1 <= self.dselect_k <= self.num_experts:
      bad("dselect_k", self.dselect_k, f"an integer in [1, num_experts={self.num_experts}]")
    for field in ("capacity_factor", "expert_choice_capacity_factor", "dselect_gamma"):
      if getattr(self, field) <= 0:
        bad(field, getattr(self, field), "> 0")
    if self.dselect_entropy_weight < 0:
      bad("dselect_entropy_weight", self.dselect_entropy_weight, ">= 0")
    return self


@dataclasses.dataclass
class ModelConfig:
  name: str = "mos"  # mos | backbone | gshard | expert_choice | dselect_k
  backbone: str = "sasrec"  # encoder registry name: sasrec | gru4rec | din | transact | sdim | twin | mamba4rec
  # Filled from the prepared dataset by the training code:
  task: str = "ctr"  # ctr | next
  num_items: int = 0  # largest item id (0 = padding)
  num_cats: int = 0
  # The item / category tables get their rows rounded up to a multiple of this (extra rows are never looked up), so
  # that they can be split over a mesh axis (train.embedding_sharding); 1 = exactly num + 1 rows.
  embedding_rows_multiple: int = 1
  num_sessions: int = 16  # S
  session_len: int = 16  # T
  # Encoder sizes.
  embed_dim: int = 32  # D
  hidden_dim: int = 32  # H (encoder output)
  num_layers: int = 1
  num_heads: int = 2
  ffn_multiplier: int = 2  # SASRec feed-forward width = ffn_multiplier * D
  dropout: float = 0.1
  use_category: bool = True
  dtype: str = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
  # Long sequences (docs/model.md, "Long sequences"): SASRec / TransAct self-attention through
  # jax.nn.dot_product_attention (xla | cudnn) or the hand-written einsum path; jax.checkpoint per encoder block.
  attention: str = "xla"  # xla | cudnn (GPU, bf16/fp16) | einsum
  remat: str = "none"  # none | full (recompute the whole block) | dots (keep weight-matmul outputs)
  # MoS routing.
  num_themes: int = 4  # K
  top_k: int = 1
  capacity_factor: float = 1.5
  capacity_multiple: int = 1  # round C up to a multiple of this
  router: str = "linear"  # linear | prototype
  router_temperature: float = 1.0
  # Prototype router only: the logit scale 1 / temperature is a learned parameter (``log_scale``, initialised from
  # router_temperature), so cosine logits in [-1, 1] can sharpen as far as training needs; False = fixed temperature.
  router_learn_temperature: bool = True
  router_mlp: bool = False
  router_input: str = "mean"  # session summary the router reads: mean | last (most recent item) | attention (pooled)
  dispatch: str = "einsum"  # einsum | gather
  route_by: str = "router"  # router | label (external session label in batch['session_theme'])
  # Reconstructed routing choices (docs/model.md):
  routing_priority: str = "choice"  # choice: every 1st choice beats every 2nd choice | time: sessions in order only
  drop_policy: str = "oldest"  # oldest | newest: which sessions of an overflowing theme are dropped
  gate_scaling: str = "multiply"  # multiply | straight_through | none: how the router gate scales theme outputs
  # MoS experts and fusion.
  use_theme_experts: bool = True
  use_global_expert: bool = True
  use_short_expert: bool = True
  # Theme-expert parameters: separate (K stacked encoders) | shared (one encoder for every theme) | global (the
  # global expert's encoder runs the theme subsequences too; needs use_global_expert).
  theme_params: str = "separate"
  short_sessions: int = 2  # n: sessions seen by the short-term expert
  fusion: str = "gate"  # gate (learned, target-conditioned in CTR mode) | mean (masked average)
  # CTR only: the router also scores the candidate item, and log p(theme | target) is added to each theme expert's
  # fusion score, so the theme the candidate belongs to decides which subsequence counts (search-based long-sequence
  # models in spirit; issue 11). It also gives the router a direct gradient from the CTR loss.
  target_routing: bool = False
  head_hidden: int = 64  # CTR head MLP width
  # CTR only: a learned scalar bias per target item and per target category added to the logit (a factorisation
  # machine's first-order terms): item popularity in one parameter per item, the same for every model (issue 21).
  ctr_bias: bool = False
  # CTR only: the head also reads log(1 + how often the target item, and its category, occur in the history): the
  # target-to-history match that target-attention hosts learn, given to every model as two numbers (issue 21).
  history_match: bool = False
  # Auxiliary losses.
  balance_loss_weight: float = 0.01
  z_loss_weight: float = 0.001
  # Mutual-information clustering loss on the router, weighted: mean per-session routing entropy minus the entropy of
  # the batch's mean routing distribution (confident for each session, every theme used); 0 = off.
  router_mi_weight: float = 0.0
  moe: MoEConfig = dataclasses.field(default_factory=MoEConfig)
  # Per-host settings; only the one named by `backbone` is used (SASRec / GRU4Rec options: docs/protocol.md).
  sasrec: SASRecConfig = dataclasses.field(default_factory=SASRecConfig)
  gru4rec: GRU4RecConfig = dataclasses.field(default_factory=GRU4RecConfig)
  din: DINConfig = dataclasses.field(default_factory=DINConfig)
  transact: TransActConfig = dataclasses.field(default_factory=TransActConfig)
  sdim: SDIMConfig = dataclasses.field(default_factory=SDIMConfig)
  twin: TWINConfig = dataclasses.field(default_factory=TWINConfig)
  mamba4rec: Mamba4RecConfig = dataclasses.field(default_factory=Mamba4RecConfig)

  @property
  def compute_dtype(self):
    """The jnp dtype of activations (params are always float32)."""
    return _DTYPES[self.dtype]

  def validate(self) -> "ModelConfig":
    """Raises ValueError naming the offending field; returns self so calls can chain."""

    def bad(field, value, expected):
      raise ValueError(f"ModelConfig.{field}={value!r}: expected {expected}")

    choices = {
      "name": MODEL_NAMES,
      "task": ("ctr", "next"),
      "dtype": tuple(_DTYPES),
      "router": ("linear", "prototype"),
      "router_input": ("mean", "last", "attention"),
      "theme_params": ("separate", "shared", "global"),
      "dispatch": ("einsum", "gather"),
      "route_by": ("router", "label"),
      "routing_priority": ("choice", "time"),
      "drop_policy": ("oldest", "newest"),
      "gate_scaling": ("multiply", "straight_through", "none"),
      "fusion": ("gate", "mean"),
      "attention": ("xla", "cudnn", "einsum"),
      "remat": ("none", "full", "dots"),
    }
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        bad(field, getattr(self, field), f"one of {allowed}")
    for field in ("num_items", "num_sessions", "session_len", "embed_dim", "hidden_dim", "num_layers",
                  "num_heads", "num_themes", "capacity_multiple", "short_sessions", "ffn_multiplier", "head_hidden",
                  "embedding_rows_multiple"):
      if getattr(self, field) < 1:
        bad(field, getattr(self, field),
            "an integer >= 1" + (" (filled from the dataset's meta)" if field == "num_items" else ""))
    if self.num_cats < 0:
      bad("num_cats", self.num_cats, ">= 0")
    if self.embed_dim % self.num_heads:
      bad("num_heads", self.num_heads, f"a divisor of embed_dim={self.embed_dim}")
    if self.top_k not in (1, 2) or self.top_k > self.num_themes:
      bad("top_k", self.top_k, f"1 or 2 and <= num_themes={self.num_themes}")
    if self.capacity_factor <= 0:
      bad("capacity_factor", self.capacity_factor, "> 0")
    if self.router_mi_weight < 0:
      bad("router_mi_weight", self.router_mi_weight, ">= 0")
    if self.router_temperature <= 0:
      bad("router_temperature", self.router_temperature, "> 0")
    if not isinstance(self.router_learn_temperature, bool):
      bad("router_learn_temperature", self.router_learn_temperature, "True or False")
    for field in ("ctr_bias", "history_match"):
      if not isinstance(getattr(self, field), bool):
        bad(field, getattr(self, field), "True or False")
    if not 0.0 <= self.dropout < 1.0:
      bad("dropout", self.dropout, "in [0, 1)")
    if self.name in MOE_MODELS:
      self.moe.validate()
    if self.backbone in ("din", "sdim", "twin") and self.task != "ctr":
      bad("backbone", self.backbone, f"a target-free encoder in task={self.task!r} (din, sdim and twin attend to the "
                                      f"CTR target; next-item mode has none)")
    if self.backbone in ("din", "transact", "sdim", "twin", "mamba4rec"):
      getattr(self, self.backbone).validate()
    if self.backbone == "sasrec":
      self.sasrec.validate(self.embed_dim, self.hidden_dim)
    if self.backbone == "gru4rec":
      self.gru4rec.validate()
    if self.target_routing and (self.task != "ctr" or not self.use_theme_experts or self.route_by != "router"):
      bad("target_routing", True, "False unless task='ctr', use_theme_experts=True and route_by='router'")
    if self.theme_params == "global" and not self.use_global_expert:
      bad("theme_params", "global", "separate or shared when use_global_expert=False (there is no global encoder)")
    if self.name == "mos" and not (self.use_theme_experts or self.use_global_expert or self.use_short_expert):
      bad("use_theme_experts", False, "at least one of use_theme_experts/use_global_expert/use_short_expert")
    return self
