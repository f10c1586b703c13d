"""Session-hopping statistics of a dataset (the MoS paper's motivation): do users come back, sessions later, to a
category (or, for synthetic data, a theme) they left? Exact definitions: docs/analysis.md.

Sessions are the prepared dataset's (``events.npz``: events sorted by user and time, ``sid`` = global session id from
the data config's sessionization). A session's label is its dominant category (or true theme).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from mos_jax.analysis import output

DISTANCE_BINS = [str(d) for d in range(2, 20)] + ["20+"]
TIME_EDGES_H = [0.0, 1.0, 6.0, 24.0, 72.0, 168.0, 720.0]
TIME_BINS = ["<1h", "1-6h", "6h-1d", "1-3d", "3-7d", "7-30d", ">=30d"]
SPU_EDGES = [1, 2, 3, 5, 10, 20, 50, 100, 200]
SPU_BINS = ["1", "2", "3-4", "5-9", "10-19", "20-49", "50-99", "100-199", ">=200"]


def dominant_label(sid: np.ndarray, values: np.ndarray, valid: np.ndarray, num_sessions: int) -> np.ndarray:
  """int64 [num_sessions]: the most frequent valid value of each session's events; ties go to the smallest value;
  -1 where a session has no valid event. ``sid`` int [E] session of each event, ``values`` int [E], ``valid``
  bool [E]."""
  out = np.full(num_sessions, -1, np.int64)
  s, v = np.asarray(sid)[valid].astype(np.int64), np.asarray(values)[valid].astype(np.int64)
  if len(s) == 0:
    return out
  order = np.lexsort((v, s))
  s, v = s[order], v[order]
  new = np.concatenate([[True], (s[1:] != s[:-1]) | (v[1:] != v[:-1])])
  starts = np.flatnonzero(new)
  cnt = np.diff(np.append(starts, len(s)))
  rs, rv = s[starts], v[starts]
  best = np.lexsort((rv, -cnt, rs))  # per session: highest count first, then smallest value
  rs, rv = rs[best], rv[best]
  first = np.concatenate([[True], rs[1:] != rs[:-1]])
  out[rs[first]] = rv[first]
  return out


def _hist(values: np.ndarray, edges: list[float], names: list[str]) -> dict[str, list]:
  idx = np.searchsorted(np.asarray(edges, np.float64), np.asarray(values, np.float64), side="right") - 1
  return {"bins": names, "counts": np.bincount(np.clip(idx, 0, len(names) - 1), minlength=len(names)).tolist()}


def session_table(user: np.ndarray, time: np.ndarray, sid: np.ndarray) -> dict[str, np.ndarray]:
  """Per session (ids 0..n-1, in user then time order): its user, first and last event time."""
  n = int(sid.max()) + 1 if len(sid) else 0
  start = np.flatnonzero(np.concatenate([[True], sid[1:] != sid[:-1]])) if len(sid) else np.zeros(0, np.int64)
  end = np.append(start[1:], len(sid)) - 1
  if len(start) != n:
    raise output.AnalysisError(f"events.npz: session ids are not contiguous ({len(start)} runs, max id {n - 1})")
  return {"user": user[start], "t_first": time[start].astype(np.int64), "t_last": time[end].astype(np.int64)}


def hop_stats(session_user: np.ndarray, label: np.ndarray, t_first: np.ndarray, t_last: np.ndarray) -> dict[str, Any]:
  """Hop statistics of labelled sessions (arrays [n] in user-then-time order; label -1 = unknown).

  For session j of a user (0-based, time order) with a known label and j >= 2 (an *eligible* session): it *returns*
  when its label is the label of some earlier session i <= j-2; i* is the latest such i; distance = j - i* sessions
  and t_first[j] - t_last[i*] seconds. It *hops back* when it returns and its label differs from session j-1's.
  *repeat*: same label as session j-1; *new*: label in no earlier session.
  """
  n = len(label)
  bounds = np.flatnonzero(np.concatenate([[True], session_user[1:] != session_user[:-1]])) if n else np.zeros(0, int)
  bounds = np.append(bounds, n)
  dist_s, dist_t = [], []
  totals = dict(eligible=0, returning=0, hop_back=0, repeat=0, new=0)
  per_user_rate = []
  for a, b in zip(bounds[:-1], bounds[1:]):
    lab = label[a:b].tolist()
    far: dict[int, int] = {}  # label -> latest index <= j-2
    ever: set[int] = set()
    elig = ret = 0
    for j, x in enumerate(lab):
      if j >= 2 and lab[j - 2] >= 0:
        far[lab[j - 2]] = j - 2
      if j >= 2 and x >= 0:
        elig += 1
        i = far.get(x)
        if i is not None:
          ret += 1
          dist_s.append(j - i)
          dist_t.append(int(t_first[a + j]) - int(t_last[a + i]))
          totals["hop_back"] += int(x != lab[j - 1])
        totals["repeat"] += int(x == lab[j - 1])
        totals["new"] += int(x not in ever)
      if x >= 0:
        ever.add(x)
    totals["eligible"] += elig
    totals["returning"] += ret
    if elig:
      per_user_rate.append(ret / elig)
  e = max(totals["eligible"], 1)
  dist_s, dist_t = np.asarray(dist_s, np.int64), np.asarray(dist_t, np.int64)
  return {
      "labelled_sessions": int(np.sum(label >= 0)), **{f"{k}_sessions": v for k, v in totals.items()},
      "hop_rate": totals["returning"] / e if totals["eligible"] else None,
      "hop_back_rate": totals["hop_back"] / e if totals["eligible"] else None,
      "repeat_rate": totals["repeat"] / e if totals["eligible"] else None,
      "new_rate": totals["new"] / e if totals["eligible"] else None,
      "per_user_hop_rate": output.summary(np.asarray(per_user_rate)),
      "return_distance_sessions": {**output.summary(dist_s),
                                   "histogram": _hist(dist_s, list(range(2, 21)), DISTANCE_BINS)},
      "return_distance_hours": {**output.summary(dist_t / 3600.0),
                                "histogram": _hist(dist_t / 3600.0, TIME_EDGES_H, TIME_BINS)},
      "_distances": (dist_s, dist_t),  # for the figure; dropped before writing JSON
  }


def hopping_stats(events: dict[str, np.ndarray]) -> dict[str, Any]:
  """Statistics of an event table (keys user, time, cat, sid; theme optional, -1 = unknown)."""
  user, time, sid = events["user"], events["time"], events["sid"]
  table = session_table(user, time, sid)
  n = len(table["user"])
  labels = {"category": dominant_label(sid, events["cat"], events["cat"] > 0, n)}
  theme = events.get("theme")
  if theme is not None and np.any(theme >= 0):
    labels["theme"] = dominant_label(sid, theme, theme >= 0, n)
  spu = np.bincount(np.unique(table["user"], return_inverse=True)[1]) if n else np.zeros(0, np.int64)
  res: dict[str, Any] = {
      "users": int(len(spu)), "sessions": n, "events": int(len(sid)),
      "sessions_per_user": {**output.summary(spu), "histogram": _hist(spu, SPU_EDGES, SPU_BINS)},
      "by": {k: hop_stats(table["user"], v, table["t_first"], table["t_last"]) for k, v in labels.items()},
  }
  res["_sessions"], res["_labels"], res["_spu"] = table, labels, spu
  return res


# ------------------------------------------------------------------------------------------------------ figures


def _stats_figure(res: dict[str, Any], title: str) -> Figure:
  fig = Figure(figsize=(13, 3.6))
  axes = fig.subplots(1, 4)
  h = res["sessions_per_user"]["histogram"]
  axes[0].bar(range(len(h["bins"])), h["counts"], color="0.45")
  axes[0].set_xticks(range(len(h["bins"])), h["bins"], rotation=45, fontsize=7)
  axes[0].set_title(f"sessions per user (mean {res['sessions_per_user'].get('mean', 0):.1f})", fontsize=9)
  cols = output.palette(len(res["by"]))
  names = list(res["by"])
  for key, ax, hist_key in ((0, axes[1], "return_distance_sessions"), (1, axes[2], "return_distance_hours")):
    width = 0.8 / len(names)
    for i, name in enumerate(names):
      hh = res["by"][name][hist_key]["histogram"]
      tot = max(sum(hh["counts"]), 1)
      ax.bar(np.arange(len(hh["bins"])) + i * width, np.asarray(hh["counts"]) / tot, width, color=cols[i], label=name)
      ax.set_xticks(np.arange(len(hh["bins"])) + 0.4 - width / 2, hh["bins"], rotation=45, fontsize=7)
    ax.set_title("return distance, " + ("sessions" if key == 0 else "time"), fontsize=9)
    ax.set_ylabel("share of returns", fontsize=8)
    ax.legend(fontsize=7)
  rates = ["hop_rate", "hop_back_rate", "repeat_rate", "new_rate"]
  width = 0.8 / len(names)
  for i, name in enumerate(names):
    vals = [res["by"][name][r] or 0.0 for r in rates]
    axes[3].bar(np.arange(len(rates)) + i * width, vals, width, color=cols[i], label=name)
  axes[3].set_xticks(np.arange(len(rates)) + 0.4 - width / 2, [r.replace("_rate", "") for r in rates], fontsize=8)
  axes[3].set_ylim(0, 1)
  axes[3].set_title("share of eligible sessions", fontsize=9)
  axes[3].legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


STRIPE_COLOURMAPS = ("tab20", "Dark2", "tab20b")  # one per stripe, so equal colours never mean equal labels


def _colour_map(values: np.ndarray, cmap: str, top: int = 20) -> dict[int, Any]:
  """The ``top`` most frequent labels get distinct colours; the rest grey (drawn as 'other')."""
  vals, cnt = np.unique(values[values >= 0], return_counts=True)
  order = vals[np.lexsort((vals, -cnt))][:top]
  return {int(v): c for v, c in zip(order, output.palette(len(order), cmap))}


def timeline_figure(table: dict[str, np.ndarray], labels: dict[str, np.ndarray], users: list[int], title: str,
                    names: dict[str, np.ndarray] | None = None, *, colours: dict[str, dict[int, Any]] | None = None,
                    marked: np.ndarray | None = None, xlabel: str = "days since the user's first event",
                    row_names: list[str] | None = None) -> Figure:
  """One row per user: each session a block on the time axis (days since the row's first session), one stripe per
  label kind (e.g. dominant category above, true theme below), colour = label. ``colours`` fixes a kind's colours
  (else the 20 most frequent labels of the plotted rows get colours, the rest grey); ``marked`` bool [n] puts an x on
  those sessions' first stripe."""
  kinds = list(labels)
  fig = Figure(figsize=(12, 0.9 + 0.75 * len(users) * len(kinds) ** 0.5))
  ax = fig.subplots()
  rows = np.isin(table["user"], users)
  cmaps = {k: (colours or {}).get(k) or _colour_map(labels[k][rows], STRIPE_COLOURMAPS[i % len(STRIPE_COLOURMAPS)])
           for i, k in enumerate(kinds)}
  span = 1.0
  for u in users:
    r = np.flatnonzero(table["user"] == u)
    if len(r):
      span = max(span, (table["t_last"][r[-1]] - table["t_first"][r[0]]) / 86400.0)
  min_w = span / 250.0  # sessions last minutes, gaps days: draw every session visibly
  h = 0.8 / len(kinds)
  for y, u in enumerate(users):
    r = np.flatnonzero(table["user"] == u)
    t0 = table["t_first"][r[0]]
    x = (table["t_first"][r] - t0) / 86400.0
    w = np.maximum((table["t_last"][r] - table["t_first"][r]) / 86400.0, min_w)
    for i, k in enumerate(kinds):
      cols = [cmaps[k].get(int(lab), "0.8") for lab in labels[k][r]]
      ax.broken_barh(list(zip(x, w)), (y - 0.4 + i * h, h * 0.92), facecolors=cols)
      if i == 0 and marked is not None and np.any(marked[r]):
        m = marked[r]
        ax.scatter(x[m] + w[m] / 2, np.full(m.sum(), y - 0.4 + h / 2), marker="x", color="k", s=30, zorder=3)
  ax.set_yticks(range(len(users)), row_names or [f"user {u}" for u in users], fontsize=8)
  ax.invert_yaxis()
  ax.set_xlabel(xlabel)
  handles = []
  for k in kinds:
    nm = names.get(k) if names else None
    handles += [Patch(color=c, label=f"{k} {nm[v] if nm is not None and v < len(nm) else v}")
                for v, c in cmaps[k].items()]
  handles.append(Patch(color="0.8", label="other / unknown"))
  if marked is not None:
    handles.append(Line2D([], [], marker="x", color="k", linestyle="none", label=f"{kinds[0]}: dropped"))
  ax.legend(handles=handles, fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5))
  stripes = " / ".join(kinds)
  ax.set_title(f"{title}: sessions on a time axis (stripes: {stripes})", fontsize=10)
  fig.tight_layout()
  return fig


