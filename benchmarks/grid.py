"""The comparison grid: host x {backbone, GShard, Expert Choice, DSelect-k, MoS} x seeds, on synthetic and Taobao CTR.

  python benchmarks/grid.py --out=runs/grid                        # full: 7 hosts x 5 models x 3 seeds x 2 datasets
  python benchmarks/grid.py --out=runs/grid_quick --quick          # <= 15 min on 2 cores (see --quick below)
  python benchmarks/grid.py --out=runs/grid --hosts=sasrec,twin --seeds=0,1 --steps=200
  python benchmarks/grid.py --out=runs/grid --collect               # table of the cells finished so far

For every (dataset, host) it runs the multi-seed runner ``mos_jax.experiments.sweep`` (train.py then eval.py
--rules per variant and seed, each in its own subprocess; finished runs are skipped, so re-running completes an
interrupted grid) with the five variants ``--config.model.name=NAME`` and the shared overrides
``--config.model.backbone=HOST`` plus the budget: every cell gets the same ``--steps`` optimizer steps at the same
``--batch``, with ``--evals`` validations spread over them (the best one's checkpoint is tested; early stopping can
only shorten a cell). MoE baselines get ``moe.num_experts = model.num_themes`` (K experts against K themes). The
runs share JAX's persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``, default ~/.cache/mos_jax/jax_cache),
so seeds after the first skip most compilation.

Output ``OUT/grid.md`` and ``OUT/grid.json``: one table (dataset, host, model: AUC, GAUC, logloss as mean ± sd over
seeds, forward MFLOPs per example, parameters, train examples/s), the best rule baseline of each dataset (and the
oracle ceiling where one exists), the relative AUC / GAUC lift of MoS over each plain host (and its mean over hosts,
the paper's headline: +0.68% AUC, +0.72% GAUC) and over each MoE model of the same host, each with its win / tie /
loss verdict, and those verdicts counted over hosts. Per-(dataset, host) sweep tables stay in
``OUT/<dataset>/<host>/summary.md``.

Full defaults: all 7 hosts, seeds 0,1,2, 400 steps at batch 128 (1.3 epochs of the synthetic data, 3.2 of the
Taobao head: a budget that fits the grid into hours, not days, on 2 cores; docs/results.md gives the measured
time), 2 validations, D = H = 32, K = E = 4. ``--quick``: hosts sasrec and din (one target-blind, one target-aware
host), seed 0 only (so no sd), 60 steps at batch 64, one validation, D = H = 16, on the datasets' default
preparations (configs/default.py, configs/taobao_ctr.py, so cached prepared data are reused): 2 x 2 x 5 = 20 cells,
measured in docs/baselines.md ("The grid"). Explicit flags override the --quick values. ``--collect`` trains nothing
and tabulates the cells finished so far (listing the others): a grid too long for one sitting can be read while it
runs or after an interruption.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Mapping, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from mos_jax.experiments import sweep  # noqa: E402
from mos_jax.runtime import compilation_cache_dir  # noqa: E402

HOSTS = ("sasrec", "gru4rec", "din", "transact", "sdim", "twin", "mamba4rec")
MODELS = ("backbone", "gshard", "expert_choice", "dselect_k", "mos")
DATASETS = {"synthetic": "configs/default.py", "taobao": "configs/taobao_ctr.py"}
METRICS = ("auc", "gauc", "logloss")
QUICK = dict(hosts="sasrec,din", seeds="0", steps=60, batch=64, dim=16, evals=1)
FULL = dict(hosts=",".join(HOSTS), seeds="0,1,2", steps=400, batch=128, dim=32, evals=2)


# -- pure parts (tests/test_grid.py) ----------------------------------------------------------------------------------


def table_rows(summaries: Mapping[tuple[str, str], Mapping[str, Any]],
               params: Mapping[tuple[str, str, str], int]) -> list[dict[str, Any]]:
  """One row per (dataset, host, model) from each sweep's ``aggregate`` (summary.json) and the parameter counts.

  Metric cells are sweep.mean_sd tuples ``(mean, sd, n)``; rows follow the summaries' order, then MODELS order.
  """
  rows = []
  for (dataset, host), agg in summaries.items():
    variants = agg["variants"]
    for model in [m for m in MODELS if m in variants] + [m for m in variants if m not in MODELS]:
      v = variants[model]
      rows.append({"dataset": dataset, "host": host, "model": model,
                   **{k: tuple(v.get(f"all/{k}", (math.nan, math.nan, 0))) for k in METRICS},
                   "flops": v["flops"][0], "train_examples_per_s": tuple(v["train_examples_per_s"]),
                   "params": params.get((dataset, host, model)), "seeds": list(v["seeds"])})
  return rows


def lift(new: float, base: float) -> float:
  """Relative lift in percent: 100 * (new - base) / base (nan when either is missing or base is 0)."""
  if not (math.isfinite(new) and math.isfinite(base)) or base == 0:
    return math.nan
  return 100.0 * (new - base) / base


def lifts(rows: Sequence[Mapping[str, Any]], *, model: str = "mos", base: str = "backbone"
          ) -> dict[str, dict[str, Any]]:
  """Per dataset: {host: {"auc": %, "gauc": %, "auc_z": z, "auc_verdict": v, ...}}: the lift of ``model`` over
  ``base`` (seed means), its gap in sd of the difference and the verdict of ``sweep.compare`` (win / tie / loss
  beyond 2 sd; n/a without 2 seeds a side), and the mean lift over hosts."""
  by = {(r["dataset"], r["host"], r["model"]): r for r in rows}
  out: dict[str, dict[str, Any]] = {}
  for dataset, host in dict.fromkeys((r["dataset"], r["host"]) for r in rows):
    if (dataset, host, model) not in by or (dataset, host, base) not in by:
      continue
    new, old = by[(dataset, host, model)], by[(dataset, host, base)]
    cell: dict[str, Any] = {}
    for k in ("auc", "gauc"):
      _, cell[f"{k}_z"], cell[f"{k}_verdict"] = sweep.compare(new[k], old[k])
      cell[k] = lift(new[k][0], old[k][0])
    out.setdefault(dataset, {"hosts": {}})["hosts"][host] = cell
  for d in out.values():
    for k in ("auc", "gauc"):
      vals = [h[k] for h in d["hosts"].values() if math.isfinite(h[k])]
      d[f"mean_{k}"] = sum(vals) / len(vals) if vals else math.nan
  return out


def verdict_counts(lift_tables: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per (dataset, base) of ``lifts`` tables: how many hosts MoS wins, ties and loses against ``base`` on AUC
  and GAUC (n/a verdicts are not counted), and the mean lifts over hosts."""
  rows = []
  for base, table in lift_tables.items():
    for dataset, d in table.items():
      row = {"dataset": dataset, "base": base, "hosts": len(d["hosts"]),
             "mean_auc": d["mean_auc"], "mean_gauc": d["mean_gauc"]}
      for k in ("auc", "gauc"):
        verdicts = [h[f"{k}_verdict"] for h in d["hosts"].values()]
        row[k] = {v: verdicts.count(v) for v in ("win", "tie", "loss")}
      rows.append(row)
  return sorted(rows, key=lambda r: r["dataset"])  # stable: bases keep their order within a dataset


