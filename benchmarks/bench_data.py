"""Benchmark of the data layer (not a test): prepare time per dataset, one epoch of batches, synthetic difficulty.

    python benchmarks/bench_data.py [--data ../shared/data] [--json runs/bench/bench_data.json] [--array-record]

For each real dataset in --data and for the synthetic default it times a fresh ``prepare_dataset`` (S=16, T=16),
``split('train', 'ctr')``, and one epoch of ``make_iterator`` at batch 1024 with each available backend. For the
synthetic data it also prints the AUC of hand-written rules (synthetic.rule_scores) on the test CTR examples.
``--array-record`` also times writing the ArrayRecord copy (records.py, every split and task) and the same epoch
read from it with ``make_record_iterator``, per backend.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mos_jax.data import (DataConfig, load_prepared, make_iterator, make_record_iterator,  # noqa: E402
                          prepare_dataset)
from mos_jax.data.synthetic import auc, rule_scores  # noqa: E402

REAL = {"taobao-userbehavior-head": ("taobao", "30m"), "ml-100k": ("ml-100k", "30m"),
        "ml-latest-small": ("ml-latest-small", "30m"), "amazon-grocery-rechorus": ("amazon-rechorus", "1d")}


def _epoch(arrays: dict | pathlib.Path, backend: str, batch: int) -> tuple[float, int]:
  kw = dict(batch_size=batch, seed=0, shuffle=True, drop_remainder=True, num_epochs=1, backend=backend)
  # a path: the prepared folder's ArrayRecord copy (the numpy path's batches, read from disk)
  it = make_record_iterator(arrays, "train", "ctr", **kw) if isinstance(arrays, pathlib.Path) else make_iterator(
      arrays, **kw)
  t0, n = time.perf_counter(), 0
  for b in it:
    n += len(b["label"])
  return time.perf_counter() - t0, n


def bench(cfg: DataConfig, tmp: pathlib.Path, batch: int, backends: list[str], array_record: bool = False) -> dict:
  t0 = time.perf_counter()
  path = prepare_dataset(cfg, tmp / cfg.dataset)
  prep = time.perf_counter() - t0
  t0 = time.perf_counter()
  ds = load_prepared(path)
  arrays = ds.split("train", "ctr")
  split_s = time.perf_counter() - t0
  row = {"dataset": cfg.dataset, "prepare_s": round(prep, 2), "load_split_s": round(split_s, 2),
         "train_ctr_examples": len(arrays["label"]), "users": ds.meta["num_users"], "items": ds.meta["num_items"],
         "test_fraction_truncated": ds.stats["test_fraction_truncated"]}
  for be in backends:
    secs, n = _epoch(arrays, be, batch)
    row[f"epoch_s_{be}"] = round(secs, 3)
    row[f"examples_per_s_{be}"] = int(n / secs)
  if array_record:
    from mos_jax.data import records  # noqa: PLC0415  (needs tensorflow-datasets)
    t0 = time.perf_counter()
    out = records.write_array_record(path)
    row["array_record_write_s"] = round(time.perf_counter() - t0, 2)
    row["array_record_mb"] = round(sum(f.stat().st_size for f in out.iterdir()) / 2**20, 1)
    row["npz_mb"] = round(sum(f.stat().st_size for f in path.glob("*.npz")) / 2**20, 1)
    for be in backends:
      secs, n = _epoch(path, be, batch)
      row[f"examples_per_s_array_record_{be}"] = int(n / secs)
  if cfg.dataset == "synthetic":
    test = ds.split("test", "ctr")
    sc = rule_scores(test, ds.events["item_theme"], ds.events["chain"])
    row["rule_auc_test"] = {k: round(auc(test["label"], v), 4) for k, v in sc.items()}
  return row


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
  p.add_argument("--json", default="runs/bench/bench_data.json")
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--array-record", action="store_true", help="also write and read the ArrayRecord copy")
  args = p.parse_args()
  backends = ["numpy"] + (["grain"] if importlib.util.find_spec("grain") else [])
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    base = dict(num_sessions=16, session_len=16, cache_dir=tmp)
    rows.append(bench(DataConfig(**base), pathlib.Path(tmp), args.batch, backends, args.array_record))
    for folder, (name, gap) in REAL.items():
      src = pathlib.Path(args.data) / folder
      if src.is_dir():
        rows.append(bench(DataConfig(dataset=name, data_dir=str(src), session_gap=gap, **base), pathlib.Path(tmp),
                          args.batch, backends, args.array_record))
      else:
        print(f"skipped {folder}: {src} is absent")
  cols = ["dataset", "prepare_s", "load_split_s", "train_ctr_examples"] + [f"examples_per_s_{b}" for b in backends]
  if args.array_record:
    cols += ["array_record_write_s", "array_record_mb", "npz_mb"] + [f"examples_per_s_array_record_{b}"
                                                                     for b in backends]
  print(" | ".join(f"{c:>22}" for c in cols))
  for r in rows:
    print(" | ".join(f"{r[c]!s:>22}" for c in cols))
  for r in rows:
    if "rule_auc_test" in r:
      print(f"synthetic test CTR AUC of hand-written rules: {r['rule_auc_test']}")
  info = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, python "
                     f"{platform.python_version()}", "command": " ".join(sys.argv), "batch": [args.batch, 16, 16],
          "config": dataclasses.asdict(DataConfig()), "rows": rows}
  out = pathlib.Path(args.json)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(info, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
