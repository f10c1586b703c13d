"""Training and validation curves of one or more runs, read from each ``WORKDIR/metrics.jsonl``, in one figure."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mos_jax.analysis import output

TRAIN_KEYS = ("loss",)
VALID_KEYS = ("auc", "gauc", "logloss", "ndcg@10", "hr@10", "mrr")
LOWER_IS_BETTER = ("logloss", "loss")


def read_metrics(workdir: str | pathlib.Path) -> dict[str, dict[str, list]]:
  """{split: {"step": [...], key: [...]}} from ``WORKDIR/metrics.jsonl``; a key missing from a record gives None.

  Lines cut short by a hard kill are skipped; records are kept in file order."""
  path = pathlib.Path(workdir).expanduser() / "metrics.jsonl"
  if not path.is_file():
    raise output.AnalysisError(f"{path}: no such file (expected the metrics log of a run trained with --workdir="
                               f"{workdir})")
  by_split: dict[str, list[dict]] = {}
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(r, dict) and "step" in r:
      by_split.setdefault(str(r.get("split", "train")), []).append(r)
  out: dict[str, dict[str, list]] = {}
  for split, recs in by_split.items():
    keys = [k for k in dict.fromkeys(k for r in recs for k in r) if k not in ("step", "split")]
    out[split] = {"step": [int(r["step"]) for r in recs], **{k: [r.get(k) for r in recs] for k in keys}}
  return out


def run_labels(workdirs: list[str | pathlib.Path]) -> list[str]:
  """Each workdir's folder name; with parent folders added where names would collide."""
  paths = [pathlib.Path(w).expanduser().resolve() for w in workdirs]
  depth = 1
  while True:
    labels = ["/".join(p.parts[-depth:]) for p in paths]
    if len(set(labels)) == len(labels) or depth >= max(len(p.parts) for p in paths):
      return labels
    depth += 1


def _best(values: list, key: str) -> dict[str, Any] | None:
  v = np.array([np.nan if x is None else x for x in values], np.float64)
  if not np.isfinite(v).any():
    return None
  i = int(np.nanargmin(v) if key in LOWER_IS_BETTER else np.nanargmax(v))
  return {"index": i, "value": float(v[i])}


def summarize_run(metrics: dict[str, dict[str, list]]) -> dict[str, Any]:
  train, valid = metrics.get("train", {}), metrics.get("valid", {})
  res: dict[str, Any] = {"train": {k: train[k] for k in ("step",) + TRAIN_KEYS if k in train},
                         "valid": {k: valid[k] for k in ("step",) + VALID_KEYS if k in valid}, "best_valid": {}}
  for k in VALID_KEYS:
    if k in valid:
      b = _best(valid[k], k)
      if b is not None:
        res["best_valid"][k] = {"value": b["value"], "step": valid["step"][b["index"]]}
  losses = [x for x in train.get("loss", []) if x is not None]
  res["final_train_loss"] = losses[-1] if losses else None
  return res


def curves_figure(runs: list[dict[str, Any]]) -> Figure:
  panels = [("train", k) for k in TRAIN_KEYS] + [("valid", k) for k in VALID_KEYS
                                                 if any(k in r["valid"] for r in runs)]
  fig = Figure(figsize=(4.2 * len(panels), 3.4))
  axes = np.atleast_1d(fig.subplots(1, len(panels)))
  cols = output.palette(len(runs), "tab10" if len(runs) <= 10 else "tab20")
  for ax, (split, key) in zip(axes, panels):
    for r, c in zip(runs, cols):
      d = r[split]
      if key in d:
        y = np.array([np.nan if x is None else x for x in d[key]], np.float64)
        ax.plot(d["step"], y, color=c, label=r["label"], marker="o" if split == "valid" else None, markersize=3)
    ax.set_title(f"{split} {key}", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def plot_curves(workdirs: list[str | pathlib.Path], out: str | pathlib.Path) -> dict[str, Any]:
  """Writes ``curves.json`` and ``curves.png`` (train loss and validation metrics vs step, one line per run)."""
  if not workdirs:
    raise output.AnalysisError("curves: give at least one --workdir")
  runs = []
  for w, label in zip(workdirs, run_labels(workdirs)):
    runs.append({"workdir": str(pathlib.Path(w).expanduser().resolve()), "label": label,
                 **summarize_run(read_metrics(w))})
  out = pathlib.Path(out)
  output.save_figure(curves_figure(runs), out / "curves.png")
  result = {"runs": runs}
  output.write_json(out / "curves.json", result)
  return result