def best_rules(summaries: Mapping[tuple[str, str], Mapping[str, Any]], *, oracle: bool = False
               ) -> dict[str, dict[str, Any]]:
  """Per dataset: the sweep's best rule (by AUC on all rows) and its metrics; every host of a dataset scores the
  same rows, so its first summary decides.

  Oracle rules (``mos_jax.evaluation.rules.ORACLE_RULES``: they know how the synthetic data were made) are a ceiling,
  not a trivial baseline: the default gives the best of the others, ``oracle=True`` the best oracle.
  """
  out = {}
  for (dataset, _), agg in summaries.items():
    name = agg["oracle_rule" if oracle else "best_rule"]
    if dataset not in out and name is not None:
      out[dataset] = {"rule": name, **{k: agg["rules"][name].get(f"all/{k}", (math.nan, math.nan, 0))[0]
                                       for k in METRICS}}
  return out


def _cell(ms: Sequence[float], digits: int = 4) -> str:
  m, sd, n = ms
  if not n or not math.isfinite(m):
    return "—"
  return f"{m:.{digits}f} ± {sd:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def _pct(v: float) -> str:
  return f"{v:+.2f}%" if math.isfinite(v) else "—"


def _lift_cell(v: Mapping[str, Any], k: str) -> str:
  z = v[f"{k}_z"]
  return f"{_pct(v[k])} ({z:+.1f} sd, {v[k + '_verdict']})" if math.isfinite(z) else _pct(v[k])


