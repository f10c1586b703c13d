"""The training loop: steps, logging, periodic validation, early stopping, checkpoints, resume and graceful stop.

Re-running the same command resumes from the latest checkpoint: parameters, optimizer state, RNG stream state, the
data iterator's position and the loop's early-stopping state all come back, so the run continues exactly as if it had
never stopped. SIGTERM or SIGINT finish the current step, save a checkpoint, and return (a second SIGINT aborts).

With several processes (``train.distributed``) every process runs this loop on its slice of each global batch;
process 0 alone writes metrics.jsonl, TensorBoard, config.json, the progress bar and messages, and a stop signal
received by any process stops all of them at the next logging step (training/distributed.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from mos_jax import config as config_lib
from mos_jax.config import Config
from mos_jax.evaluation import predict_rows, row_metrics
from mos_jax.training import checkpoint as ckpt_lib
from mos_jax.training import distributed
from mos_jax.training.metrics_log import MetricsLog
from mos_jax.training.parallel import Executor
from mos_jax.training.setup import build_run

LOSS_LIKE = ("logloss", "loss")


@dataclasses.dataclass
class TrainResult:
  status: str  # finished | early_stopped | interrupted | already_done
  step: int
  total_steps: int
  best_metric: float | None
  best_step: int
  metric: str
  last_eval: dict[str, float]
  stop_signal: int | None = None  # the signal that interrupted the run


class StopSignals:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each step (main thread only); a 2nd SIGINT aborts."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)


def early_stop_metric(cfg: Config) -> tuple[str, str]:
  """(metric name, 'max' | 'min') from the config; 'auto' picks AUC (CTR) or NDCG@10 (next-item)."""
  t = cfg.train
  name = t.early_stop_metric
  if name == "auto":
    name = "auc" if cfg.data.task == "ctr" else "ndcg@10"
  mode = t.early_stop_mode
  if mode == "auto":
    mode = "min" if name in LOSS_LIKE else "max"
  if mode not in ("max", "min"):
    raise ValueError(f"config.train.early_stop_mode: expected max, min or auto, got {t.early_stop_mode!r}")
  return name, mode


def predict_split(executor: Executor, arrays: dict[str, np.ndarray], cfg: Config) -> np.ndarray:
  """Per-row outputs (CTR logits / next-item target ranks) of the executor's parameters on a whole split, in row
  order (padded final batch, padding rows dropped)."""
  from mos_jax import data as data_lib  # noqa: PLC0415

  batches = data_lib.make_iterator(arrays, batch_size=cfg.train.eval_batch_size, seed=0, shuffle=False,
                                   drop_remainder=False, pad_to_full=True, num_epochs=1)
  block = cfg.train.eval_item_block if cfg.data.task == "next" else 0
  return predict_rows(executor.predict_fn(query_only=block > 0), batches, task=cfg.data.task,
                      exclude_history=cfg.train.eval_exclude_history, item_block=block)


def evaluate_split(executor: Executor, arrays: dict[str, np.ndarray], cfg: Config) -> dict[str, float]:
  """Metrics of the executor's current parameters on a whole split."""
  return row_metrics(predict_split(executor, arrays, cfg), task=cfg.data.task, label=arrays.get("label"),
                     user=arrays.get("user"))


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n", encoding="utf-8")
  os.replace(tmp, path)


