"""Configuration of the models (owned by ``mos_jax.models``).

Every reconstructed choice of the MoS forward pass (docs/model.md) is a switch here with a documented default;
docs/model.md lists them with the reasoning behind each default.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

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


SASREC_NORMS = ("pre", "post")
SASREC_POSITIONS = ("recency", "oldest")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu")


@dataclasses.dataclass
class SASRecConfig:
  """SASRec encoder options (encoders/sasrec.py). The defaults are this project's encoder; docs/protocol.md gives the
  values that reproduce RecBole's SASRec (configs/ml100k_sasrec.py sets them)."""

  norm: str = "pre"  # pre: x + f(LN(x)) | post: LN(x + f(x)) (BERT / RecBole)
  input_norm: bool = False  # LayerNorm on item + position embedding, before the input dropout (RecBole)
  final_norm: bool = True  # LayerNorm after the last block (pre-LN needs one; RecBole's post-LN stack has none)
  out_proj: bool = True  # Linear D -> H on the output; False needs hidden_dim == embed_dim (RecBole: none)
  positions: str = "recency"  # recency: 0 = most recent valid item | oldest: 0 = oldest valid item kept (RecBole)
  activation: str = "gelu_tanh"  # feed-forward: gelu_tanh (jax.nn.gelu default) | gelu (exact, erf) | relu
  layer_norm_eps: float = 1e-6  # Flax's default; RecBole 1e-12
  init_std: float = 0.0  # 0: Flax defaults; > 0: normal(std) Linear kernels and position table, zero biases
  attn_dropout: float = 0.0  # dropout on the attention probabilities (RecBole attn_dropout_prob)

  def validate(self, embed_dim: int, hidden_dim: int) -> "SASRecConfig":
    """Raises ValueError naming the offending field; returns self."""

    def bad(field, value, expected):
      raise ValueError(f"ModelConfig.sasrec.{field}={value!r}: expected {expected}")

    for field, allowed in (("norm", SASREC_NORMS), ("positions", SASREC_POSITIONS), ("activation", ACTIVATIONS)):
      if getattr(self, field) not in allowed:
        bad(field, getattr(self, field), f"one of {allowed}")
    if not self.out_proj and hidden_dim != embed_dim:
      bad("out_proj", False, f"True unless hidden_dim ({hidden_dim}) == embed_dim ({embed_dim})")
    if self.layer_norm_eps <= 0:
      bad("layer_norm_eps", self.layer_norm_eps, "> 0")
    if self.init_std < 0:
      bad("init_std", self.init_std, ">= 0 (0 = Flax default initialisers)")
    if not 0.0 <= self.attn_dropout < 1.0:
      bad("attn_dropout", self.attn_dropout, "in [0, 1)")
    return self


GRU_INITS = ("flax", "xavier")


@dataclasses.dataclass
class GRU4RecConfig:
  """GRU4Rec encoder options (encoders/gru4rec.py); RecBole's GRU4Rec is bias=False, init='xavier'."""

  bias: bool = True  # biases in the GRU gates (PyTorch's nn.GRU(bias=False) has none)
  init: str = "flax"  # flax: lecun-normal kernels | xavier: xavier-uniform kernels (RecBole)

  def validate(self) -> "GRU4RecConfig":
    """Raises ValueError naming the offending field; returns self."""
    if self.init not in GRU_INITS:
      raise ValueError(f"ModelConfig.gru4rec.init={self.init!r}: expected one of {GRU_INITS}")
    return self


@dataclasses.dataclass
class ModelConfig:
  name: str = "mos"  # mos | backbone | gshard | expert_choice | dselect_k
  backbone: str = "sasrec"  # encoder registry name: sasrec | gru4rec
  # Filled from the prepared dataset by the training code:
  task: str = "ctr"  # ctr | next
  num_items: int = 0  # largest item id (0 = padding)
  num_cats: int = 0
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
  # MoS routing.
  num_themes: int = 4  # K
  top_k: int = 1
  capacity_factor: float = 1.5
  capacity_multiple: int = 1  # round C up to a multiple of this
  router: str = "linear"  # linear | prototype
  router_temperature: float = 1.0
  router_mlp: bool = False
  dispatch: str = "einsum"  # einsum | gather
  route_by: str = "router"  # router | label (external session label in batch['session_theme'])
  # Reconstructed routing choices (docs/model.md):
  routing_priority: str = "choice"  # choice: every 1st choice beats every 2nd choice | time: sessions in order only
  drop_policy: str = "oldest"  # oldest | newest: which sessions of an overflowing theme are dropped
  gate_scaling: str = "multiply"  # multiply | straight_through | none: how the router gate scales dispatched sessions
  # MoS experts and fusion.
  use_theme_experts: bool = True
  use_global_expert: bool = True
  use_short_expert: bool = True
  short_sessions: int = 2  # n: sessions seen by the short-term expert
  fusion: str = "gate"  # gate (learned, target-conditioned in CTR mode) | mean (masked average)
  head_hidden: int = 64  # CTR head MLP width
  # Auxiliary losses.
  balance_loss_weight: float = 0.01
  z_loss_weight: float = 0.001
  moe: MoEConfig = dataclasses.field(default_factory=MoEConfig)
  # Encoder options (docs/protocol.md): each used only by its encoder.
  sasrec: SASRecConfig = dataclasses.field(default_factory=SASRecConfig)
  gru4rec: GRU4RecConfig = dataclasses.field(default_factory=GRU4RecConfig)

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
      "dispatch": ("einsum", "gather"),
      "route_by": ("router", "label"),
      "routing_priority": ("choice", "time"),
      "drop_policy": ("oldest", "newest"),
      "gate_scaling": ("multiply", "straight_through", "none"),
      "fusion": ("gate", "mean"),
    }
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        bad(field, getattr(self, field), f"one of {allowed}")
    for field in ("num_items", "num_sessions", "session_len", "embed_dim", "hidden_dim", "num_layers",
                  "num_heads", "num_themes", "capacity_multiple", "short_sessions", "ffn_multiplier", "head_hidden"):
      if getattr(self, field) < 1:
        bad(field, getattr(self, field), "an integer >= 1 (num_items is filled from the dataset's meta)")
    if self.num_cats < 0:
      bad("num_cats", self.num_cats, ">= 0")
    if self.embed_dim % self.num_heads:
      bad("num_heads", self.num_heads, f"a divisor of embed_dim={self.embed_dim}")
    if self.top_k not in (1, 2) or self.top_k > self.num_themes:
      bad("top_k", self.top_k, f"1 or 2 and <= num_themes={self.num_themes}")
    if self.capacity_factor <= 0:
      bad("capacity_factor", self.capacity_factor, "> 0")
    if self.router_temperature <= 0:
      bad("router_temperature", self.router_temperature, "> 0")
    if not 0.0 <= self.dropout < 1.0:
      bad("dropout", self.dropout, "in [0, 1)")
    if self.name in MOE_MODELS:
      self.moe.validate()
    if self.backbone == "sasrec":
      self.sasrec.validate(self.embed_dim, self.hidden_dim)
    if self.backbone == "gru4rec":
      self.gru4rec.validate()
    if self.name == "mos" and not (self.use_theme_experts or self.use_global_expert or self.use_short_expert):
      bad("use_theme_experts", False, "at least one of use_theme_experts/use_global_expert/use_short_expert")
    return self
