"""Evaluates a trained run: ``python eval.py --workdir=WORKDIR [--split=test] [--checkpoint=best|latest]``.

Restores the best checkpoint (by validation metric; the latest one if no validation ran) together with the config it
was trained with, evaluates the split, prints a table and writes ``WORKDIR/eval_<split>.json`` (atomically).
CTR: logloss, AUC, GAUC. Next-item: HR@K, NDCG@K (K = 5, 10, 20, 50) and MRR over the full item set.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="the run's work directory (holds checkpoints/)")
  p.add_argument("--split", default="test", choices=("train", "valid", "test"))
  p.add_argument("--checkpoint", default="best", choices=("best", "latest"))
  p.add_argument("--batch_size", type=int, default=0, help="evaluation batch size (0 = the run's eval_batch_size)")
  return p


def format_table(metrics: dict, title: str) -> str:
  rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in metrics.items()]
  width = max(len(k) for k, _ in rows)
  vwidth = max(len(v) for _, v in rows)
  line = "-" * (width + vwidth + 3)
  return "\n".join([title, line] + [f"{k:<{width}} | {v:>{vwidth}}" for k, v in rows] + [line])


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  import jax  # noqa: PLC0415

  jax.config.update("jax_compilation_cache_dir",
                    os.environ.get("MOS_JAX_COMPILATION_CACHE", os.path.expanduser("~/.cache/mos_jax/jax_cache")))
  from mos_jax import config as config_lib  # noqa: PLC0415
  from mos_jax.data import DataError  # noqa: PLC0415
  from mos_jax.training import checkpoint as ckpt_lib  # noqa: PLC0415
  from mos_jax.training.loop import evaluate_split, write_json_atomic  # noqa: PLC0415
  from mos_jax.training.parallel import Executor  # noqa: PLC0415
  from mos_jax.training.setup import build_run  # noqa: PLC0415

  workdir = pathlib.Path(args.workdir).expanduser()
  try:
    if not workdir.is_dir():
      raise ckpt_lib.CheckpointError(f"--workdir={args.workdir}: no such directory")
    ckpts = ckpt_lib.Checkpoints(workdir, read_only=True)
    kind = args.checkpoint
    step = ckpts.latest_step(kind)
    if step is None and kind == "best":
      kind, step = "latest", ckpts.latest_step("latest")
      if step is not None:
        print(f"note: no best checkpoint in {ckpts.root / 'best'} (no validation finished); using the latest, "
              f"step {step}")
    if step is None:
      raise ckpt_lib.CheckpointError(f"no checkpoints in {ckpts.root} (did training with --workdir={args.workdir} "
                                     f"save one?)")
    cfg = ckpts.saved_config(step, kind)
    saved_model = dataclasses.replace(cfg.model)
    # Evaluate on one device: the result does not depend on how training was parallelised.
    cfg.train.parallelism, cfg.train.mesh_data, cfg.train.mesh_expert = "mesh", 1, 1
    if args.batch_size > 0:
      cfg.train.eval_batch_size = args.batch_size
    run = build_run(cfg)
    changed = config_lib.diff(saved_model, run.cfg.model, prefix="model.")
    if changed:
      raise ckpt_lib.CheckpointError(
          f"the dataset prepared from the saved config no longer matches the checkpoint: {changed} (checkpoint vs now)")
    executor = Executor(cfg.train, run.graphdef, run.tx, run.schedule, cfg.data.task, run.state,
                        devices=jax.devices()[:1])
    state, _, _ = ckpts.restore(step, executor.abstract_state(run.state), kind=kind)
    executor.load(state)
    metrics = evaluate_split(executor, run.dataset.split(args.split, cfg.data.task), cfg)
    ckpts.close()
  except (ckpt_lib.CheckpointError, config_lib.ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  title = f"{cfg.model.name} ({cfg.model.backbone}) on {cfg.data.dataset}/{cfg.data.task}, {args.split} split, " \
          f"{kind} checkpoint (step {step})"
  print(format_table(metrics, title))
  out = workdir / f"eval_{args.split}.json"
  write_json_atomic(out, {"split": args.split, "checkpoint": kind, "step": step, "model": cfg.model.name,
                          "dataset": cfg.data.dataset, "task": cfg.data.task, "metrics": metrics})
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
