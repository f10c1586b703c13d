"""Losses and the optimizer of ``mos_jax.training`` in PyTorch: weighted task loss + aux loss, and AdamW with the
same schedule, global-norm clipping and weight-decay mask as ``mos_jax.training.optimizer.make_optimizer``.

optax's ``adamw`` and ``torch.optim.AdamW`` take the same step: eps outside the square root of the bias-corrected
second moment, and decoupled decay ``p -= lr * wd * p`` with the scheduled lr. The decay mask is computed on the
JAX name of each parameter (``kernel``, ``embedding``, ``scale``, stacked expert axis included), so exactly the
parameters optax decays are decayed here.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mos_jax.training.config import TrainConfig

_JAX_LEAF = {nn.Linear: {"weight": "kernel"}, nn.Embedding: {"weight": "embedding"}, nn.LayerNorm: {"weight": "scale"},
             nn.GRUCell: {"weight_ih": "kernel", "weight_hh": "kernel", "bias_ih": "bias", "bias_hh": "bias"}}
_STACKED = ("theme_experts", "experts")


def per_example_loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor], task: str) -> torch.Tensor:
  """CTR: sigmoid cross-entropy vs ``label``; next: softmax cross-entropy vs ``target_item`` over all items."""
  if task == "ctr":
    return F.binary_cross_entropy_with_logits(logits, batch["label"].float(), reduction="none")
  if task == "next":
    return F.cross_entropy(logits, batch["target_item"].long(), reduction="none")
  raise ValueError(f"task must be 'ctr' or 'next', got {task!r}")


def total_loss(logits: torch.Tensor, aux_loss: torch.Tensor, batch: Mapping[str, torch.Tensor], task: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
  """(weighted task loss + aux loss, task loss), as ``mos_jax.training.losses.total_loss``."""
  w = batch["weight"].float()
  den = w.sum()
  task_loss = torch.where(den > 0, (w * per_example_loss(logits, batch, task)).sum() / torch.clamp(den, min=1e-30),
                          torch.zeros_like(den))
  return task_loss + aux_loss, task_loss


def decays(model: nn.Module, no_decay: tuple[str, ...]) -> dict[str, bool]:
  """{parameter name: decayed?} by optax's rule on the JAX name: no ``no_decay`` part and more than one axis."""
  out = {}
  for mod_name, mod in model.named_modules():
    for pname, p in mod.named_parameters(recurse=False):
      names = [n for n in mod_name.split(".") if n] + [_JAX_LEAF.get(type(mod), {}).get(pname, pname)]
      stacked = bool(names) and names[0] in _STACKED
      ndim = p.ndim + int(stacked)
      out[f"{mod_name}.{pname}" if mod_name else pname] = (
          not any(nd in n for n in names for nd in no_decay) and ndim > 1)
  return out


def learning_rate(cfg: TrainConfig, total_steps: int, count: int) -> float:
  """``mos_jax.training.optimizer.learning_rate_schedule(cfg, total_steps)(count)`` in plain Python."""
  peak, end_ratio = cfg.learning_rate, cfg.end_lr_ratio
  warmup = min(cfg.warmup_steps, total_steps)
  decay_steps = max(total_steps - warmup, 1)
  if warmup > 0 and count < warmup:
    return peak * count / warmup
  t = min(max(count - warmup, 0), decay_steps)
  if cfg.decay == "cosine":
    return peak * ((1 - end_ratio) * 0.5 * (1 + math.cos(math.pi * t / decay_steps)) + end_ratio)
  if cfg.decay == "linear":
    return peak + (peak * end_ratio - peak) * t / decay_steps
  return peak


def make_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int
                   ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
  """AdamW over two parameter groups (decayed / not) and the warmup + decay schedule (step it after each update)."""
  flags = decays(model, tuple(cfg.no_decay))
  params = dict(model.named_parameters())
  groups = [{"params": [params[n] for n in params if flags[n]], "weight_decay": cfg.weight_decay},
            {"params": [params[n] for n in params if not flags[n]], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.b1, cfg.b2), eps=cfg.eps, foreach=False)
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda count: learning_rate(cfg, total_steps, count) / cfg.learning_rate)
  return opt, sched


def clip_by_global_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
  """optax.clip_by_global_norm: scale every gradient by max_norm / norm when the global norm exceeds max_norm."""
  grads = [p.grad for p in model.parameters() if p.grad is not None]
  norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).float()
  if max_norm > 0 and norm >= max_norm:
    for g in grads:
      g.mul_(max_norm / norm)
  return norm


def train_step(model: nn.Module, opt: torch.optim.Optimizer, sched, batch: Mapping[str, torch.Tensor], task: str,
               grad_clip_norm: float) -> dict[str, float]:
  """One update in training mode: loss, gradients, clipping, AdamW, schedule; returns loss and grad_norm."""
  model.train()
  opt.zero_grad(set_to_none=True)
  out = model(batch)
  loss, task_loss = total_loss(out.logits, out.aux_loss, batch, task)
  loss.backward()
  norm = clip_by_global_norm(model, grad_clip_norm)
  opt.step()
  sched.step()
  return {"loss": float(loss.detach()), "task_loss": float(task_loss.detach()), "grad_norm": float(norm)}
