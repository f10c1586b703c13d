"""The one encoder interface shared by MoS experts, the plain backbone and the MoE baselines, and its registry.

An encoder maps a masked sequence to one vector per row::

    encoder(x[N, L, D], mask[N, L], target[N, D] | None, *, deterministic) -> h[N, H]

``x`` is in chronological order (oldest first) and may hold padding anywhere (``mask`` False); padding must not
change the output, and a row with no valid position must give a finite vector. ``target`` is the CTR target item's
embedding (None in next-item mode); target-aware hosts (TransAct, SDIM, TWIN) use it, SASRec and GRU4Rec ignore it.

A new host is added by subclassing :class:`Encoder` with constructor ``(cfg, *, max_len, rngs)`` and decorating it
with ``@register_encoder("name")``; MoS and the baselines then pick it up through ``cfg.backbone``.
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from mos_jax.models.config import ModelConfig

_REGISTRY: dict[str, type["Encoder"]] = {}


class Encoder(nnx.Module):
  """Base class. Subclasses set ``self.out_dim`` (= H) and implement ``__call__`` as documented above."""

  out_dim: int

  def __call__(self, x: jax.Array, mask: jax.Array, target: jax.Array | None = None, *,
               deterministic: bool) -> jax.Array:
    raise NotImplementedError


def register_encoder(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
  """Class decorator adding an encoder to the registry under ``name``."""

  def wrap(cls: type[Encoder]) -> type[Encoder]:
    if name in _REGISTRY and _REGISTRY[name] is not cls:
      raise ValueError(f"encoder {name!r} is already registered to {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls

  return wrap


def encoder_names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def build_encoder(cfg: ModelConfig, *, max_len: int, rngs: nnx.Rngs, name: str | None = None) -> Encoder:
  """One encoder ``cfg.backbone`` (or ``name``) for sequences of at most ``max_len`` positions."""
  name = cfg.backbone if name is None else name
  if name not in _REGISTRY:
    raise ValueError(f"ModelConfig.backbone={name!r}: expected one of {encoder_names()}")
  return _REGISTRY[name](cfg, max_len=max_len, rngs=rngs)


def build_stacked_encoders(cfg: ModelConfig, *, num: int, max_len: int, rngs: nnx.Rngs,
                           name: str | None = None) -> Encoder:
  """``num`` independent encoders whose parameters are stacked on a leading axis of size ``num``.

  Each copy gets its own init and dropout keys (split rngs). Run them with :func:`apply_stacked_encoders`.
  """

  @nnx.split_rngs(splits=num)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(r: nnx.Rngs) -> Encoder:
    return build_encoder(cfg, max_len=max_len, rngs=r, name=name)

  return make(rngs)


def apply_stacked_encoders(encoders: Encoder, x: jax.Array, mask: jax.Array, target: jax.Array | None = None, *,
                           deterministic: bool) -> jax.Array:
  """Runs stacked encoders in one batched call: x[E,N,L,D], mask[E,N,L], target[E,N,D] | None -> h[E,N,H].

  Deterministic calls are pure (plain ``jax.vmap`` over a copy of the state), so they also work when the module's
  variables come from an outer trace (e.g. ``jax.grad`` over params with the rest of the state closed over).
  Training calls use ``nnx.vmap`` so that each copy's dropout RNG counter advances in place, like any NNX Dropout.
  """
  args = (x, mask) if target is None else (x, mask, target)

  def call(enc, *a):  # no default arguments: nnx.vmap binds defaults as extra mapped inputs
    return enc(*a[:2], a[2] if len(a) == 3 else None, deterministic=deterministic)

  if deterministic:
    graphdef, state = nnx.split(encoders)
    return jax.vmap(lambda st, *a: call(nnx.merge(graphdef, st, copy=True), *a))(state, *args)
  return nnx.vmap(call, in_axes=(0,) * (1 + len(args)), out_axes=0)(encoders, *args)
