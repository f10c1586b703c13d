"""Optax AdamW with a warmup + decay schedule, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

from typing import Any

import jax
import optax

from mos_jax.training.config import TrainConfig

DECAYS = ("cosine", "linear", "constant")


def learning_rate_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then decay to ``end_lr_ratio * learning_rate``."""
  if cfg.decay not in DECAYS:
    raise ValueError(f"config.train.decay: expected one of {DECAYS}, got {cfg.decay!r}")
  if cfg.warmup_steps < 0 or total_steps < 1:
    raise ValueError(f"config.train.warmup_steps must be >= 0 and the run >= 1 step, got {cfg.warmup_steps}, "
                     f"{total_steps}")
  peak, end = cfg.learning_rate, cfg.learning_rate * cfg.end_lr_ratio
  warmup = min(cfg.warmup_steps, total_steps)
  decay_steps = max(total_steps - warmup, 1)
  if cfg.decay == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_ratio)
  elif cfg.decay == "linear":
    after = optax.linear_schedule(peak, end, decay_steps)
  else:
    after = optax.constant_schedule(peak)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def _path_names(path: tuple[Any, ...]) -> list[str]:
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
  return names


def decay_mask(params: Any, no_decay: tuple[str, ...]) -> Any:
  """A pytree of bools like ``params``: True where weight decay applies.

  A parameter is excluded when any element of its path (module attribute or parameter name) contains one of the
  ``no_decay`` names, e.g. ``bias``, ``scale`` (norms) and ``embedding`` tables; 1-D parameters are excluded too.
  """
  def keep(path, leaf):
    names = _path_names(path)
    if any(nd in name for name in names for nd in no_decay):
      return False
    return getattr(leaf, "ndim", 0) > 1

  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
  """clip_by_global_norm -> AdamW(schedule, masked weight decay)."""
  schedule = learning_rate_schedule(cfg, total_steps)
  adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                      mask=lambda p: decay_mask(p, cfg.no_decay))
  if cfg.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw)
  return adamw