def markdown(rows: Sequence[Mapping[str, Any]], lift_tables: Mapping[str, Mapping[str, Any]], rules: Mapping[str, Any],
             title: str, command: str, missing: Mapping[str, Sequence[str]] | None = None,
             oracles: Mapping[str, Any] | None = None) -> str:
  lines = [f"### {title}", "", "| dataset | host | model | AUC | GAUC | logloss | fwd MFLOPs/ex | params | "
           "train ex/s | seeds |", "|---|---|---|---|---|---|---:|---:|---:|---:|"]
  for r in rows:
    f, n_params = r["flops"], r.get("params")
    flops = f"{f / 1e6:.2f}" if f is not None and math.isfinite(f) else "—"
    lines.append(f"| {r['dataset']} | {r['host']} | {r['model']} | {_cell(r['auc'])} | {_cell(r['gauc'])} | "
                 f"{_cell(r['logloss'])} | {flops} | {'—' if n_params is None else f'{n_params:,}'} | "
                 f"{_cell(r['train_examples_per_s'], 0)} | {len(r['seeds'])} |")
  for label, table in (("best rule", rules), ("oracle rule (a ceiling)", oracles or {})):
    for dataset, rule in table.items():
      cells = " | ".join(f"{rule[k]:.4f}" if math.isfinite(rule[k]) else "—" for k in METRICS)
      lines.append(f"| {dataset} | {label}: `{rule['rule']}` | — | {cells} | — | — | — | — |")
  if lift_tables:
    lines += ["", "MoS against each model of the same host, counted over hosts (win / tie / loss: beyond 2 sd of the "
              "difference either way, otherwise a tie; a host with one seed on either side is in no column):", "",
              "| dataset | MoS vs | hosts | AUC win / tie / loss | GAUC win / tie / loss | mean AUC lift | "
              "mean GAUC lift |", "|---|---|---:|---|---|---:|---:|"]
    for r in verdict_counts(lift_tables):
      wtl = {k: " / ".join(str(r[k][v]) for v in ("win", "tie", "loss")) for k in ("auc", "gauc")}
      lines.append(f"| {r['dataset']} | {r['base']} | {r['hosts']} | {wtl['auc']} | {wtl['gauc']} | "
                   f"{_pct(r['mean_auc'])} | {_pct(r['mean_gauc'])} |")
  for base, table in lift_tables.items():
    what = "the plain host (the paper reports +0.68% AUC and +0.72% GAUC on average)" if base == "backbone" else \
        f"{base} of the same host"
    lines += ["", f"Relative lift of MoS over {what}; seed means, then the gap in sd of the difference "
              "(within 2 sd: a tie):", "", "| dataset | host | AUC lift | GAUC lift |", "|---|---|---:|---:|"]
    for dataset, d in table.items():
      for host, v in d["hosts"].items():
        lines.append(f"| {dataset} | {host} | {_lift_cell(v, 'auc')} | {_lift_cell(v, 'gauc')} |")
      lines.append(f"| {dataset} | **mean over hosts** | {_pct(d['mean_auc'])} | {_pct(d['mean_gauc'])} |")
  lines += ["", f"Command: `{command}`"]
  if missing:
    lines += ["", "Not finished, so not in the tables: " + "; ".join(
        f"{block}: {', '.join(cells)}" for block, cells in missing.items()) + "."]
  return "\n".join(lines) + "\n"


# -- running -----------------------------------------------------------------------------------------------------------


