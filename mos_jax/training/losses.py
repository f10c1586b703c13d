"""Training losses (docs/interfaces.md): weighted cross-entropy for the task, plus the model's auxiliary loss.

The weighted mean is kept as a (sum, weight) pair so that data-parallel paths can add the pairs across devices and
divide once: that gives exactly the loss of the whole batch, whatever the split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

TASKS = ("ctr", "next")


def per_example_loss(logits: jax.Array, batch: dict[str, jax.Array], task: str) -> jax.Array:
  """Cross-entropy per example, float32 ``[B]``.

  ctr: sigmoid cross-entropy of ``logits[B]`` against ``batch['label'][B]``.
  next: softmax cross-entropy of ``logits[B, num_items + 1]`` against ``batch['target_item'][B]`` over all items.
  """
  logits = logits.astype(jnp.float32)  # losses in float32 even under bfloat16 compute
  if task == "ctr":
    if logits.ndim != 1:
      raise ValueError(f"ctr logits must be [B], got shape {logits.shape}")
    return optax.sigmoid_binary_cross_entropy(logits, batch["label"].astype(jnp.float32))
  if task == "next":
    if logits.ndim != 2:
      raise ValueError(f"next-item logits must be [B, num_items + 1], got shape {logits.shape}")
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["target_item"].astype(jnp.int32))
  raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def weighted_sum(logits: jax.Array, batch: dict[str, jax.Array], task: str) -> tuple[jax.Array, jax.Array]:
  """(sum of weight * loss, sum of weight) over the batch; padding rows have weight 0."""
  w = batch["weight"].astype(jnp.float32)
  return jnp.sum(w * per_example_loss(logits, batch, task)), jnp.sum(w)


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den, and 0 where the batch holds no weight at all."""
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def total_loss(logits: jax.Array, aux_loss: jax.Array, batch: dict[str, jax.Array], task: str
               ) -> tuple[jax.Array, jax.Array]:
  """(task loss + aux loss, task loss) for one whole batch."""
  num, den = weighted_sum(logits, batch, task)
  task_loss = safe_div(num, den)
  return task_loss + aux_loss.astype(jnp.float32), task_loss
