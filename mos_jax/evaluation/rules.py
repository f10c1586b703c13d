"""Hand-written rule baselines: what a split can be scored by without learning anything (numpy only).

A rule that reaches a high AUC on a split marks a shortcut in its examples (e.g. positives that repeat history items
against negatives that never do). Every rule reads only the history grid the model sees (``items`` ``[N, S, T]``)
and item facts computed from the training portion, so it has no information a model lacks.

- ``popularity``: the target's train frequency (``events.npz:item_counts``: each user's events strictly before the
  user's first valid/test target; no evaluation target is counted).
- ``in_history``: 1 if the target occurs in the packed history grid.
- ``in_last_session``: 1 if it occurs in the most recent session row.
- ``category_in_history``: number of history items whose category is the target's (count-weighted; unknown
  category 0 never matches).
- ``recency``: ``1 / (1 + events after the target's last occurrence in the grid)``, 0 when absent.
- ``inv_<rule>`` (CTR only): the negated score of each rule above, so a shortcut that runs the other way (AUC well
  below 0.5: e.g. "positives are rare items") shows up as the trivial rule it is. Its AUC is 1 minus the rule's.
- ``generator`` (synthetic only): the generator's own rule (``synthetic.rule_scores``' ``theme_recall``): 1 for the
  successor of the last history item of the target's theme, +0.5 if the history holds the theme at all.
- ``theme_count`` (synthetic only): ``n_theme`` = number of history items whose generator theme (``item_theme``, the
  theme that owns the item's id block) is the target's.
- ``theme_count_popularity`` (synthetic only): ``n_theme * ln(1 + popularity)``, the product of ``theme_count`` and
  the natural log of one plus the target's train frequency (``popularity``); 0 when the theme is absent.
- ``theme_count_successor`` (synthetic only): ``n_theme + (L + 1) * succ``, where ``succ`` is the ``generator``
  rule's chain indicator (1 if the target is the chain successor of the last history item of the target's theme,
  else 0) and ``L = S * T`` the number of history slots (so ``n_theme <= L``): lexicographic, every chain successor
  above every other candidate, the theme count ordering each of the two groups.

The synthetic rules are oracles (``ORACLE_RULES``): they read the generator's true item themes and chains, which no
model is given, so they are a ceiling to read results against, never "the best rule" a model must beat. The three
``theme_count*`` rules show the shortcut of uniform negatives on the realistic preset: a uniform negative is mostly
an item of a theme the user never visited, so counting the candidate's theme in the history already ranks well.

CTR: one float64 score per row (higher = more likely positive), tied scores count one half in AUC. Next-item: the
1-based rank of the target among all items ``1..num_items`` under the rule's score, ties broken by a fixed secondary
key, the popularity order (more frequent first, then the lower item id) -- never pessimistically, which would rank a
target last among the thousands of items every rule scores 0. ``popularity`` alone is therefore the most-popular
ranking.

    python -m mos_jax.evaluation.rules --data-dir PREPARED_FOLDER --split test [--task ctr|next] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import TYPE_CHECKING

import numpy as np

from mos_jax.evaluation import metrics

if TYPE_CHECKING:
  from mos_jax.data import PreparedDataset

RULE_NAMES = ("popularity", "in_history", "in_last_session", "category_in_history", "recency")
SYNTHETIC_RULES = ("generator", "theme_count", "theme_count_popularity", "theme_count_successor")
# Know how the data were made (the generator's item themes and chains): a ceiling to read results against, not a
# baseline. Every synthetic rule is one.
ORACLE_RULES = SYNTHETIC_RULES
KS = (5, 10, 20, 50)


def rule_names(dataset: PreparedDataset) -> tuple[str, ...]:
  """The rules that apply to ``dataset``: ``RULE_NAMES``, plus ``SYNTHETIC_RULES`` (oracles) for synthetic data."""
  return RULE_NAMES + (SYNTHETIC_RULES if dataset.meta.get("dataset") == "synthetic" else ())


def _recency(flat: np.ndarray) -> np.ndarray:
  """float64 [N, L]: 1 / (1 + non-padding events after each position) for real positions, 0 for padding."""
  real = flat > 0
  after = real.sum(1, keepdims=True) - np.cumsum(real, 1)
  return np.where(real, 1.0 / (1.0 + after), 0.0)


def _successors(chain: np.ndarray) -> np.ndarray:
  K, I = chain.shape
  succ = np.zeros(K * I + 1, np.int64)
  for k in range(K):
    succ[chain[k]] = np.roll(chain[k], -1)
  return succ


def _theme_facts(flat: np.ndarray, item_theme: np.ndarray, chain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per row and generator theme k: the number of history items of theme k (int64 [N, K]) and the chain successor of
  the last history item of theme k (int64 [N, K], -1 when the history holds no item of theme k)."""
  n, K = len(flat), chain.shape[0]
  succ = _successors(chain)
  th = np.where(flat > 0, item_theme[flat], -1)
  count = np.zeros((n, K), np.int64)
  nxt = np.full((n, K), -1, np.int64)
  for k in range(K):  # successor of the last history item of each theme
    same = th == k
    count[:, k] = same.sum(1)
    pos = flat.shape[1] - 1 - np.argmax(same[:, ::-1], 1)
    nxt[:, k] = np.where(count[:, k] > 0, succ[flat[np.arange(n), pos]], -1)
  return count, nxt


