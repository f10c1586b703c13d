"""Prepare a dataset: read → events → sessions → split targets → negatives → an atomically written folder.

Preparing is cached: the folder records a fingerprint of the options and of the input files (name, size, mtime);
the same fingerprint reuses the folder, a different one in an explicit OUT is an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

from mos_jax.data import examples, readers, sessions, synthetic
from mos_jax.data.config import DataConfig
from mos_jax.data.events import EventTable, build_events
from mos_jax.data.prepared import FORMAT_VERSION
from mos_jax.data.readers import DataError

# Preparing writes both tasks; data.seed only drives train negatives and order, drawn at iteration time, so runs
# with several seeds share one prepared folder.
# data.format only adds an ArrayRecord copy of the same examples (records.py), written into the same folder.
_NOT_IN_FINGERPRINT = ("cache_dir", "task", "seed", "format")
# Options added after prepared folders existed are hashed only when they differ from their default, which reproduces
# what was prepared before they existed: those folders keep their fingerprint (still valid caches), any other value
# gets its own.
_HASHED_UNLESS_DEFAULT = {"eval_targets_per_user": 1, "split_mode": "per_user"}


def fingerprint(cfg: DataConfig) -> str:
  """Hash of the options that shape the prepared arrays and of the input files' names, sizes and mtimes."""
  opts = {k: v for k, v in dataclasses.asdict(cfg).items()
          if k not in _NOT_IN_FINGERPRINT and not (k in _HASHED_UNLESS_DEFAULT and v == _HASHED_UNLESS_DEFAULT[k])}
  opts["negatives"], opts["hard_neg_frac"] = cfg.negatives_kind(), hard_neg_frac(cfg)  # "auto" = what it means
  if cfg.split_mode != "time_cutoff":
    opts.pop("eval_fraction")  # unused: any value gives the same folder
  if cfg.dataset != "synthetic":
    opts.pop("synthetic")
    src = pathlib.Path(cfg.data_dir).expanduser().resolve()
    if not cfg.data_dir or not src.exists():
      raise DataError(f"--data-dir {cfg.data_dir!r} does not exist (dataset {cfg.dataset!r} needs the raw files)")
    opts["data_dir"] = str(src)
    folder = src if src.is_dir() else src.parent
    opts["files"] = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
  opts["format_version"] = FORMAT_VERSION
  return hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def hard_neg_frac(cfg: DataConfig) -> float | None:
  """The in-category share in use (None unless negatives = in_category)."""
  if cfg.negatives_kind() != "in_category":
    return None
  return 0.5 if cfg.hard_neg_frac is None else float(cfg.hard_neg_frac)


def _dist(x: np.ndarray) -> dict:
  x = np.asarray(x, np.float64)
  if len(x) == 0:
    return {"count": 0}
  q = np.percentile(x, [50, 90])
  return {"count": int(len(x)), "mean": round(float(x.mean()), 3), "min": float(x.min()), "median": float(q[0]),
          "p90": float(q[1]), "max": float(x.max())}


def _build(cfg: DataConfig) -> tuple[EventTable, dict, dict, dict]:
  """Returns (events, stats, extra arrays to save, extra meta)."""
  if cfg.dataset == "synthetic":
    events, facts = synthetic.generate(cfg.synthetic)
    stats = {"raw_rows": len(events.item), "raw_users": int(cfg.synthetic.num_users),
             "raw_items": len(events.item_ids) - 1, "raw_cats": len(events.cat_ids) - 1}
    extra = {"item_theme": facts["item_theme"], "chain": facts["chain"]}
    return events, stats, extra, {"num_themes": facts["num_themes"]}
  df, counts = readers.read_dataset(cfg.dataset, cfg.data_dir, cfg.columns)
  events, stats = build_events(df, min_user_events=cfg.min_user_events, kcore=cfg.kcore, source=cfg.data_dir)
  return events, {**stats, **counts}, {}, {}


