"""Configuration of the models (owned by ``mos_jax.models``).

Every reconstructed choice of the MoS forward pass (DESIGN.md section 3) is a switch here with a documented default.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class MoEConfig:
  """Sequence-level MoE baselines (GShard, Expert Choice, DSelect-k)."""

  num_experts: int = 4
  top_k: int = 2  # GShard
  capacity_factor: float = 1.25  # GShard / Expert Choice, over the users of a batch
  dselect_gamma: float = 1.0  # DSelect-k smooth-step width
  dselect_entropy_weight: float = 0.0


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
  # MoS experts and fusion.
  use_theme_experts: bool = True
  use_global_expert: bool = True
  use_short_expert: bool = True
  short_sessions: int = 2  # n: sessions seen by the short-term expert
  # Auxiliary losses.
  balance_loss_weight: float = 0.01
  z_loss_weight: float = 0.001
  moe: MoEConfig = dataclasses.field(default_factory=MoEConfig)