def _tie_order(counts: np.ndarray) -> np.ndarray:
  """int64 [M+1]: position of each item in the fixed secondary order (count descending, then id ascending)."""
  m = len(counts) - 1
  order = np.lexsort((np.arange(1, m + 1), -counts[1:])) + 1
  tb = np.zeros(m + 1, np.int64)
  tb[order] = np.arange(m)
  return tb


def _dedupe_max(cand: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per row, keep each candidate item once with its largest score (the others get item 0, score 0)."""
  order = np.lexsort((score, cand), axis=-1)
  c = np.take_along_axis(cand, order, 1)
  s = np.take_along_axis(score, order, 1)
  last = np.ones(c.shape, bool)
  last[:, :-1] = c[:, 1:] != c[:, :-1]
  keep = last & (c > 0) & (s > 0)
  return np.where(keep, c, 0), np.where(keep, s, 0.0)


def _sparse_ranks(cand: np.ndarray, score: np.ndarray, target: np.ndarray, tb: np.ndarray) -> np.ndarray:
  """1-based ranks of ``target`` among all items, where the items ``cand`` [N, L] (distinct per row) score
  ``score`` > 0 and every other item scores 0; ties broken by ``tb`` (lower first)."""
  real = (cand > 0) & (score > 0)
  st = np.where(real & (cand == target[:, None]), score, 0.0).max(1)  # the target's score
  tbt = tb[target]
  tbc = tb[cand]
  higher = (real & (score > st[:, None])).sum(1)
  tied = (real & (score == st[:, None]) & (tbc < tbt[:, None]) & (cand != target[:, None])).sum(1)
  zero_before = tbt - (real & (tbc < tbt[:, None])).sum(1)  # score-0 items ahead of a score-0 target
  return (1 + higher + np.where(st > 0, tied, zero_before)).astype(np.int64)


def _category_ranks(flat_cat: np.ndarray, target: np.ndarray, item_cat: np.ndarray, tb: np.ndarray) -> np.ndarray:
  """Ranks under category_in_history (an item scores the number of history items of its category)."""
  m = len(item_cat) - 1
  hc = np.sort(flat_cat, 1)
  new = np.ones(hc.shape, bool)
  new[:, 1:] = hc[:, 1:] != hc[:, :-1]
  # per row, each distinct category once with its count: count = run length (runs of the sorted row)
  run_id = np.cumsum(new, 1) - 1
  rows = np.repeat(np.arange(len(hc)), hc.shape[1])
  cnt_runs = np.zeros(hc.shape, np.int64)
  np.add.at(cnt_runs, (rows, run_id.ravel()), 1)
  cats = np.where(new, hc, 0)
  cnt = np.where(new & (hc > 0), np.take_along_axis(cnt_runs, run_id, 1), 0)
  n_cat = np.bincount(item_cat[1:], minlength=int(item_cat.max()) + 1)
  key = np.sort(item_cat[1:].astype(np.int64) * (m + 1) + tb[1:])  # items by (category, tie order)
  cstart = np.searchsorted(key, np.arange(len(n_cat)) * (m + 1))
  tbt = tb[target]
  less = np.searchsorted(key, cats * (m + 1) + tbt[:, None]) - cstart[cats]  # items of cat j ahead of the target
  less = np.where(cnt > 0, less, 0)
  tc = item_cat[target]
  st = np.where((cats == tc[:, None]) & (tc[:, None] > 0), cnt, 0).max(1)
  higher = np.where(cnt > st[:, None], n_cat[cats], 0).sum(1)
  tied = np.where((cnt == st[:, None]) & (cnt > 0), less, 0).sum(1)
  zero_before = tbt - less.sum(1)
  return (1 + higher + np.where(st > 0, tied, zero_before)).astype(np.int64)


def rule_outputs(dataset: PreparedDataset, split: str, task: str, arrays: dict[str, np.ndarray] | None = None
                 ) -> dict[str, np.ndarray]:
  """Per rule: CTR float64 scores [N] or next-item int64 1-based ranks [N], rows aligned with ``arrays``
  (default ``dataset.split(split, task)``)."""
  if task not in ("ctr", "next"):
    raise ValueError(f"task: expected 'ctr' or 'next', got {task!r}")
  a = dataset.split(split, task) if arrays is None else arrays
  ev = dataset.events
  items, target = np.asarray(a["items"]), np.asarray(a["target_item"]).astype(np.int64)
  n = len(target)
  flat = items.reshape(n, -1).astype(np.int64)  # time order: sessions oldest first, items oldest first
  last = items[:, -1].astype(np.int64)
  counts = ev["item_counts"].astype(np.int64)
  item_cat = ev["item_cat"].astype(np.int64)
  flat_cat = np.where(flat > 0, item_cat[flat], 0)
  rec = _recency(flat)
  synthetic = dataset.meta.get("dataset") == "synthetic"
  out: dict[str, np.ndarray] = {}
  if task == "ctr":
    tc = item_cat[target]
    out["popularity"] = counts[target].astype(np.float64)
    out["in_history"] = (flat == target[:, None]).any(1).astype(np.float64)
    out["in_last_session"] = (last == target[:, None]).any(1).astype(np.float64)
    out["category_in_history"] = ((flat_cat == tc[:, None]) & (tc[:, None] > 0)).sum(1).astype(np.float64)
    out["recency"] = np.where(flat == target[:, None], rec, 0.0).max(1)
    # A rule far below 0.5 AUC is a shortcut too, read the other way round (e.g. on the Taobao head, positives are
    # rarer items than uniform negatives): its inverse is a trivial rule of its own.
    out.update({f"inv_{name}": -out[name] for name in RULE_NAMES})
    if synthetic:
      from mos_jax.data.synthetic import rule_scores  # noqa: PLC0415
      item_theme = ev["item_theme"].astype(np.int64)
      out["generator"] = rule_scores(a, item_theme, ev["chain"])["theme_recall"].astype(np.float64)
      count, nxt = _theme_facts(flat, item_theme, ev["chain"])
      rows, tt = np.arange(n), np.maximum(item_theme[target], 0)  # padding rows (target 0) score 0
      n_theme = np.where(target > 0, count[rows, tt], 0).astype(np.float64)
      out["theme_count"] = n_theme
      out["theme_count_popularity"] = n_theme * np.log1p(counts.astype(np.float64))[target]
      out["theme_count_successor"] = n_theme + (flat.shape[1] + 1) * (nxt[rows, tt] == target)
    return out
  tb = _tie_order(counts)
  ones = (flat > 0).astype(np.float64)
  out["popularity"] = tb[target] + 1
  out["in_history"] = _sparse_ranks(*_dedupe_max(flat, ones), target, tb)
  out["in_last_session"] = _sparse_ranks(*_dedupe_max(last, (last > 0).astype(np.float64)), target, tb)
  out["category_in_history"] = _category_ranks(flat_cat, target, item_cat, tb)
  out["recency"] = _sparse_ranks(*_dedupe_max(flat, rec), target, tb)
  if synthetic:  # dense scores of every item 1..M per row
    item_theme = ev["item_theme"].astype(np.int64)
    count, nxt = _theme_facts(flat, item_theme, ev["chain"])
    all_items = np.arange(1, len(item_theme))
    it = item_theme[all_items]
    n_theme = count[:, it].astype(np.float64)  # [N, M]
    is_succ = nxt[:, it] == all_items[None, :]
    cand = np.broadcast_to(all_items, n_theme.shape)
    dense = {"generator": lambda: 0.5 * (n_theme > 0) + is_succ,  # built one at a time: each is [N, M]
             "theme_count": lambda: n_theme,
             "theme_count_popularity": lambda: n_theme * np.log1p(counts.astype(np.float64))[all_items][None, :],
             "theme_count_successor": lambda: n_theme + (flat.shape[1] + 1) * is_succ}
    for name in SYNTHETIC_RULES:
      out[name] = _sparse_ranks(cand, dense[name](), target, tb)
  return out


def evaluate_rules(dataset: PreparedDataset, split: str, task: str, arrays: dict[str, np.ndarray] | None = None
                   ) -> dict[str, dict[str, float]]:
  """Per rule its metrics: CTR ``auc``, ``gauc``, ``num_examples``; next-item ``hr@K``, ``ndcg@K`` (K = 5, 10,
  20, 50), ``mrr``, ``num_examples``. Rows with ``weight`` 0 (padding) are left out."""
  a = dataset.split(split, task) if arrays is None else arrays
  keep = np.asarray(a["weight"]) > 0 if "weight" in a else np.ones(len(a["target_item"]), bool)
  out = {}
  for name, v in rule_outputs(dataset, split, task, a).items():
    v = v[keep]
    if task == "ctr":
      label, user = np.asarray(a["label"])[keep], np.asarray(a["user"])[keep]
      out[name] = {"auc": metrics.auc(label, v), "gauc": metrics.gauc(label, v, user), "num_examples": int(len(v))}
    else:
      out[name] = {**metrics.ranking_metrics(v, ks=KS), "num_examples": int(len(v))}
  return out


def format_table(results: dict[str, dict[str, float]]) -> str:
  """Markdown table: rule | metrics."""
  cols = [k for k in next(iter(results.values())) if k != "num_examples"]
  lines = ["| rule | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name, res in results.items():
    lines.append(f"| {name} | " + " | ".join(f"{res[c]:.4f}" for c in cols) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description="Rule baselines on a prepared split (docs/data.md, 'Rule baselines').")
  p.add_argument("--data-dir", required=True, help="a prepared folder (python -m mos_jax.data.prepare --out ...)")
  p.add_argument("--split", default="test", choices=("train", "valid", "test"))
  p.add_argument("--task", default="ctr", choices=("ctr", "next"))
  p.add_argument("--json", default=None, help="also write the results here (atomically)")
  args = p.parse_args(argv)
  from mos_jax.data import DataError, load_prepared  # noqa: PLC0415
  try:
    ds = load_prepared(args.data_dir)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  res = evaluate_rules(ds, args.split, args.task)
  n = next(iter(res.values()))["num_examples"]
  print(f"{args.data_dir}: {args.split} {args.task}, {n} examples, negatives={ds.meta.get('negatives')}")
  print(format_table(res))
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"data_dir": str(args.data_dir), "split": args.split, "task": args.task,
                               "negatives": ds.meta.get("negatives"), "rules": res}, indent=1) + "\n")
    os.replace(tmp, path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