def train(cfg: Config, *, on_step: Callable[[int], None] | None = None,
          devices: list[jax.Device] | None = None) -> TrainResult:
  """Trains (or resumes) the run described by ``cfg`` in ``cfg.workdir``; ``on_step(step)`` runs after each step."""
  from mos_jax import data as data_lib  # noqa: PLC0415

  distributed.check_started(cfg.train)
  primary = distributed.is_primary()
  run = build_run(cfg)
  cfg, t, task = run.cfg, run.cfg.train, run.cfg.data.task
  workdir = pathlib.Path(cfg.workdir).expanduser()
  workdir.mkdir(parents=True, exist_ok=True)
  metric, mode = early_stop_metric(cfg)
  # data.seed drives the train order and the train negatives, redrawn every epoch (a function of the epoch, so a
  # resumed run continues exactly); valid/test negatives are fixed in the prepared folder.
  # data.format='array_record': the train rows are read batch by batch from the on-disk ArrayRecord copy (the same
  # batches and state as the in-memory path, docs/data.md); evaluation splits stay in memory.
  records = cfg.data.format == "array_record"
  train_arrays = None if records else run.dataset.split("train", task, seed=cfg.data.seed)
  item_counts = None
  if task == "next" and t.next_loss == "sampled" and t.sampled_proposal == "popularity":
    targets = run.dataset.events["item"][run.dataset.targets["train_target"]] if records \
        else train_arrays["target_item"]
    item_counts = np.bincount(targets, minlength=cfg.model.num_items + 1)[1:]
  executor = Executor(t, run.graphdef, run.tx, run.schedule, task, run.state, devices, item_counts=item_counts)
  ckpts = ckpt_lib.Checkpoints(workdir, keep=t.keep, async_save=t.async_checkpoints)
  epoch_fields = None
  if task == "ctr":
    epoch_fields = run.dataset.train_epoch_fields(seed=cfg.data.seed) if records \
        else run.dataset.epoch_fields(train_arrays, seed=cfg.data.seed)
  # With several processes each loads its rows of every global batch; the iterator's state does not depend on it.
  shard_index, shard_count = executor.batch_shard(t.batch_size)
  iterator_args = dict(batch_size=t.batch_size // shard_count, seed=cfg.data.seed, shuffle=True, drop_remainder=True,
                       epoch_fields=epoch_fields, shard_index=shard_index, shard_count=shard_count)
  it = data_lib.make_record_iterator(run.dataset.path, "train", task, **iterator_args) if records \
      else data_lib.make_iterator(train_arrays, **iterator_args)
  loop = ckpt_lib.LoopState()
  start = ckpts.latest_step()
  if start is not None:
    try:
      ckpts.check_compatible(start, cfg)
      schedule_changed = ckpts.check_schedule(start, cfg)
      state, data_state, loop_dict = ckpts.restore(start, executor.abstract_state(run.state))
    except Exception:
      ckpts.close()
      raise
    executor.load(state)
    try:
      it.set_state(data_state)
    except ValueError as e:  # e.g. another batch size: the saved data position means nothing now
      ckpts.close()
      raise ckpt_lib.CheckpointError(f"cannot resume {ckpts.root}: {e}; use the original data and batch settings "
                                     f"or a fresh --workdir") from e
    loop = ckpt_lib.LoopState(**loop_dict)
    if primary:
      print(f"resuming {workdir} from step {start}")
      if schedule_changed:
        print("schedule changed on resume (allow_schedule_change=true): " + "; ".join(schedule_changed))
  if primary:
    write_json_atomic(workdir / "config.json", config_lib.to_dict(cfg))
  step = start or 0
  # Built once (packing the grids is not free); on 'train', the run's own epoch-0 negatives.
  eval_arrays = run.dataset.split(t.eval_split, task, seed=cfg.data.seed)
  last_eval: dict[str, float] = {}
  last_eval_step = -1

  def save(kind: str = "latest") -> None:
    data_state, loop_state = it.get_state(), dataclasses.asdict(loop)
    distributed.check_same_everywhere({"data": data_state, "loop": loop_state}, "the checkpoint's data/loop state")
    ckpts.save(step, executor.saveable_state(), data_state=data_state, loop_state=loop_state, cfg=cfg, kind=kind)

  def validate() -> None:
    nonlocal last_eval, last_eval_step
    res = evaluate_split(executor, eval_arrays, cfg)
    log.write(step, t.eval_split, res)
    if metric not in res:
      raise ValueError(f"config.train.early_stop_metric={metric!r} is not among the {task} metrics {sorted(res)}")
    value = float(res[metric])
    best = loop.best_metric
    better = not math.isnan(value) and (best is None or (value > best if mode == "max" else value < best))
    if better:
      loop.best_metric, loop.best_step, loop.evals_without_improvement = value, step, 0
      save("best")
    else:
      loop.evals_without_improvement += 1
      if t.patience > 0 and loop.evals_without_improvement >= t.patience:
        loop.stopped_early = True
    last_eval, last_eval_step = res, step
    say(f"step {step}: {t.eval_split} " + " ".join(f"{k}={v:.4f}" for k, v in res.items() if isinstance(v, float)))

  if step >= run.total_steps or loop.stopped_early:
    ckpts.close()
    return TrainResult("already_done", step, run.total_steps, loop.best_metric, loop.best_step, metric, {})

  log = MetricsLog(workdir, resume_step=start, write=primary)
  # disable=None: tqdm turns itself off when stderr is not a terminal (CI logs, files).
  bar = tqdm(total=run.total_steps, initial=step, unit="step", disable=None if t.progress_bar and primary else True,
             dynamic_ncols=True)
  say = bar.write if primary else (lambda msg: None)
  multi = distributed.multi_process()
  status = "finished"
  try:
    with StopSignals() as stop:
      t0, since, stopped_by = time.perf_counter(), 0, None
      while step < run.total_steps and not loop.stopped_early:
        metrics = executor.train_step(next(it), t.batch_size)
        step += 1
        since += 1
        bar.update(1)
        if on_step is not None:
          on_step(step)
        if step % t.log_every == 0 or step == run.total_steps:
          host = distributed.to_host(metrics)  # waits for the step: the timing below is honest
          dt = time.perf_counter() - t0
          flat = log.write(step, "train", {**host, "examples_per_s": since * t.batch_size / dt})
          bar.set_postfix(loss=f"{flat['loss']:.4f}", ex_s=f"{flat['examples_per_s']:.0f}")
          t0, since = time.perf_counter(), 0
        if t.eval_every > 0 and step % t.eval_every == 0:
          validate()
          t0, since = time.perf_counter(), 0
        stopped_by = stop.signum
        if multi:  # every process stops at the same (logging) step, or the others would wait for it forever
          stopped_by = (distributed.max_over_processes(stop.signum or 0) or None) if step % t.log_every == 0 else None
        if stopped_by is not None and step < run.total_steps:
          status = "interrupted"
          save()
          ckpts.wait()
          say(f"stopped by {signal.Signals(stopped_by).name} at step {step}; checkpoint saved in "
              f"{ckpts.root}. Re-run the same command to resume.")
          break
        if t.checkpoint_every > 0 and step % t.checkpoint_every == 0 and step < run.total_steps \
            and not loop.stopped_early:
          save()  # asynchronous; the final checkpoint is written below, after the final validation
      if status != "interrupted":
        if last_eval_step != step:
          validate()  # the run's final validation (also decides the best checkpoint when eval_every = 0)
        status = "early_stopped" if loop.stopped_early else "finished"
        save()
  finally:
    ckpts.wait()
    ckpts.close()
    log.close()
    bar.close()
  return TrainResult(status, step, run.total_steps, loop.best_metric, loop.best_step, metric, last_eval,
                     stopped_by if status == "interrupted" else None)
