"""Metric records: ``WORKDIR/metrics.jsonl`` (one JSON object per line) and TensorBoard events (tensorboardX).

On resume from step n, records after n left by the interrupted run are dropped (the file is rewritten atomically and
TensorBoard is told to purge them), so the logs read as if the run had never stopped. With several processes only
process 0 writes (``write=False`` elsewhere: records are only flattened).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Mapping

import numpy as np


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Scalars stay; ``[K]`` vectors (e.g. expert usage) become ``name/0 .. name/K-1``."""
  out: dict[str, float] = {}
  for k, v in metrics.items():
    a = np.asarray(v)
    if a.ndim == 0:
      out[k] = float(a)
    else:
      for i, x in enumerate(a.reshape(-1)):
        out[f"{k}/{i}"] = float(x)
  return out


def _json_value(x: float) -> float | None:
  return None if isinstance(x, float) and not math.isfinite(x) else x


class MetricsLog:
  """Appends records to metrics.jsonl and TensorBoard; ``close`` flushes both."""

  def __init__(self, workdir: str | pathlib.Path, *, resume_step: int | None = None, tensorboard: bool = True,
               write: bool = True):
    self.workdir = pathlib.Path(workdir)
    self._file, self._tb = None, None
    if not write:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.path = self.workdir / "metrics.jsonl"
    if resume_step is not None:
      self._truncate_after(resume_step)
    elif self.path.exists():
      self.path.unlink()  # a fresh run in an old workdir starts a fresh log
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # noqa: PLC0415  (optional dependency)

      purge = None if resume_step is None else resume_step + 1
      self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=purge)

  def _truncate_after(self, step: int) -> None:
    if not self.path.exists():
      return
    kept = []
    for line in self.path.read_text(encoding="utf-8").splitlines():
      try:
        if json.loads(line).get("step", 0) <= step:
          kept.append(line)
      except json.JSONDecodeError:
        continue  # a line cut short by a hard kill
    tmp = self.path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, self.path)

  def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Records ``metrics`` of ``split`` (train | valid | test) at ``step``; returns the flattened values."""
    flat = flatten_metrics(metrics)
    if self._file is None:
      return flat
    record = {"step": int(step), "split": split, **{k: _json_value(v) for k, v in flat.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in flat.items():
        self._tb.add_scalar(f"{split}/{k}", v, step)
    return flat

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
