"""Converts trained runs between mos_jax (Orbax checkpoints) and its PyTorch reference (``model.pt``).

    python -m mos_jax.convert --to-torch --workdir W --out model.pt [--checkpoint best|latest]
    python -m mos_jax.convert --from-torch model.pt --config CFG --workdir W [--config.FIELD=VALUE ...]

``--to-torch`` restores the run as ``eval.py`` does (best checkpoint, else latest) and writes ``{"format",
"state_dict", "config", "step"}`` with ``torch.save``; the state dict loads into
``mos_jax.reference.torch.build_model(cfg.model)`` with ``strict=True`` (checked before writing).
``--from-torch`` reads such a file (or a bare state dict), builds the run of CFG (data prepared as for training),
checks every parameter's name and shape, and writes ``W/checkpoints/{latest,best}/<step>`` that ``eval.py`` (and a
resumed ``train.py``, with a fresh optimizer state) reads. When the file holds a config, its model config must equal
CFG's. Outputs are written to a temporary path and then renamed. Names and layouts: ``mos_jax.reference.names``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any, Sequence

import numpy as np

FORMAT = "mos_jax.torch.v1"


def flat_params(params: Any) -> dict[tuple[Any, ...], np.ndarray]:
  """An ``nnx.State`` of parameters -> ``{path: numpy array}``."""
  from flax import nnx  # noqa: PLC0415

  return {path: np.asarray(v.get_value() if hasattr(v, "get_value") else v) for path, v in nnx.to_flat_state(params)}


def params_from_flat(template: Any, flat: dict[tuple[Any, ...], np.ndarray]) -> Any:
  """``template`` (an ``nnx.State`` of parameters) with every leaf replaced by ``flat[path]``."""
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  return nnx.from_flat_state([(path, v.replace(jnp.asarray(flat[path]))) for path, v in nnx.to_flat_state(template)])


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m mos_jax.convert", description=__doc__.splitlines()[0])
  mode = p.add_mutually_exclusive_group(required=True)
  mode.add_argument("--to-torch", action="store_true", help="Orbax checkpoint of --workdir -> --out model.pt")
  mode.add_argument("--from-torch", metavar="MODEL_PT", help="model.pt -> Orbax checkpoint in --workdir")
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", help="--to-torch: the .pt file to write")
  p.add_argument("--checkpoint", default="best", choices=("best", "latest"), help="--to-torch: which checkpoint")
  p.add_argument("--config", help="--from-torch: the config file the model belongs to (overrides may follow)")
  return p


def to_torch(workdir: str, out: str, kind: str = "best") -> pathlib.Path:
  """Writes the run's parameters as a PyTorch state dict; returns the path written."""
  import torch  # noqa: PLC0415

  from mos_jax import config as config_lib  # noqa: PLC0415
  from mos_jax.reference import names  # noqa: PLC0415
  from mos_jax.reference.torch import build_model  # noqa: PLC0415
  from mos_jax.training.restore import restore_run  # noqa: PLC0415

  restored = restore_run(workdir, kind, note=lambda m: print(m, file=sys.stderr))
  cfg = restored.cfg
  model = build_model(cfg.model)  # refuses switches the reference does not port, naming the field
  sd = {k: torch.tensor(v)
        for k, v in names.jax_to_torch(flat_params(restored.executor.saveable_state().params)).items()}
  model.load_state_dict(sd, strict=True)  # the mapping must fit the reference module exactly
  path = pathlib.Path(out).expanduser()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  torch.save({"format": FORMAT, "state_dict": model.state_dict(), "config": config_lib.to_dict(cfg),
              "step": int(restored.step), "checkpoint": restored.kind}, tmp)
  os.replace(tmp, path)
  return path


def _read_torch(path: str) -> tuple[dict[str, np.ndarray], dict | None, int]:
  import torch  # noqa: PLC0415

  from mos_jax.reference.names import ConversionError  # noqa: PLC0415

  p = pathlib.Path(path).expanduser()
  if not p.is_file():
    raise ConversionError(f"--from-torch={path}: no such file")
  try:
    payload = torch.load(p, map_location="cpu", weights_only=True)
  except Exception as e:
    raise ConversionError(f"--from-torch={path}: not a torch.save file this version can read "
                          f"({type(e).__name__}: {e})") from e
  if isinstance(payload, dict) and "state_dict" in payload:
    sd, config, step = payload["state_dict"], payload.get("config"), int(payload.get("step", 0))
  elif isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
    sd, config, step = payload, None, 0  # a bare model.state_dict()
  else:
    raise ConversionError(f"--from-torch={path}: expected a state dict or {{'state_dict': ...}}, got "
                          f"{type(payload).__name__}")
  return {k: v.detach().cpu().numpy() for k, v in sd.items()}, config, step