def pick_users(session_user: np.ndarray, num: int, seed: int, min_sessions: int = 4) -> list[int]:
  """``num`` users with at least ``min_sessions`` sessions, drawn with ``seed`` (all users if too few qualify)."""
  u, cnt = np.unique(session_user, return_counts=True)
  pool = u[cnt >= min_sessions]
  if len(pool) == 0:
    pool = u
  rng = np.random.default_rng(seed)
  return sorted(int(x) for x in rng.choice(pool, size=min(num, len(pool)), replace=False))


# ------------------------------------------------------------------------------------------------------ command


def analyze_hopping(data_cfg: Any, out: str | pathlib.Path, *, timeline_users: int = 6, seed: int = 0
                    ) -> dict[str, Any]:
  """Prepares (or reuses) ``data_cfg``'s dataset and writes ``hopping.json``, ``hopping.png`` and
  ``hopping_timelines.png`` to ``out``; returns the JSON content."""
  from mos_jax import data as data_lib  # noqa: PLC0415

  path = data_lib.prepare_dataset(data_cfg)
  with np.load(pathlib.Path(path) / "events.npz") as z:
    events = {k: z[k] for k in ("user", "time", "cat", "theme", "sid")}
  with np.load(pathlib.Path(path) / "mappings.npz") as z:
    cat_ids = z["cat_ids"]
  res = hopping_stats(events)
  table, labels, _ = res.pop("_sessions"), res.pop("_labels"), res.pop("_spu")
  for v in res["by"].values():
    v.pop("_distances")
  out = pathlib.Path(out)
  title = f"{data_cfg.dataset}" + (f" ({pathlib.Path(data_cfg.data_dir).name})" if data_cfg.data_dir else "")
  users = pick_users(table["user"], timeline_users, seed)
  result = {"dataset": data_cfg.dataset, "prepared": str(path), "data_config": dataclasses.asdict(data_cfg),
            "session_mode": data_cfg.session_mode, "session_gap": data_cfg.session_gap, **res,
            "summary": {k: {"hop_rate": v["hop_rate"], "hop_back_rate": v["hop_back_rate"],
                            "mean_return_distance_sessions": v["return_distance_sessions"].get("mean"),
                            "median_return_distance_hours": v["return_distance_hours"].get("median")}
                        for k, v in res["by"].items()},
            "timeline_users": users}
  output.save_figure(_stats_figure(result, f"session hopping: {title}"), out / "hopping.png")
  output.save_figure(timeline_figure(table, labels, users, title, {"category": cat_ids}), out / "hopping_timelines.png")
  output.write_json(out / "hopping.json", result)
  return result
