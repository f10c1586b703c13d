"""Routing analysis of a trained MoS run: which sessions each theme receives, how pure the themes are against
dominant categories (and true themes, synthetic data), expert usage / dropping / fusion over training, and a few
users' routing timelines. Exact definitions: docs/analysis.md.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mos_jax.analysis import output
from mos_jax.analysis.hopping import dominant_label, pick_users, timeline_figure

TRAINING_KEYS = ("expert_usage", "theme_sessions", "fusion_weights")  # [K] / [E] vectors, logged as name/i
TRAINING_SCALARS = ("dropped_fraction", "router_entropy", "balance_loss", "unrouted_fraction")
TOP_CATEGORIES = 20  # heat-map columns; the rest are summed into "other"


# ------------------------------------------------------------------------------------------------ clustering scores


def contingency(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(values of a, values of b, counts int64 [len(va), len(vb)]): counts[i, j] = #{n: a[n] = va[i], b[n] = vb[j]}."""
  a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
  if a.shape != b.shape:
    raise ValueError(f"labelings differ in length: {a.shape} vs {b.shape}")
  va, ia = np.unique(a, return_inverse=True)
  vb, ib = np.unique(b, return_inverse=True)
  counts = np.zeros((len(va), len(vb)), np.int64)
  np.add.at(counts, (ia, ib), 1)
  return va, vb, counts


def purity(assigned: np.ndarray, reference: np.ndarray) -> float:
  """Sum over assigned groups of their majority reference count, over all items (1 = every group is one class)."""
  _, _, c = contingency(assigned, reference)
  return float(c.max(axis=1).sum() / c.sum()) if c.size else float("nan")


def _entropy(p: np.ndarray) -> float:
  p = p[p > 0]
  return float(-(p * np.log(p)).sum())


def nmi(a: np.ndarray, b: np.ndarray) -> float:
  """Normalised mutual information, arithmetic normalisation: I(A;B) / ((H(A) + H(B)) / 2), natural log.

  1 for identical partitions (whatever the label names), 0 for independent ones; 1 when both have a single class.
  """
  _, _, c = contingency(a, b)
  n = c.sum()
  if n == 0:
    return float("nan")
  pab = c / n
  pa, pb = pab.sum(1), pab.sum(0)
  ha, hb = _entropy(pa), _entropy(pb)
  if ha + hb == 0.0:
    return 1.0
  nz = pab > 0
  mi = float((pab[nz] * np.log(pab[nz] / np.outer(pa, pb)[nz])).sum())
  return max(0.0, mi / ((ha + hb) / 2.0))


def compare(assigned: np.ndarray, reference: np.ndarray, num_themes: int) -> dict[str, Any]:
  """Theme x reference counts (all reference values), per-theme and overall purity, the one-theme baseline purity
  (share of the most common label), NMI."""
  va, vb, c = contingency(assigned, reference)
  full = np.zeros((num_themes, len(vb)), np.int64)
  full[va] = c
  sizes = full.sum(1)
  per_theme = np.where(sizes > 0, full.max(1) / np.maximum(sizes, 1), np.nan)
  return {"sessions": int(full.sum()), "labels": vb.tolist(), "counts": full.tolist(),
          "purity": purity(assigned, reference) if len(assigned) else None,
          # purity if every session went to one theme: the level a routing unrelated to the labels starts from
          "baseline_purity": float(full.sum(0).max() / full.sum()) if full.sum() else None,
          "purity_per_theme": per_theme.tolist(),
          "majority_label_per_theme": [int(vb[i]) if s > 0 else None for i, s in zip(full.argmax(1), sizes)],
          "nmi": nmi(assigned, reference) if len(assigned) else None}


# ------------------------------------------------------------------------------------------------ running the router