def from_torch(model_pt: str, argv: Sequence[str], workdir: str) -> pathlib.Path:
  """Writes ``workdir/checkpoints`` from a PyTorch state dict and the config given by ``argv``."""
  from mos_jax import config as config_lib  # noqa: PLC0415
  from mos_jax import data as data_lib  # noqa: PLC0415
  from mos_jax.reference import names  # noqa: PLC0415
  from mos_jax.reference.torch.models import check_supported  # noqa: PLC0415
  from mos_jax.training import checkpoint as ckpt_lib  # noqa: PLC0415
  from mos_jax.training import step as step_lib  # noqa: PLC0415
  from mos_jax.training.setup import build_run  # noqa: PLC0415

  import jax.numpy as jnp  # noqa: PLC0415

  root = pathlib.Path(workdir).expanduser().resolve()
  if (root / "checkpoints").exists():
    raise ckpt_lib.CheckpointError(f"{root / 'checkpoints'} already exists; convert into a fresh --workdir")
  sd, saved, step = _read_torch(model_pt)
  cfg = config_lib.parse_command_line([*argv, f"--workdir={root}"])
  run = build_run(cfg)
  check_supported(run.cfg.model)
  if saved is not None:
    differences = config_lib.diff(config_lib.config_from_dict(saved).model, run.cfg.model, prefix="model.")
    if differences:
      raise names.ConversionError(f"{model_pt} was written for another model config (file vs --config): "
                                  + "; ".join(differences))
  params = params_from_flat(run.state.params, names.torch_to_jax(sd, flat_params(run.state.params)))
  state = step_lib.TrainState(step=jnp.asarray(step, jnp.int32), params=params, rest=run.state.rest,
                              opt_state=run.tx.init(params))
  t, task = run.cfg.train, run.cfg.data.task
  train_arrays = run.dataset.split("train", task, seed=cfg.data.seed)  # the data position of a fresh run
  epoch_fields = run.dataset.epoch_fields(train_arrays, seed=cfg.data.seed) if task == "ctr" else None
  it = data_lib.make_iterator(train_arrays, batch_size=t.batch_size, seed=cfg.data.seed, shuffle=True,
                              drop_remainder=True, epoch_fields=epoch_fields)
  root.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
  try:
    ckpts = ckpt_lib.Checkpoints(tmp, keep=t.keep, async_save=False)
    for kind in ("latest", "best"):
      ckpts.save(step, state, data_state=it.get_state(), loop_state=dataclasses.asdict(ckpt_lib.LoopState()),
                 cfg=run.cfg, kind=kind)
    ckpts.wait()
    ckpts.close()
    os.replace(tmp / "checkpoints", root / "checkpoints")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return root / "checkpoints"


def main(argv: Sequence[str] | None = None) -> int:
  args, rest = _parser().parse_known_args(list(sys.argv[1:] if argv is None else argv))
  from mos_jax import config as config_lib  # noqa: PLC0415
  from mos_jax.data import DataError  # noqa: PLC0415
  from mos_jax.reference.names import ConversionError  # noqa: PLC0415
  from mos_jax.training.checkpoint import CheckpointError  # noqa: PLC0415

  try:
    if args.to_torch:
      if not args.out or rest:
        raise ConversionError("--to-torch needs --out=FILE and takes no config flags "
                              f"(got out={args.out!r}, extra {rest})")
      written = to_torch(args.workdir, args.out, args.checkpoint)
    else:
      if not args.config:
        raise ConversionError("--from-torch needs --config=FILE (the config the model was trained with)")
      written = from_torch(args.from_torch, [f"--config={args.config}", *rest], args.workdir)
  except (ConversionError, CheckpointError, config_lib.ConfigError, DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {written}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