def count_params(workdir: pathlib.Path) -> int | None:
  """Trainable parameters of the model a run saved (config.json), from an abstract build (nothing allocated)."""
  path = workdir / "config.json"
  if not path.exists():
    return None
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from mos_jax import config as config_lib  # noqa: PLC0415
  from mos_jax.models import build_model  # noqa: PLC0415

  cfg = config_lib.config_from_dict(json.loads(path.read_text()))
  abstract = nnx.eval_shape(lambda: build_model(cfg.model, rngs=nnx.Rngs(0)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def shared_overrides(a: argparse.Namespace, host: str) -> list[str]:
  """The overrides every variant of one host shares: the host, the budget and the sizes, then ``a.extra``."""
  every = max(1, a.steps // a.evals)
  return [f"--config.model.backbone={host}", f"--config.train.num_steps={a.steps}",
          f"--config.train.batch_size={a.batch}", f"--config.train.eval_every={every}",
          f"--config.train.checkpoint_every={every}", f"--config.train.warmup_steps={min(100, a.steps // 10)}",
          f"--config.train.log_every={max(1, min(20, a.steps // 5))}", f"--config.model.embed_dim={a.dim}",
          f"--config.model.hidden_dim={a.dim}", f"--config.model.moe.num_experts={a.themes}",
          f"--config.model.num_themes={a.themes}", *a.extra]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="grid folder: OUT/<dataset>/<host>/..., OUT/grid.{md,json}")
  p.add_argument("--quick", action="store_true", help="tiny grid (<= 15 min on 2 cores); explicit flags still win")
  p.add_argument("--hosts", default=None, help=f"comma-separated subset of {','.join(HOSTS)}")
  p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
  p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated subset of {','.join(DATASETS)}")
  p.add_argument("--seeds", default=None)
  p.add_argument("--steps", type=int, default=None, help="optimizer steps per cell (same for every cell)")
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--dim", type=int, default=None, help="D = H")
  p.add_argument("--evals", type=int, default=None, help="validations per cell (the best checkpoint is tested)")
  p.add_argument("--themes", type=int, default=4, help="K themes (MoS) = E experts (MoE)")
  p.add_argument("--split", default="test", choices=("valid", "test"))
  p.add_argument("--collect", action="store_true",
                 help="train nothing: tabulate the cells finished so far and list the others")
  a, extra = p.parse_known_args(argv)
  bad = [x for x in extra if not x.startswith("--config.") or "=" not in x]
  if bad:
    p.error(f"unrecognised arguments {bad}: extra overrides must be --config.FIELD=VALUE")
  a.extra = extra
  for key, value in (QUICK if a.quick else FULL).items():
    if getattr(a, key) is None:
      setattr(a, key, value)
  for field, allowed in (("hosts", HOSTS), ("models", MODELS), ("datasets", tuple(DATASETS))):
    items = [x for x in getattr(a, field).split(",") if x]
    unknown = sorted(set(items) - set(allowed))
    if unknown or not items:
      p.error(f"--{field}: unknown {unknown}; expected a non-empty subset of {allowed}")
    setattr(a, field, items)
  return a


def main(argv: Sequence[str]) -> int:
  a = parse_args(argv)
  # train.py / eval.py subprocesses inherit this: a cell's compiled steps are reused by its other seeds.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", compilation_cache_dir())
  out = pathlib.Path(a.out)
  t0 = time.perf_counter()
  summaries, params, missing = {}, {}, {}
  for dataset in a.datasets:
    for host in a.hosts:
      folder = out / dataset / host
      sweep_argv = [f"--config={DATASETS[dataset]}", f"--seeds={a.seeds}", f"--out={folder}", f"--split={a.split}",
                    f"--title={dataset} / {host}", *shared_overrides(a, host)]
      sweep_argv += [f"--variant={m}=--config.model.name={m}" for m in a.models] + (["--collect"] if a.collect else [])
      print(f"== {dataset} / {host} ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
      if sweep.main(sweep_argv) != 0:
        if a.collect:  # nothing finished in this block (sweep said why)
          missing[f"{dataset} / {host}"] = ["every cell"]
          continue
        print(f"error: the sweep of {dataset} / {host} failed (logs under {folder})", file=sys.stderr)
        return 1
      summary = json.loads((folder / "summary.json").read_text())
      summaries[(dataset, host)] = summary["aggregate"]
      if summary.get("missing"):
        missing[f"{dataset} / {host}"] = summary["missing"]
      for m in a.models:
        params[(dataset, host, m)] = count_params(folder / m / f"seed{a.seeds.split(',')[0]}")
  rows = table_rows(summaries, params)
  lift_tables = {base: lifts(rows, base=base) for base in MODELS if base != "mos" and base in a.models}
  rules, oracles = best_rules(summaries), best_rules(summaries, oracle=True)
  command = "python benchmarks/grid.py " + " ".join(argv)
  minutes = (time.perf_counter() - t0) / 60
  md = markdown(rows, lift_tables, rules, f"Grid ({', '.join(a.datasets)}; {a.steps} steps x batch {a.batch} per "
                f"cell, D = H = {a.dim}, K = E = {a.themes}, {a.split} split)", command, missing, oracles)
  md += f"\nWall time of this invocation: {minutes:.1f} min.\n"
  out.mkdir(parents=True, exist_ok=True)
  for name, text in (("grid.md", md), ("grid.json", json.dumps(
      {"command": command, "args": vars(a), "rows": rows, "lifts": lift_tables,
       "verdicts": verdict_counts(lift_tables), "best_rules": rules, "oracle_rules": oracles, "missing": missing,
       "wall_min": minutes}, indent=1, allow_nan=True))):
    sweep.write_text_atomic(out / name, text)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