def _write(cfg: DataConfig, fp: str, tmp: pathlib.Path) -> None:
  cfg.validate()
  S, T = cfg.num_sessions, cfg.session_len
  events, stats, extra, extra_meta = _build(cfg)
  gap_s = sessions.parse_gap(cfg.session_gap)
  sid = sessions.session_ids(events.user, events.time, mode=cfg.session_mode, gap_s=gap_s, chunk_len=cfg.chunk_len)
  sess = sessions.Sessions.from_ids(sid)
  user_start = events.user_start
  cand = examples.target_candidates(events.candidate, user=events.user, item=events.item, behavior=events.behavior,
                                    behavior_names=events.behavior_names, sid=sid,
                                    target_behaviors=cfg.target_behaviors,
                                    exclude_repeat_targets=cfg.exclude_repeat_targets,
                                    target_position=cfg.target_position)
  train_end = None  # time_cutoff: popularity counts only events before the valid cutoff
  if cfg.split_mode == "time_cutoff":
    targets, (train_end, test_start) = examples.split_targets_by_time(
        events.user, events.time, cand, user_start, cfg.max_train_targets_per_user, cfg.eval_fraction)
    stats["split_cutoffs"] = {"valid": train_end, "test": test_start}
  else:
    targets = examples.split_targets(events.user, cand, user_start, cfg.max_train_targets_per_user,
                                     cfg.eval_targets_per_user)
  num_items = len(events.item_ids) - 1
  counts = examples.train_item_counts(events.user, events.item, user_start,
                                      np.concatenate([targets["valid"], targets["test"]]), num_items,
                                      time=events.time, end_time=train_end)
  meta_neg = {"negatives": cfg.negatives_kind(), "neg_ratio": cfg.neg_ratio, "neg_alpha": cfg.neg_alpha,
              "hard_neg_frac": hard_neg_frac(cfg), "num_items": num_items}
  sampler = examples.make_sampler(meta_neg, events.item_group, events.item_cat, counts)
  stats.update(negatives=meta_neg["negatives"], hard_neg_frac=meta_neg["hard_neg_frac"])
  arrays = {}
  for i, name in enumerate(examples.SPLITS):
    g = targets[name]
    arrays[f"{name}_target"] = g
    hist = sessions.grid_items(sess, user_start, events.user, events.item, g, S, T)
    pos = events.item[g]
    stats[f"{name}_positive_in_history"] = round(float((hist == pos[:, None]).any(1).mean()), 4) if len(g) else 0.0
    if name != "train":  # train negatives are drawn per epoch from data.seed when iterating (prepared.py)
      rng = np.random.default_rng([cfg.split_seed, i, 7919])  # one stream per split: fixed evaluation sets
      neg = sampler.draw(pos, hist, rng)
      arrays[f"{name}_neg"] = neg
      stats[f"{name}_negative_in_history"] = (round(float(examples.in_rows(hist, np.maximum(neg, 1)).mean()), 4)
                                              if neg.size else 0.0)
    hist_len = g - user_start[events.user[g] - 1]
    kept = sessions.kept_counts(sess, user_start[events.user[g] - 1], g, S, T)
    stats[f"{name}_examples_next"] = int(len(g))
    stats[f"{name}_examples_ctr"] = int(len(g) * (1 + cfg.neg_ratio))
    stats[f"{name}_history_len"] = _dist(hist_len)
    stats[f"{name}_fraction_truncated"] = round(float((kept < hist_len).mean()), 4) if len(g) else 0.0
  if len(targets["test"]) == 0:
    raise DataError(f"{cfg.dataset}: no user has a target with history; check min_user_events / data")
  per_user_sessions = np.diff(np.append(sid[user_start[:-1]], len(sess.start)))
  num_users, num_cats = len(events.user_ids) - 1, len(events.cat_ids) - 1
  stats.update({"users": num_users, "items": num_items, "cats": num_cats, "events": int(len(events.item)),
                "num_sessions": S, "session_len": T, "session_mode": cfg.session_mode, "session_gap_s": gap_s,
                "sessions": int(len(sess.start)), "session_length": _dist(sess.end - sess.start),
                "sessions_per_user": _dist(per_user_sessions)})
  if cfg.dataset == "synthetic":  # how well the time-gap rule recovers the true sessions
    pure = np.array([len(np.unique(events.theme[a:b])) == 1 for a, b in zip(sess.start, sess.end)])
    stats["session_theme_purity"] = round(float(pure.mean()), 4)
  meta = {"dataset": cfg.dataset, "fingerprint": fp, "format_version": FORMAT_VERSION, "num_users": num_users,
          "num_items": num_items, "num_cats": num_cats, "num_sessions": S, "session_len": T,
          **meta_neg, "session_mode": cfg.session_mode, "session_gap_s": gap_s,
          "num_examples": {s: {"ctr": stats[f"{s}_examples_ctr"], "next": stats[f"{s}_examples_next"]}
                           for s in examples.SPLITS},
          "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_FINGERPRINT},
          **extra_meta}
  np.savez(tmp / "events.npz", user=events.user, item=events.item, cat=events.cat, time=events.time,
           behavior=events.behavior, theme=events.theme, sid=sid, item_cat=events.item_cat,
           item_group=events.item_group, item_counts=counts, **extra)
  np.savez(tmp / "targets.npz", **arrays)
  np.savez(tmp / "mappings.npz", user_ids=events.user_ids, item_ids=events.item_ids, cat_ids=events.cat_ids,
           behavior_names=np.array(events.behavior_names, dtype=str))
  (tmp / "stats.json").write_text(json.dumps(stats, indent=1, sort_keys=True))
  (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))  # written last: marks completion


def _existing_fingerprint(out: pathlib.Path) -> str | None:
  try:
    return json.loads((out / "meta.json").read_text())["fingerprint"]
  except (OSError, ValueError, KeyError):
    return None


def prepare_dataset(cfg: DataConfig, out: str | os.PathLike | None = None) -> pathlib.Path:
  """Prepare ``cfg`` into ``out`` (default: ``cache_dir/<dataset>-<fingerprint>``) unless it is already there; with
  ``format="array_record"`` also its ArrayRecord copy (``out/array_record``, added to an existing folder)."""
  path = _prepare_numpy(cfg, out)
  if cfg.format == "array_record":
    from mos_jax.data import records  # noqa: PLC0415  (needs the optional tensorflow-datasets)
    records.write_array_record(path)
  return path


def _prepare_numpy(cfg: DataConfig, out: str | os.PathLike | None) -> pathlib.Path:
  cfg.validate()
  fp = fingerprint(cfg)
  out = pathlib.Path(out if out is not None else pathlib.Path(cfg.cache_dir).expanduser() / f"{cfg.dataset}-{fp}")
  out = out.expanduser()
  if out.is_dir() and not any(out.iterdir()):
    out.rmdir()  # an empty folder made by the caller: take its place
  if out.exists():
    have = _existing_fingerprint(out)
    if have == fp:
      return out
    what = f"a different prepared dataset (fingerprint {have}, wanted {fp})" if have else "other files"
    raise DataError(f"{out}: already holds {what}; choose another --out or remove it")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
  try:
    _write(cfg, fp, tmp)
    try:
      os.rename(tmp, out)  # atomic on one filesystem
    except OSError:
      if _existing_fingerprint(out) != fp:  # someone else finished first with other content
        raise
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return out