def _analysis_rows(arrays: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
  """One row per target: CTR negatives share their positive's history, so only the positive rows are routed."""
  if task == "ctr":
    keep = arrays["label"] > 0
    return {k: v[keep] for k, v in arrays.items()}
  return dict(arrays)


def route_split(graphdef: Any, state: Any, arrays: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Runs ``embedder.embed_batch`` + ``model.route`` (and the full forward for the fusion weights) over ``arrays``.

  Returns expert int32 [N,S,k], keep / valid bool [N,S,k] and the summed fusion weights f32 [E]. The final batch is
  padded with empty histories, which route no session and get fusion weight 0 (so sums stay exact).
  """
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  @jax.jit
  def fn(params, rest, batch):
    model = nnx.merge(graphdef, params, rest)
    x, mask, _ = model.embedder.embed_batch(batch)
    plan, _, _ = model.route(x, mask, batch)
    out = model(batch, deterministic=True)
    return plan.expert, plan.keep, plan.valid, out.metrics["fusion_weights"] * batch["weight"].shape[0]

  n = len(arrays["items"])
  parts, fusion = [], None
  for a in range(0, n, batch_size):
    batch = {k: v[a:a + batch_size] for k, v in arrays.items()}
    pad = batch_size - len(batch["items"])
    if pad:  # empty histories (all padding), session_theme -1
      batch = {k: np.concatenate([v, np.full((pad,) + v.shape[1:], -1 if k == "session_theme" else 0, v.dtype)])
               for k, v in batch.items()}
    e, k, v, f = jax.device_get(fn(state.params, state.rest, batch))
    parts.append((e[:len(e) - pad], k[:len(k) - pad], v[:len(v) - pad]))
    fusion = f if fusion is None else fusion + f
  return {"expert": np.concatenate([p[0] for p in parts]), "keep": np.concatenate([p[1] for p in parts]),
          "valid": np.concatenate([p[2] for p in parts]), "fusion_sum": fusion}


def session_labels(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per grid session [N,S]: dominant category of its packed items (-1 = none known), true theme (-1 = unknown),
  time of its first and last packed item in seconds before the target."""
  items, cats, times = arrays["items"], arrays["cats"], arrays["times"]
  n, s, t = items.shape
  sid = np.repeat(np.arange(n * s), t)
  dom = dominant_label(sid, cats.reshape(-1), (items > 0).reshape(-1) & (cats > 0).reshape(-1), n * s).reshape(n, s)
  real = items > 0
  first = np.where(real, times, -1).max(-1)  # oldest item: the largest distance to the target
  last = np.where(real, times, np.iinfo(np.int32).max).min(-1)
  theme = arrays.get("session_theme", np.full((n, s), -1, np.int32))
  return {"category": dom, "theme": theme, "first_s": first, "last_s": last}


# ------------------------------------------------------------------------------------------------ training records


def training_records(workdir: str | pathlib.Path) -> dict[str, Any]:
  """Routing metrics of the train records in ``WORKDIR/metrics.jsonl``: {step: [...], name: [...] or [[K]...]}."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    return {}
  recs = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      r = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a hard kill
    if r.get("split") == "train":
      recs.append(r)
  out: dict[str, Any] = {"step": [r["step"] for r in recs]}
  for name in TRAINING_SCALARS:
    if any(name in r for r in recs):
      out[name] = [r.get(name) for r in recs]
  for name in TRAINING_KEYS:
    width = 0
    while any(f"{name}/{width}" in r for r in recs):
      width += 1
    if width:
      out[name] = [[r.get(f"{name}/{i}") for i in range(width)] for r in recs]
  return out


# ------------------------------------------------------------------------------------------------ figures


def _heat(ax, counts: np.ndarray, xlabels: list[str], title: str) -> None:
  im = ax.imshow(counts, aspect="auto", cmap="Blues")
  ax.set_xticks(range(len(xlabels)), xlabels, rotation=60, fontsize=7)
  ax.set_yticks(range(counts.shape[0]), [f"theme {i}" for i in range(counts.shape[0])], fontsize=8)
  ax.set_title(title, fontsize=9)
  if counts.size <= 400:
    top = counts.max() if counts.size else 0
    for (i, j), v in np.ndenumerate(counts):
      ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=6, color="w" if v > top / 2 else "k")
  ax.figure.colorbar(im, ax=ax, fraction=0.04)


def _top_columns(cmp: dict[str, Any], names: np.ndarray | None, top: int) -> tuple[np.ndarray, list[str]]:
  counts = np.asarray(cmp["counts"], np.int64).reshape(len(cmp["counts"]), -1)
  labels = cmp["labels"]
  order = np.argsort(-counts.sum(0), kind="stable")
  head, rest = order[:top], order[top:]
  cols = counts[:, head]
  names_ = [str(names[labels[i]]) if names is not None and labels[i] < len(names) else str(labels[i]) for i in head]
  if len(rest):
    cols = np.concatenate([cols, counts[:, rest].sum(1, keepdims=True)], 1)
    names_.append(f"other ({len(rest)})")
  return cols, names_


def heatmap_figure(result: dict[str, Any], cat_names: np.ndarray | None) -> Figure:
  panels = [("category", "dominant category")] + ([("theme", "true theme")] if "theme" in result["vs"] else [])
  fig = Figure(figsize=(7 * len(panels), 0.6 + 0.45 * result["num_themes"] + 1.2))
  axes = np.atleast_1d(fig.subplots(1, len(panels)))
  for ax, (key, what) in zip(axes, panels):
    cmp = result["vs"][key]
    cols, names = _top_columns(cmp, cat_names if key == "category" else None, TOP_CATEGORIES)
    _heat(ax, cols, names, f"routed theme x {what}: purity {cmp['purity']:.3f} (one theme: "
          f"{cmp['baseline_purity']:.3f}), NMI {cmp['nmi']:.3f}")
  fig.tight_layout()
  return fig


def training_figure(records: dict[str, Any], fusion_names: list[str], eval_fusion: list[float] | None) -> Figure:
  fig = Figure(figsize=(14, 3.4))
  axes = fig.subplots(1, 4)
  step = np.asarray(records.get("step", []))
  for ax, name in zip(axes[:2], ("expert_usage", "theme_sessions")):
    if name in records:
      v = np.asarray(records[name], np.float64)
      for i in range(v.shape[1]):
        ax.plot(step, v[:, i], label=f"theme {i}")
      ax.legend(fontsize=7)
    ax.set_title(name.replace("_", " "), fontsize=9)
    ax.set_xlabel("step", fontsize=8)
  ax = axes[2]
  for name in ("dropped_fraction", "router_entropy"):
    if name in records:
      ax.plot(step, np.asarray(records[name], np.float64), label=name)
  ax.legend(fontsize=7)
  ax.set_title("dropped fraction, router entropy", fontsize=9)
  ax.set_xlabel("step", fontsize=8)
  ax = axes[3]
  if "fusion_weights" in records:
    v = np.asarray(records["fusion_weights"], np.float64)
    for i in range(v.shape[1]):
      line, = ax.plot(step, v[:, i], label=fusion_names[i] if i < len(fusion_names) else f"expert {i}")
      if eval_fusion is not None and i < len(eval_fusion) and len(step):
        ax.scatter([step[-1]], [eval_fusion[i]], color=line.get_color(), marker="D", s=18)
    ax.legend(fontsize=7)
  ax.set_title("fusion weights (train; diamonds: analysed split)", fontsize=9)
  ax.set_xlabel("step", fontsize=8)
  fig.tight_layout()
  return fig


# ------------------------------------------------------------------------------------------------ command


def fusion_expert_names(model_cfg: Any) -> list[str]:
  """Order of the fusion weights (docs/model.md): global, short-term, theme 0..K-1, present experts only."""
  names = (["global"] if model_cfg.use_global_expert else []) + (["short"] if model_cfg.use_short_expert else [])
  return names + ([f"theme {i}" for i in range(model_cfg.num_themes)] if model_cfg.use_theme_experts else [])


def analyze_routing(workdir: str | pathlib.Path, out: str | pathlib.Path, *, split: str = "test",
                    checkpoint: str = "best", timeline_users: int = 6, seed: int = 0, batch_size: int = 0
                    ) -> dict[str, Any]:
  """Restores a MoS run, routes ``split``'s sessions and writes ``routing.json``, ``routing_heatmap.png``,
  ``routing_training.png`` and ``routing_timelines.png`` to ``out``; returns the JSON content."""
  from mos_jax.training.restore import restore_run  # noqa: PLC0415

  if split not in ("train", "valid", "test"):
    raise output.AnalysisError(f"--split={split}: expected train, valid or test")

  def check(saved: Any) -> None:
    m = saved.model
    if m.name != "mos" or not m.use_theme_experts:
      raise output.AnalysisError(
          f"{workdir}: routing analysis needs a MoS run with theme experts (model.name='mos', "
          f"model.use_theme_experts=true); this run has model.name={m.name!r}, use_theme_experts={m.use_theme_experts}")

  restored = restore_run(workdir, checkpoint, check_config=check)
  cfg, run = restored.cfg, restored.run
  m = cfg.model
  arrays = _analysis_rows(run.dataset.split(split, cfg.data.task), cfg.data.task)
  routed = route_split(run.graphdef, restored.executor.saveable_state(), arrays,
                       batch_size or cfg.train.eval_batch_size)
  labels = session_labels(arrays)
  valid = routed["valid"][..., 0]  # real sessions (top-1 choice always exists)
  theme = routed["expert"][..., 0]
  kept = routed["keep"][..., 0]
  k = m.num_themes
  num_sessions = int(valid.sum())
  sizes = np.bincount(theme[valid], minlength=k)
  has_history = np.any(arrays["items"] > 0, axis=(1, 2))
  fusion = routed["fusion_sum"] / max(int(has_history.sum()), 1)
  vs = {"category": compare(theme[valid & (labels["category"] >= 0)], labels["category"][valid & (labels["category"]
                                                                                                  >= 0)], k)}
  known_theme = valid & (labels["theme"] >= 0)
  if known_theme.any():
    vs["theme"] = compare(theme[known_theme], labels["theme"][known_theme], k)
  records = training_records(workdir)
  result = {
      "workdir": str(pathlib.Path(workdir).expanduser().resolve()), "split": split, "checkpoint": restored.kind,
      "step": restored.step, "dataset": cfg.data.dataset, "task": cfg.data.task, "route_by": m.route_by,
      "num_themes": k, "top_k": m.top_k, "num_examples": int(len(arrays["items"])), "num_sessions": num_sessions,
      "theme_sessions": sizes.tolist(), "theme_share": (sizes / max(num_sessions, 1)).tolist(),
      "kept_sessions_top1": int((valid & kept).sum()),
      "dropped_fraction": float((routed["valid"] & ~routed["keep"]).sum() / max(int(routed["valid"].sum()), 1)),
      "unknown_category_sessions": int((valid & (labels["category"] < 0)).sum()),
      "vs": vs,
      "fusion_experts": fusion_expert_names(m), "fusion_weights": fusion.tolist(),
      "training": records,
  }
  out = pathlib.Path(out)
  with np.load(pathlib.Path(run.dataset.path) / "mappings.npz") as z:
    cat_names = z["cat_ids"]
  output.save_figure(heatmap_figure(result, cat_names), out / "routing_heatmap.png")
  output.save_figure(training_figure(records, result["fusion_experts"], result["fusion_weights"]),
                     out / "routing_training.png")
  # Timelines: rows = examples (users), sessions placed by their time before the target.
  n, s = valid.shape
  row = np.repeat(np.arange(n), s).reshape(n, s)[valid]
  table = {"user": row, "t_first": -labels["first_s"][valid].astype(np.int64),
           "t_last": -labels["last_s"][valid].astype(np.int64)}
  rows = pick_users(row, timeline_users, seed)
  stripes = {"routed theme": theme[valid]}
  if "theme" in vs:
    stripes["true theme"] = labels["theme"][valid]
  stripes["category"] = labels["category"][valid]
  theme_cols = dict(enumerate(output.palette(k, "tab10" if k <= 10 else "tab20")))
  fig = timeline_figure(table, stripes, rows, f"{cfg.data.dataset} {split}", {"category": cat_names},
                        colours={"routed theme": theme_cols}, marked=~kept[valid],
                        xlabel="days since the first session in the example's grid (target at the end)",
                        row_names=[f"user {int(arrays['user'][r])}" for r in rows])
  output.save_figure(fig, out / "routing_timelines.png")
  result["timeline_users"] = [int(arrays["user"][r]) for r in rows]
  output.write_json(out / "routing.json", result)
  return result
