"""Loads a model written by ``python -m mos_jax.export`` and serves it with jax + numpy only (no flax, optax, orbax or
grain import: a serving process needs nothing else of this library).

``model = load(dir)``; ``model(batch) -> np.ndarray``: CTR probabilities float32 ``[B]`` or next-item scores float32
``[B, num_items + 1]`` (column 0 = padding). ``batch`` is a dict with at least the keys of ``model.inputs`` (the ones
eval.py feeds the model; extra keys are ignored), each with leading dimension B (any B >= 1). A missing key, a wrong
S or T or a non-integer id array raises ``ValueError`` naming the key and the expected shape. Format: docs/serving.md.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

MODEL_FILE, PARAMS_FILE, SIGNATURE_FILE = "model.jaxexport", "params.npz", "signature.json"
FORMAT_VERSION = 1


def _shape_text(shape: list) -> str:
  return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class ServingModel:
  """A deserialised export: call it with a batch dict."""

  def __init__(self, signature: dict[str, Any], exported: Any, params: list):
    self.signature = signature
    self.task: str = signature["task"]
    self.num_sessions: int = signature["num_sessions"]
    self.session_len: int = signature["session_len"]
    self.inputs: tuple[str, ...] = tuple(i["name"] for i in signature["inputs"])
    self._exported = exported
    self._params = params
    # One jit around the exported call: compiled once per batch size, then cached.
    self._call = jax.jit(exported.call)

  def _check(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(batch, Mapping):
      raise TypeError(f"batch: expected a dict of arrays with keys {list(self.inputs)}, got {type(batch).__name__}")
    sym = self.signature["batch_symbol"]
    size, first, out = None, None, {}
    for spec in self.signature["inputs"]:
      name, shape, dtype = spec["name"], spec["shape"], np.dtype(spec["dtype"])
      expected = f"{spec['dtype']} of shape {_shape_text(shape)} (S={self.num_sessions}, T={self.session_len})"
      if name not in batch:
        raise ValueError(f"batch is missing input {name!r}: expected {expected}")
      x = np.asarray(batch[name])
      if x.ndim != len(shape) or any(d != sym and d != n for d, n in zip(shape, x.shape)):
        raise ValueError(f"input {name!r}: expected {expected}, got shape {_shape_text(list(x.shape))}")
      if np.issubdtype(dtype, np.integer) and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"input {name!r}: expected integer ids ({expected}), got dtype {x.dtype}")
      if size is None:
        size, first = x.shape[0], name
      elif x.shape[0] != size:
        raise ValueError(f"input {name!r}: batch dimension {x.shape[0]} differs from {first!r}'s {size}")
      out[name] = x.astype(dtype, copy=False)
    if size == 0:
      raise ValueError(f"batch: expected at least one row, got 0 in {first!r}")
    return out

  def __call__(self, batch: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(self._call(self._params, self._check(batch)))


def load(path: str | pathlib.Path) -> ServingModel:
  """Reads ``model.jaxexport``, ``params.npz`` and ``signature.json`` from ``path``."""
  path = pathlib.Path(path).expanduser()
  for name in (MODEL_FILE, PARAMS_FILE, SIGNATURE_FILE):
    if not (path / name).is_file():
      raise FileNotFoundError(f"{path / name} not found (write it with python -m mos_jax.export --workdir=...)")
  signature = json.loads((path / SIGNATURE_FILE).read_text(encoding="utf-8"))
  if signature.get("format") != FORMAT_VERSION:
    raise ValueError(f"{path / SIGNATURE_FILE}: format {signature.get('format')!r}, expected {FORMAT_VERSION}")
  exported = jax.export.deserialize(bytearray((path / MODEL_FILE).read_bytes()))
  params = []
  with np.load(path / PARAMS_FILE) as npz:
    for spec in signature["params"]:
      if spec["name"] not in npz:
        raise ValueError(f"{path / PARAMS_FILE}: parameter {spec['name']!r} missing")
      x = npz[spec["name"]]
      if list(x.shape) != spec["shape"] or str(x.dtype) != spec["dtype"]:
        raise ValueError(f"{path / PARAMS_FILE}: parameter {spec['name']!r} is {x.dtype}{list(x.shape)}, signature "
                         f"says {spec['dtype']}{spec['shape']}")
      params.append(jax.device_put(x))
  return ServingModel(signature, exported, params)


__all__ = ["ServingModel", "load"]
