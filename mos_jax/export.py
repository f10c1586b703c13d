"""Serving export: ``python -m mos_jax.export --workdir=W [--checkpoint=best|latest]``.

Writes ``W/export/`` (or ``--out``) with three files, which ``mos_jax.serving.load`` reads with jax + numpy only:

* ``model.jaxexport``: the evaluation-mode forward pass (``deterministic=True``) serialised with ``jax.export``, with a
  symbolic batch dimension ``b``; parameters are its first argument (a flat list), the batch dict its second;
* ``params.npz``: the restored parameters, one array per leaf, named by their path in the model (``embedder/item/...``);
* ``signature.json``: inputs (name, dtype, shape with ``"b"`` for the batch), the output, task, S, T, the parameter
  list in argument order, the model config, the checkpoint, jax version, calling convention and platforms.

Output: CTR ``prob`` float32 ``[b]`` (sigmoid of the logit, what eval.py's logloss scores); next-item ``scores``
float32 ``[b, num_items + 1]`` (logits, column 0 = padding = -1e9). The inputs are the batch keys the model reads in
evaluation mode (found by tracing), except ``weight``: every served row is a real row. Evaluation routing of every
model is per example (docs/baselines.md), so GShard and Expert Choice export with a symbolic batch too; a model whose
forward pass needs a concrete batch size is refused with a clear error. The folder is written beside the target and
renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT_VERSION = 1
MODEL_FILE, PARAMS_FILE, SIGNATURE_FILE = "model.jaxexport", "params.npz", "signature.json"
BATCH_SYMBOL = "b"
DEFAULT_PLATFORMS = ("cpu", "cuda")
# Every batch key of docs/interfaces.md: (dtype, trailing shape as a function of S, T). The model's inputs are the
# subset it reads; ``weight`` only marks the padding rows of an evaluation batch, so serving never takes it.
BATCH_KEYS: dict[str, tuple[str, Any]] = {
    "items": ("int32", lambda s, t: (s, t)),
    "cats": ("int32", lambda s, t: (s, t)),
    "times": ("int32", lambda s, t: (s, t)),
    "session_theme": ("int32", lambda s, t: (s,)),
    "target_item": ("int32", lambda s, t: ()),
    "target_cat": ("int32", lambda s, t: ()),
    "label": ("float32", lambda s, t: ()),
    "user": ("int32", lambda s, t: ()),
    "session_start": ("int32", lambda s, t: ()),
    "hist_len": ("int32", lambda s, t: ()),
}
NOT_SERVED = ("weight",)


class ExportError(RuntimeError):
  """A run that cannot be exported, with the reason."""


class _Recorder(dict):
  """A batch dict that remembers which keys the model reads (``[]``, ``get`` or ``in``)."""

  def __init__(self, data: Mapping[str, Any], seen: set[str]):
    super().__init__(data)
    self._seen = seen

  def __getitem__(self, key):
    self._seen.add(key)
    return super().__getitem__(key)

  def get(self, key, default=None):
    self._seen.add(key)
    return super().get(key, default)

  def __contains__(self, key):
    self._seen.add(key)
    return super().__contains__(key)


def _leaf_name(path: tuple) -> str:
  """Path ``('embedder', 'item', 'embedding', .value)`` -> ``embedder/item/embedding`` (``.value`` dropped)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value":
      continue
    parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
  return "/".join(parts)


def make_serve_fn(graphdef: Any, params: Any, rest: Any, task: str):
  """``serve(param_leaves: list, batch: dict) -> prob [B] | scores [B, V]`` in evaluation mode, plus the leaves and
  their names. ``rest`` (RNG stream state; unused without dropout) is closed over as constants."""
  from flax import nnx  # noqa: PLC0415

  named, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [_leaf_name(p) for p, _ in named]
  if len(set(names)) != len(names):
    raise ExportError(f"parameter names are not unique: {sorted(n for n in names if names.count(n) > 1)}")

  def serve(leaves: list, batch: Mapping[str, jax.Array]) -> jax.Array:
    model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves), rest)
    logits = model(batch, deterministic=True).logits
    return jax.nn.sigmoid(logits) if task == "ctr" else logits

  return serve, [x for _, x in named], names


def batch_spec(num_sessions: int, session_len: int, batch: Any, keys: tuple[str, ...] | None = None) -> dict:
  """``{key: ShapeDtypeStruct}`` for the batch keys (all of BATCH_KEYS by default) with leading dimension ``batch``."""
  keys = tuple(BATCH_KEYS) if keys is None else keys
  return {k: jax.ShapeDtypeStruct((batch,) + BATCH_KEYS[k][1](num_sessions, session_len), jnp.dtype(BATCH_KEYS[k][0]))
          for k in keys}


