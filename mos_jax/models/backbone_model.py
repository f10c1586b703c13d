"""The plain-backbone baseline: one encoder on the whole S*T sequence, then the task head."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from mos_jax.models.config import ModelConfig
from mos_jax.models.embedding import Embedder
from mos_jax.models.encoders import build_encoder
from mos_jax.models.heads import TaskHead
from mos_jax.models.outputs import ModelOutput


class BackboneModel(nnx.Module):
  """embed -> encoder(x[B,S*T,D]) -> head. No routing: aux_loss = 0, metrics = {}."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.task = cfg.task
    self.embedder = Embedder(cfg, rngs=rngs)
    self.encoder = build_encoder(cfg, max_len=cfg.num_sessions * cfg.session_len, rngs=rngs)
    self.head = TaskHead(cfg, in_dim=self.encoder.out_dim, rngs=rngs)

  def __call__(self, batch: Mapping[str, jax.Array], *, deterministic: bool) -> ModelOutput:
    x, mask, target = self.embedder.embed_batch(batch)
    b, s, t, d = x.shape
    # The target reaches the encoder only in CTR mode: in next-item mode it is the label.
    tgt = target if self.task == "ctr" else None
    u = self.encoder(x.reshape(b, s * t, d), mask.reshape(b, s * t), tgt, deterministic=deterministic)
    logits, query = self.head.forward(u, target, self.embedder.item_table, deterministic=deterministic,
                                      batch=batch)
    return ModelOutput(logits, jnp.zeros((), jnp.float32), {}, query)
