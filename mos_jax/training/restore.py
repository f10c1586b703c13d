"""Restoring a trained run for evaluation or analysis: its best (or latest) checkpoint and the config saved with it.

``restore_run(workdir, kind)`` is the restore logic of ``eval.py``: the best checkpoint by validation metric, falling
back to the latest one when no validation finished; the saved config; one device (results do not depend on how
training was parallelised); and a check that the dataset prepared from the saved config still gives the same model
sizes. Errors are ``CheckpointError`` (plus ``ConfigError`` / ``DataError`` from the config and data layers).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Callable, NamedTuple

import jax
from flax import nnx

from mos_jax import config as config_lib
from mos_jax.training import checkpoint as ckpt_lib
from mos_jax.training import step as step_lib
from mos_jax.training.parallel import Executor
from mos_jax.training.setup import Run, build_run


def _note(msg: str) -> None:
  print(msg, file=sys.stderr)


class Restored(NamedTuple):
  """What ``restore_run`` returns; unpacks as ``cfg, run, executor, step, kind``."""

  cfg: config_lib.Config  # the saved config, model sizes filled from the dataset, training set to one device
  run: Run  # dataset, graphdef, optimizer (run.state is the fresh initial state, not the restored one)
  executor: Executor  # holds the restored state on one device; ``executor.predict_fn()`` gives logits
  step: int
  kind: str  # the checkpoint actually used: best | latest

  @property
  def model(self) -> nnx.Module:
    """The NNX model with the restored parameters (a fresh merge on each access)."""
    return step_lib.merge_model(self.run.graphdef, self.executor.saveable_state())


def restore_run(workdir: str | pathlib.Path, kind: str = "best", *, eval_batch_size: int = 0,
                check_config: Callable[[config_lib.Config], None] | None = None,
                note: Callable[[str], None] | None = _note) -> Restored:
  """Restores ``WORKDIR/checkpoints/<kind>`` (``best`` falls back to ``latest``, with a note) on one device.

  ``eval_batch_size > 0`` overrides the run's ``train.eval_batch_size``; ``check_config(saved_cfg)`` may refuse the
  run (by raising) before the dataset and model are built; ``note`` receives the fallback message.
  """
  if kind not in ("best", "latest"):
    raise ckpt_lib.CheckpointError(f"checkpoint kind {kind!r}: expected 'best' or 'latest'")
  path = pathlib.Path(workdir).expanduser()
  if not path.is_dir():
    raise ckpt_lib.CheckpointError(f"--workdir={workdir}: no such directory")
  ckpts = ckpt_lib.Checkpoints(path, read_only=True)
  try:
    step = ckpts.latest_step(kind)
    if step is None and kind == "best":
      kind, step = "latest", ckpts.latest_step("latest")
      if step is not None and note is not None:
        note(f"note: no best checkpoint in {ckpts.root / 'best'} (no validation finished); using the latest, "
             f"step {step}")
    if step is None:
      raise ckpt_lib.CheckpointError(f"no checkpoints in {ckpts.root} (did training with --workdir={workdir} "
                                     f"save one?)")
    cfg = ckpts.saved_config(step, kind)
    if check_config is not None:
      check_config(cfg)
    saved_model = dataclasses.replace(cfg.model)
    # One device: the result does not depend on how training was parallelised.
    cfg.train.parallelism, cfg.train.mesh_data, cfg.train.mesh_expert = "mesh", 1, 1
    cfg.train.mesh_model, cfg.train.embedding_sharding = 1, "none"
    if eval_batch_size > 0:
      cfg.train.eval_batch_size = eval_batch_size
    run = build_run(cfg)
    changed = config_lib.diff(saved_model, run.cfg.model, prefix="model.")
    if changed:
      raise ckpt_lib.CheckpointError(
          f"the dataset prepared from the saved config no longer matches the checkpoint: {changed} (checkpoint vs now)")
    executor = Executor(cfg.train, run.graphdef, run.tx, run.schedule, cfg.data.task, run.state,
                        devices=jax.devices()[:1])
    state, _, _ = ckpts.restore(step, executor.abstract_state(run.state), kind=kind)
    executor.load(state)
  finally:
    ckpts.close()
  return Restored(run.cfg, run, executor, step, kind)