def used_keys(serve, leaves: list, num_sessions: int, session_len: int) -> tuple[str, ...]:
  """The batch keys the forward pass reads (traced abstractly at batch 2, nothing compiled), in BATCH_KEYS order."""
  seen: set[str] = set()
  spec = batch_spec(num_sessions, session_len, 2)
  jax.eval_shape(lambda p, b: serve(p, _Recorder(b, seen)), [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
                 spec)
  return tuple(k for k in BATCH_KEYS if k in seen)


def export_symbolic(serve, leaves: list, spec: dict, *, platforms: tuple[str, ...], what: str) -> jax.export.Exported:
  """``jax.export`` of ``serve`` with the batch spec's symbolic dimension; a clear ExportError when the forward pass
  needs a concrete batch size."""
  try:
    return jax.export.export(jax.jit(serve), platforms=platforms)(
        [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves], spec)
  except Exception as e:  # shape-polymorphism failures surface as several exception types
    raise ExportError(
        f"{what} cannot be exported with a symbolic batch dimension: its evaluation forward pass depends on the "
        f"concrete batch size ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Export is only "
        f"supported for models whose evaluation routing is per example (docs/serving.md)") from e


def _write_dir_atomic(target: pathlib.Path, files: Mapping[str, Any]) -> None:
  """Writes ``files`` (name -> writer(path)) into a temp folder beside ``target`` and renames it into place."""
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
  try:
    for name, write in files.items():
      write(tmp / name)
    old = None
    if target.exists():
      old = target.with_name(f".{target.name}.old-{os.getpid()}")
      os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def export_run(workdir: str | pathlib.Path, kind: str = "best", *, out: str | pathlib.Path | None = None,
               platforms: tuple[str, ...] = DEFAULT_PLATFORMS, note=print) -> pathlib.Path:
  """Exports the run's ``kind`` checkpoint (``best`` falls back to ``latest``) to ``out`` (``WORKDIR/export``)."""
  from mos_jax import config as config_lib  # noqa: PLC0415
  from mos_jax.training.restore import restore_run  # noqa: PLC0415

  workdir = pathlib.Path(workdir).expanduser()
  cfg, run, executor, step, kind = restore_run(workdir, kind, note=note)
  state = executor.saveable_state()
  task, s, t = cfg.data.task, cfg.model.num_sessions, cfg.model.session_len
  what = f"model {cfg.model.name!r} ({cfg.model.backbone})"
  serve, leaves, names = make_serve_fn(run.graphdef, state.params, state.rest, task)
  keys = tuple(k for k in used_keys(serve, leaves, s, t) if k not in NOT_SERVED)
  b, = jax.export.symbolic_shape(BATCH_SYMBOL)
  spec = batch_spec(s, t, b, keys)
  exported = export_symbolic(serve, leaves, spec, platforms=tuple(platforms), what=what)

  host = [np.asarray(x) for x in leaves]
  out_name, out_shape = ("prob", [BATCH_SYMBOL]) if task == "ctr" else ("scores", [BATCH_SYMBOL,
                                                                                   cfg.model.num_items + 1])
  signature = {
      "format": FORMAT_VERSION,
      "task": task,
      "num_sessions": s,
      "session_len": t,
      "batch_symbol": BATCH_SYMBOL,
      "inputs": [{"name": k, "dtype": str(v.dtype), "shape": [BATCH_SYMBOL, *v.shape[1:]]} for k, v in spec.items()],
      "output": {"name": out_name, "dtype": "float32", "shape": out_shape},
      "params": [{"name": n, "dtype": str(x.dtype), "shape": list(x.shape)} for n, x in zip(names, host)],
      "model": config_lib.to_dict(cfg)["model"],
      "dataset": cfg.data.dataset,
      "checkpoint": {"workdir": str(workdir.resolve()), "kind": kind, "step": int(step)},
      "jax_version": jax.__version__,
      "calling_convention_version": exported.calling_convention_version,
      "platforms": list(exported.platforms),
  }
  target = pathlib.Path(out).expanduser() if out is not None else workdir / "export"
  _write_dir_atomic(target, {
      MODEL_FILE: lambda p: p.write_bytes(exported.serialize()),
      PARAMS_FILE: lambda p: np.savez(p, **dict(zip(names, host))),
      SIGNATURE_FILE: lambda p: p.write_text(json.dumps(signature, indent=2) + "\n", encoding="utf-8"),
  })
  return target


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m mos_jax.export", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="the run's work directory (holds checkpoints/)")
  p.add_argument("--checkpoint", default="best", choices=("best", "latest"))
  p.add_argument("--out", default=None, help="output folder (default WORKDIR/export)")
  p.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                 help="comma-separated lowering platforms (cpu, cuda, rocm, tpu)")
  return p


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  from mos_jax.runtime import compilation_cache_dir  # noqa: PLC0415

  jax.config.update("jax_compilation_cache_dir", compilation_cache_dir())
  from mos_jax import config as config_lib  # noqa: PLC0415
  from mos_jax.data import DataError  # noqa: PLC0415
  from mos_jax.training.checkpoint import CheckpointError  # noqa: PLC0415

  platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
  if not platforms:
    print("error: --platforms: expected at least one of cpu, cuda, rocm, tpu", file=sys.stderr)
    return 2
  try:
    target = export_run(args.workdir, args.checkpoint, out=args.out, platforms=platforms)
  except (ExportError, CheckpointError, config_lib.ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {target} ({', '.join(sorted(p.name for p in target.iterdir()))})")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
