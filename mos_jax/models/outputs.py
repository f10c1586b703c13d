"""What every model returns (docs/interfaces.md, Model API)."""

from __future__ import annotations

from typing import NamedTuple

import jax


class ModelOutput(NamedTuple):
  """A pytree, so it passes through ``jax.jit`` unchanged.

  logits:   CTR float32 [B]; next-item float32 [B, num_items + 1] with column 0 (padding) = -1e9.
  aux_loss: float32 scalar, already weighted (balance + z-loss); 0 for models without routing.
  metrics:  routing metrics, float32 scalars or [K] vectors (empty dict for models without routing).
  query:    next-item only: [B, D] query q with logits[:, j] = q . item_table[j] (heads.item_scores) for j >= 1, used
            by the sampled / in-batch losses and the blocked evaluation; None for CTR.
  """

  logits: jax.Array
  aux_loss: jax.Array
  metrics: dict[str, jax.Array]
  query: jax.Array | None = None
