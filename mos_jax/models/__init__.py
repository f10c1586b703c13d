"""Models of mos_jax: MoS, the plain backbone and (in ``moe``) the sequence-level MoE baselines.

``build_model(cfg, rngs=...)`` is the entry point (docs/interfaces.md). Building blocks reused by every model:
``Embedder`` (embedding), the encoder registry (encoders), ``TaskHead`` (heads), ``ModelOutput`` (outputs).
"""

from __future__ import annotations

from flax import nnx

from mos_jax.models.backbone_model import BackboneModel
from mos_jax.models.config import MODEL_NAMES, MOE_MODELS, ModelConfig, MoEConfig
from mos_jax.models.embedding import Embedder
from mos_jax.models.encoders import (Encoder, apply_stacked_encoders, build_encoder, build_stacked_encoders,
                                     encoder_names, register_encoder)
from mos_jax.models.heads import CTRHead, NextItemHead, TaskHead, item_scores
from mos_jax.models.mos import MoS
from mos_jax.models.outputs import ModelOutput


def build_model(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
  """Dispatches on ``cfg.name``: mos | backbone | gshard | expert_choice | dselect_k (validates cfg first)."""
  cfg.validate()
  if cfg.name == "mos":
    return MoS(cfg, rngs=rngs)
  if cfg.name == "backbone":
    return BackboneModel(cfg, rngs=rngs)
  if cfg.name in MOE_MODELS:
    from mos_jax.models.moe import build_moe_model  # noqa: PLC0415

    return build_moe_model(cfg, rngs=rngs)
  raise ValueError(f"ModelConfig.name={cfg.name!r}: expected one of {MODEL_NAMES}")


def set_batch_axis(model: nnx.Module, axis_name: str | None) -> None:
  """Makes every routing module of ``model`` compute its auxiliary-loss statistics over the global batch of the
  named data-parallel axis (pmap): values are psums over devices, gradients each device's share (routing.batch_mean).
  """
  for _, module in nnx.iter_modules(model):
    if hasattr(module, "batch_axis"):
      module.batch_axis = axis_name


__all__ = ["BackboneModel", "CTRHead", "Embedder", "Encoder", "ModelConfig", "MoEConfig", "ModelOutput", "MoS",
           "NextItemHead", "TaskHead", "apply_stacked_encoders", "build_encoder", "build_model",
           "build_stacked_encoders", "encoder_names", "item_scores", "register_encoder", "set_batch_axis"]
