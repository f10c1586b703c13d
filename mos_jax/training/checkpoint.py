"""Orbax checkpoints in ``WORKDIR/checkpoints``: ``latest/`` (the last ``keep`` saves) and ``best/`` (best validation).

Each checkpoint step holds four items:

* ``state``: the ``TrainState`` (parameters, optimizer state, step, RNG stream state), unreplicated;
* ``data``: the training iterator's state (JSON), so a resumed run sees exactly the batches it would have seen;
* ``loop``: the loop's own state (best metric so far, evaluations without improvement, whether it stopped early);
* ``config``: the full run config (JSON). A checkpoint whose model config differs from the current one is refused
  before any array is read.

Saves are asynchronous (the arrays are copied to the host before ``save`` returns); ``wait`` blocks until written.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import orbax.checkpoint as ocp

from mos_jax import config as config_lib

ITEMS = ("state", "data", "loop", "config")
# Train fields that shape the learning-rate schedule or the optimizer update: a resume that changes one of them does
# not continue the checkpointed run (num_epochs counts only while num_steps = 0, when it sets the run's length).
SCHEDULE_FIELDS = ("batch_size", "num_steps", "num_epochs", "learning_rate", "warmup_steps", "decay", "end_lr_ratio",
                   "b1", "b2", "eps", "grad_clip_norm", "weight_decay", "no_decay")


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot be used, with what to do about it."""


def _options(keep: int, async_save: bool, create: bool, kind: str) -> ocp.CheckpointManagerOptions:
  # Each manager its own barrier names: with several processes, asynchronous saves of the same step into latest/ and
  # best/ would otherwise share Orbax's '_async_write_complete.<step>' barrier and fail (FAILED_PRECONDITION).
  barriers = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=kind)
  kwargs: dict[str, Any] = dict(enable_async_checkpointing=async_save, create=create, multiprocessing_options=barriers)
  policies = getattr(ocp, "checkpoint_managers", None)
  if hasattr(policies, "LatestN"):
    kwargs["preservation_policy"] = policies.LatestN(n=keep)  # max_to_keep is deprecated in recent Orbax
  else:
    kwargs["max_to_keep"] = keep
  return ocp.CheckpointManagerOptions(**kwargs)


