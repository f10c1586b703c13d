"""Parameter names and layouts between mos_jax (Flax NNX) and its PyTorch reference (``mos_jax.reference.torch``).

Pure numpy, so the mapping (and its round trip) works and is tested without torch. JAX parameters are a flat dict
``{path tuple: array}`` as ``nnx.to_flat_state(params)`` gives; torch parameters are a ``state_dict``-style flat dict
``{"a.b.c": array}``. The torch modules mirror the NNX module tree, so a path maps by these rules:

* ``kernel [in, out]`` (``nnx.Linear``) -> ``weight [out, in]`` (``nn.Linear``), transposed;
* ``embedding`` (``nnx.Embed``) -> ``weight`` (``nn.Embedding``); ``scale`` (``nnx.LayerNorm``) -> ``weight``;
* GRU4Rec's input / recurrent layers ``inp`` / ``rec`` -> ``cell.weight_ih`` / ``cell.weight_hh`` (and ``bias_ih`` /
  ``bias_hh``) of one ``nn.GRUCell`` (both use PyTorch's [r | z | n] gate order);
* stacked experts (``theme_experts`` of MoS, ``experts`` of the MoE baselines; leading axis = number of experts) ->
  one module per expert, ``theme_experts.0.…``, ``theme_experts.1.…`` (an ``nn.ModuleList``);
* everything else (biases, the fusion gate's ``bias``, router ``prototypes`` and ``pool_query``) keeps its name and
  layout; MoS's ``shared_theme_expert`` (``theme_params='shared'``) is one unstacked encoder and maps like the global
  expert's.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

STACKED = ("theme_experts", "experts")  # NNX attributes whose parameters carry a leading expert axis
_GRU = {"inp": ("cell", "ih"), "rec": ("cell", "hh")}


class ConversionError(ValueError):
  """Parameters that do not fit the model they are converted for (names or shapes); the message names them."""


def _leaf_name(path: tuple[Any, ...]) -> tuple[list[str], bool]:
  """JAX path (one expert, no stacking) -> (torch name parts, transpose?)."""
  parts = [str(p) for p in path]
  *mods, leaf = parts
  if mods and mods[-1] in _GRU and leaf in ("kernel", "bias"):
    cell, which = _GRU[mods[-1]]
    return mods[:-1] + [cell, ("weight_" if leaf == "kernel" else "bias_") + which], leaf == "kernel"
  if leaf == "kernel":
    return mods + ["weight"], True
  if leaf in ("embedding", "scale"):
    return mods + ["weight"], False
  return parts, False


def torch_names(path: tuple[Any, ...], shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...], Any]]:
  """The torch parameters one JAX leaf becomes: ``[(name, torch shape, expert index or None)]``."""
  stacked = bool(path) and str(path[0]) in STACKED
  inner = path[1:] if stacked else path
  parts, transpose = _leaf_name(inner)
  one = tuple(shape[1:]) if stacked else tuple(shape)
  if transpose:
    if len(one) != 2:
      raise ConversionError(f"parameter {'.'.join(map(str, path))}: expected a 2-D kernel, got shape {shape}")
    one = one[::-1]
  if not stacked:
    return [(".".join(parts), one, None)]
  return [(".".join([str(path[0]), str(e)] + parts), one, e) for e in range(shape[0])]


def _to_torch_layout(a: np.ndarray, transpose: bool) -> np.ndarray:
  return np.ascontiguousarray(a.T) if transpose else np.asarray(a)


def jax_to_torch(params: Mapping[tuple[Any, ...], Any]) -> dict[str, np.ndarray]:
  """Flat JAX params ``{path: array}`` -> torch ``{name: array}`` in torch layout (float32 numpy)."""
  out: dict[str, np.ndarray] = {}
  for path, value in params.items():
    a = np.asarray(value)
    transpose = _leaf_name(path[1:] if str(path[0]) in STACKED else path)[1]
    for name, _, e in torch_names(path, a.shape):
      out[name] = _to_torch_layout(a if e is None else a[e], transpose)
  return out


def torch_to_jax(state_dict: Mapping[str, Any], template: Mapping[tuple[Any, ...], Any]) -> dict[tuple[Any, ...],
                                                                                                  np.ndarray]:
  """torch ``{name: array}`` -> flat JAX params shaped like ``template`` (``{path: array or ShapeDtypeStruct}``).

  Raises ConversionError naming every missing or unexpected parameter, or the first one whose shape or dtype kind
  does not fit.
  """
  expected = {}
  for path, leaf in template.items():
    for name, shape, e in torch_names(path, tuple(leaf.shape)):
      expected[name] = (path, shape, e)
  missing = sorted(set(expected) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(expected))
  if missing or unexpected:
    raise ConversionError("torch parameters do not match the model: "
                          + (f"missing {missing}" if missing else "")
                          + ("; " if missing and unexpected else "")
                          + (f"unexpected {unexpected}" if unexpected else ""))
  pieces: dict[tuple[Any, ...], dict[Any, np.ndarray]] = {}
  for name, (path, shape, e) in expected.items():
    a = np.asarray(state_dict[name])
    if tuple(a.shape) != shape:
      raise ConversionError(f"parameter {name}: expected shape {shape} (JAX {'.'.join(map(str, path))} "
                            f"{tuple(template[path].shape)}), got {tuple(a.shape)}")
    if not np.issubdtype(a.dtype, np.floating):
      raise ConversionError(f"parameter {name}: expected a floating-point tensor, got dtype {a.dtype}")
    transpose = _leaf_name(path[1:] if e is not None else path)[1]
    pieces.setdefault(path, {})[e] = _to_torch_layout(a, transpose)
  out = {}
  for path, parts in pieces.items():
    dtype = np.dtype(template[path].dtype)
    value = parts[None] if None in parts else np.stack([parts[e] for e in range(len(parts))])
    out[path] = value.astype(dtype)
  return out
