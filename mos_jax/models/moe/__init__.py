"""Sequence-level MoE baselines on the shared backbone encoders: GShard, Expert Choice, DSelect-k.

``build_moe_model(cfg, rngs=...)`` is what ``mos_jax.models.build_model`` calls for cfg.name in MOE_MODELS.
The routing math (``gating``) and the dispatchers (``dispatch``) are pure functions, tested on exact arrays.
"""

from __future__ import annotations

from mos_jax.models.config import MOE_MODELS
from mos_jax.models.moe.gating import Routing, capacity, dselect_k_weights, expert_choice_routing, top_k_routing


def build_moe_model(cfg, *, rngs):
  """The MoE baseline named by ``cfg.name`` (an ``nnx.Module`` returning ``ModelOutput``)."""
  from mos_jax.models.moe.model import MoEModel  # lazy: needs the model core (embedding, encoders, heads)

  return MoEModel(cfg, rngs=rngs)


__all__ = [
    "MOE_MODELS", "Routing", "build_moe_model", "capacity", "dselect_k_weights", "expert_choice_routing",
    "top_k_routing",
]