class Checkpoints:
  """The ``latest`` and ``best`` checkpoint managers of one work directory."""

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 2, async_save: bool = True, read_only: bool = False):
    """``read_only``: open existing checkpoints only (eval.py); nothing is created and a missing directory is an error."""
    self.root = pathlib.Path(workdir).expanduser().resolve() / "checkpoints"
    if self.root.exists() and not self.root.is_dir():
      raise CheckpointError(f"{self.root} exists but is not a directory; remove it or choose another --workdir")
    if read_only and not self.root.is_dir():
      raise CheckpointError(f"no checkpoints: {self.root} does not exist (was a run trained with this --workdir?)")
    if keep < 1:
      raise CheckpointError(f"config.train.keep must be >= 1, got {keep}")
    self._managers: dict[str, ocp.CheckpointManager] = {}
    for kind in ("latest", "best"):
      path = self.root / kind
      if read_only and not path.is_dir():
        continue
      try:
        self._managers[kind] = ocp.CheckpointManager(path, options=_options(keep if kind == "latest" else 1,
                                                                             async_save, not read_only, kind))
      except Exception as e:  # e.g. unreadable directory, garbage where step folders should be
        raise CheckpointError(f"cannot open checkpoint directory {path}: {type(e).__name__}: {e}") from e

  # --------------------------------------------------------------------------------------------------- queries

  def steps(self, kind: str = "latest") -> list[int]:
    m = self._managers.get(kind)
    return sorted(m.all_steps()) if m is not None else []

  def latest_step(self, kind: str = "latest") -> int | None:
    steps = self.steps(kind)
    return steps[-1] if steps else None

  def _dir(self, kind: str, step: int) -> pathlib.Path:
    return self.root / kind / str(step)

  # --------------------------------------------------------------------------------------------------- save

  def save(self, step: int, state: Any, *, data_state: Any, loop_state: dict[str, Any], cfg: config_lib.Config,
           kind: str = "latest") -> None:
    """Starts an (asynchronous) save of ``step``; a step that is already saved is left as it is."""
    m = self._managers[kind]
    if step in m.all_steps():
      return
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        loop=ocp.args.JsonSave(loop_state),
        config=ocp.args.JsonSave(config_lib.to_dict(cfg)),
    )
    m.save(step, args=args)

  def wait(self) -> None:
    for m in self._managers.values():
      m.wait_until_finished()

  def close(self) -> None:
    for m in self._managers.values():
      m.close()

  # --------------------------------------------------------------------------------------------------- restore

  def saved_config(self, step: int, kind: str = "latest") -> config_lib.Config:
    """The config stored with a checkpoint (reads only that item)."""
    where = self._dir(kind, step)
    try:
      raw = self._managers[kind].restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    except Exception as e:
      raise CheckpointError(f"checkpoint {where} is unreadable ({type(e).__name__}: {e}); delete that step folder to "
                            f"fall back to an earlier one, or train in a fresh --workdir") from e
    try:
      return config_lib.config_from_dict(raw)
    except (config_lib.ConfigError, TypeError) as e:
      raise CheckpointError(f"checkpoint {where} holds a config this version cannot read: {e}") from e

  def check_compatible(self, step: int, cfg: config_lib.Config, kind: str = "latest") -> None:
    """Refuses a checkpoint written by a different model or data config: the parameters would not fit or mean the
    same, or the resumed run would silently read other examples. (Where prepared copies live, and whether rows are
    read from memory or the ArrayRecord copy, does not matter: the batches are the same.)"""
    saved = self.saved_config(step, kind)
    differences = config_lib.diff(saved.model, cfg.model, prefix="model.")
    differences += [d for d in config_lib.diff(saved.data, cfg.data, prefix="data.")
                    if not d.startswith(("data.cache_dir:", "data.format:"))]
    if differences:
      lines = "\n  ".join(f"{d}  (checkpoint vs now)" for d in differences)
      what = "model" if all(d.startswith("model.") for d in differences) else "model or data"
      raise CheckpointError(
          f"checkpoint {self._dir(kind, step)} was written by a different {what} config:\n  {lines}\n"
          f"Use the config it was trained with, or a fresh --workdir for this model.")

  def check_schedule(self, step: int, cfg: config_lib.Config, kind: str = "latest") -> list[str]:
    """Refuses a resume whose schedule or optimizer fields differ from the checkpoint's, unless
    ``cfg.train.allow_schedule_change``; returns the differences (``train.FIELD: old -> new``) either way."""
    changes = schedule_changes(self.saved_config(step, kind).train, cfg.train)
    if changes and not cfg.train.allow_schedule_change:
      lines = "\n  ".join(changes)
      raise CheckpointError(
          f"checkpoint {self._dir(kind, step)} was trained with another schedule (checkpoint -> now):\n  {lines}\n"
          f"Resuming would silently change the run's schedule. Use the original values, a fresh --workdir, or "
          f"--config.train.allow_schedule_change=true to continue from step {step} on the new schedule.")
    return changes

  def restore(self, step: int, abstract_state: Any, kind: str = "latest") -> tuple[Any, Any, dict[str, Any]]:
    """(state, data_state, loop_state) of ``step``; ``abstract_state`` gives shapes, dtypes and shardings."""
    where = self._dir(kind, step)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                              loop=ocp.args.JsonRestore())
    try:
      out = self._managers[kind].restore(step, args=args)
    except Exception as e:
      raise CheckpointError(f"checkpoint {where} is unreadable or does not match this model "
                            f"({type(e).__name__}: {str(e)[:500]}); delete that step folder to fall back to an "
                            f"earlier one, or train in a fresh --workdir") from e
    return out["state"], out["data"], out["loop"]


def schedule_changes(saved: Any, now: Any) -> list[str]:
  """``train.FIELD: old -> new`` for each of ``SCHEDULE_FIELDS`` that differs between two ``TrainConfig``s."""
  out = []
  for name in SCHEDULE_FIELDS:
    if name == "num_epochs" and saved.num_steps > 0 and now.num_steps > 0:
      continue  # num_steps sets the length in both runs; num_epochs is unused
    old, new = getattr(saved, name), getattr(now, name)
    if old != new:
      out.append(f"train.{name}: {old!r} -> {new!r}")
  return out


@dataclasses.dataclass
class LoopState:
  """What the loop must remember across a restart besides the arrays and the data order."""

  best_metric: float | None = None
  best_step: int = -1
  evals_without_improvement: int = 0
  stopped_early: bool = False
