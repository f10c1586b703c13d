"""Multi-seed runner: train and evaluate every (variant, seed) in its own workdir, then mean ± sd tables.

    python -m mos_jax.experiments.sweep --config=configs/default.py --seeds=0,1,2 --out=runs/sweeps/synthetic \
        --variant mos= --variant backbone=--config.model.name=backbone --variant gshard=--config=configs/gshard.py \
        [--config.FIELD=VALUE ...]   # overrides shared by every variant

Each run is two subprocesses, exactly the commands a user would type (so a sweep measures what the README promises):
``python train.py --config=C <shared> <variant> --config.seed=K --config.data.seed=K --workdir=OUT/<variant>/seed<K>``
then ``python eval.py --workdir=... --split=SPLIT --rules``. ``seed`` (init, dropout) and ``data.seed`` (training
negatives and order) move together; ``data.split_seed`` stays fixed, so every seed is scored on the same rows.
A finished run (its eval file exists) is not run again: re-running the command completes an interrupted sweep;
``--collect`` trains nothing and tabulates the runs finished so far (the others are listed under the table).

Outputs: ``OUT/summary.json`` (every run's metrics and the aggregates) and ``OUT/summary.md`` (one table: variants,
then the best rule of the same rows and, where one ran, the best oracle rule as a ceiling (``rules.ORACLE_RULES``: it
knows how the data were made, so it is never "the best rule"), metrics as mean ± sd over seeds on all rows and on the
session-start slice, train examples/s, train wall time and forward FLOPs per example). ``--reference NAME`` adds, for
every other variant, its gap to NAME on the main metric (all rows and session starts) in units of the sd of the
difference, sqrt(sd_a² + sd_b²), with the verdict of docs/results.md: beyond 2 of those sd a win or a loss, otherwise
a tie.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Sequence

from mos_jax.evaluation.rules import ORACLE_RULES

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MAIN_METRICS = {"ctr": ("auc", "gauc", "logloss"), "next": ("ndcg@10", "hr@10", "mrr")}
RULE_KEY = {"ctr": "auc", "next": "ndcg@10"}  # how the best rule is chosen (on all rows)
SLICES = ("all", "session_start")


@dataclasses.dataclass
class Variant:
  name: str
  overrides: list[str]


def parse_variant(text: str) -> Variant:
  """``NAME=--config.a=1 --config.b=2`` (overrides separated by spaces; may be empty)."""
  name, sep, rest = text.partition("=")
  if not sep or not name or not name.replace("_", "").replace("-", "").isalnum():
    raise ValueError(f"--variant {text!r}: expected NAME=OVERRIDES with NAME of letters, digits, '_' or '-'")
  overrides = rest.split()
  for o in overrides:
    if not o.startswith("--config") or "=" not in o:
      raise ValueError(f"--variant {text!r}: override {o!r} is not --config=FILE or --config.FIELD=VALUE")
  return Variant(name, overrides)


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
  """Mean and sample standard deviation (ddof = 1; 0 for a single value) of the finite values, and their count."""
  v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
  if not v:
    return float("nan"), float("nan"), 0
  m = sum(v) / len(v)
  sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
  return m, sd, len(v)


def train_throughput(workdir: pathlib.Path) -> float:
  """Median train examples/s of the run's logged intervals, leaving out the first (it holds compilation)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return float("nan")
  xs = [r["examples_per_s"] for r in map(json.loads, path.read_text().splitlines())
        if r.get("split") == "train" and r.get("examples_per_s") is not None][1:]
  return sorted(xs)[len(xs) // 2] if xs else float("nan")


def forward_flops(workdir: pathlib.Path) -> float:
  """Forward FLOPs per example (``count_flops(...)['total']``) of the run's saved, dataset-filled model config."""
  from mos_jax import config as config_lib  # noqa: PLC0415
  from mos_jax.models.flops import count_flops  # noqa: PLC0415

  cfg = config_lib.config_from_dict(json.loads((workdir / "config.json").read_text()))
  try:
    return float(count_flops(cfg.model, batch_size=cfg.train.batch_size)["total"])
  except ValueError:  # an encoder without a FLOPs formula
    return float("nan")


def _run(cmd: list[str], log: pathlib.Path) -> float:
  """Runs ``cmd`` from the repo root with output to ``log``; returns wall seconds; raises on failure."""
  t0 = time.perf_counter()
  with open(log, "w", encoding="utf-8") as f:
    rc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
  if rc != 0:
    tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-15:])
    raise RuntimeError(f"{' '.join(cmd)} exited with {rc}; log {log}:\n{tail}")
  return time.perf_counter() - t0


def write_text_atomic(path: pathlib.Path, text: str) -> None:
  """Writes ``text`` to a temporary file beside ``path``, then renames it: readers never see half a file."""
  tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)


def _write_json(path: pathlib.Path, obj: Any) -> None:
  write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=True))


def _commands(args: argparse.Namespace, variant: Variant, seed: int, shared: list[str]
              ) -> tuple[pathlib.Path, list[str], list[str]]:
  """(workdir, train command, eval command) of one (variant, seed)."""
  wd = pathlib.Path(args.out) / variant.name / f"seed{seed}"
  train_cmd = [sys.executable, "train.py", f"--config={args.config}", *shared, *variant.overrides,
               f"--config.seed={seed}", f"--config.data.seed={seed}", f"--workdir={wd}"]
  eval_cmd = [sys.executable, "eval.py", f"--workdir={wd}", f"--split={args.split}"] + (["--rules"] if args.rules else [])
  return wd, train_cmd, eval_cmd


def finished_record(args: argparse.Namespace, variant: Variant, seed: int, shared: list[str]) -> dict[str, Any] | None:
  """The record of a finished (variant, seed) run of this very command, or None when it has not finished.

  ``sweep_train.json`` (command, wall time) marks a finished training, ``sweep_run.json`` the whole record. A folder
  left by a different command raises RuntimeError rather than being silently reused.
  """
  wd, train_cmd, eval_cmd = _commands(args, variant, seed, shared)
  cmd_text, eval_text = " ".join(train_cmd[1:]), " ".join(eval_cmd[1:])
  for f in (wd / "sweep_run.json", wd / "sweep_train.json"):
    if f.exists() and json.loads(f.read_text())["train_cmd"] != cmd_text:
      raise RuntimeError(f"{wd} holds a run of another command ({f.name}: {json.loads(f.read_text())['train_cmd']!r}"
                         f", now {cmd_text!r}); use another --out or remove that folder")
  record_file = wd / "sweep_run.json"
  if record_file.exists() and (wd / f"eval_{args.split}.json").exists():
    record = json.loads(record_file.read_text())
    if record.get("eval_cmd", eval_text) == eval_text:
      return record
  return None


def run_one(args: argparse.Namespace, variant: Variant, seed: int, shared: list[str]) -> dict[str, Any]:
  """Trains and evaluates one (variant, seed); a finished step with the same command is not run again."""
  record = finished_record(args, variant, seed, shared)
  if record is not None:
    return record
  wd, train_cmd, eval_cmd = _commands(args, variant, seed, shared)
  cmd_text, eval_text = " ".join(train_cmd[1:]), " ".join(eval_cmd[1:])
  train_file = wd / "sweep_train.json"
  wd.mkdir(parents=True, exist_ok=True)
  print(f"[{variant.name} seed {seed}] {cmd_text}", flush=True)
  if train_file.exists():
    train_s = json.loads(train_file.read_text())["train_wall_s"]
  else:
    train_s = _run(train_cmd, wd / "train.log")
    _write_json(train_file, {"train_cmd": cmd_text, "train_wall_s": train_s})
  _run(eval_cmd, wd / "eval.log")
  record = {"variant": variant.name, "seed": seed, "workdir": str(wd), "train_cmd": cmd_text, "eval_cmd": eval_text,
            "train_wall_s": train_s, "train_examples_per_s": train_throughput(wd), "flops": forward_flops(wd),
            "eval": json.loads((wd / f"eval_{args.split}.json").read_text())}
  _write_json(wd / "sweep_run.json", record)
  return record


def _slice_metrics(ev: dict, slice_name: str) -> dict[str, float]:
  if slice_name == "all":
    return ev.get("metrics", {})
  return ev.get("slices", {}).get(slice_name, {})


def aggregate(records: list[dict[str, Any]], task: str) -> dict[str, Any]:
  """Per variant and per rule: mean, sd and n of the main metrics on each slice, plus cost columns."""
  keys = MAIN_METRICS[task]
  out: dict[str, Any] = {"task": task, "variants": {}, "rules": {}, "best_rule": None, "oracle_rule": None}
  for name in dict.fromkeys(r["variant"] for r in records):
    rs = [r for r in records if r["variant"] == name]
    row: dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
    for s in SLICES:
      for k in keys:
        row[f"{s}/{k}"] = mean_sd([_slice_metrics(r["eval"], s).get(k, float("nan")) for r in rs])
    for k in ("train_examples_per_s", "train_wall_s", "flops"):
      row[k] = mean_sd([r[k] for r in rs])
    out["variants"][name] = row
  # Rules are deterministic given the evaluation rows. Every seed of a variant shares them; variants share them unless
  # they change data options, which is checked: with different rows each variant gets its own best-rule row.
  def rule_rows(rs: list[dict[str, Any]]) -> dict[str, Any]:
    names = dict.fromkeys(n for r in rs for n in r["eval"].get("rules", {}))
    return {rule: {f"{s}/{k}": mean_sd([r["eval"]["rules"][rule].get(s, {}).get(k, float("nan")) for r in rs
                                        if rule in r["eval"].get("rules", {})]) for s in SLICES for k in keys}
            for rule in names}

  def best(rows: dict[str, Any], oracle: bool = False) -> str | None:
    """The best non-oracle rule; ``oracle=True``: the best of the rules that know how the data were made."""
    rk = f"all/{RULE_KEY[task]}"
    scored = [(v[rk][0], n) for n, v in rows.items() if (n in ORACLE_RULES) == oracle and math.isfinite(v[rk][0])]
    return max(scored)[1] if scored else None

  out["rules"] = rule_rows(records)
  out["best_rule"] = best(out["rules"])
  out["oracle_rule"] = best(out["rules"], oracle=True)
  same = all(v[1] < 1e-9 for row in out["rules"].values() for v in row.values() if v[2] > 1)
  out["rules_shared"] = same
  if not same:
    out["rules_by_variant"] = {name: rule_rows([r for r in records if r["variant"] == name])
                               for name in out["variants"]}
    out["best_rule_by_variant"] = {name: best(rows) for name, rows in out["rules_by_variant"].items()}
    out["oracle_rule_by_variant"] = {name: best(rows, True) for name, rows in out["rules_by_variant"].items()}
  return out


def compare(a: tuple[float, float, int], b: tuple[float, float, int]) -> tuple[float, float, str]:
  """Gap ``a - b`` of two (mean, sd, n) cells, that gap in units of sqrt(sd_a² + sd_b²), and the verdict.

  ``win`` / ``loss`` beyond 2 units, otherwise ``tie``; ``n/a`` without two seeds on each side (no spread to judge by).
  """
  diff = a[0] - b[0]
  if a[2] < 2 or b[2] < 2 or not math.isfinite(diff):
    return diff, float("nan"), "n/a"
  sd = math.sqrt(a[1] ** 2 + b[1] ** 2)
  z = diff / sd if sd > 0 else math.copysign(math.inf, diff) if diff else 0.0
  return diff, z, "win" if z > 2 else "loss" if z < -2 else "tie"


def _fmt(ms: tuple[float, float, int], digits: int = 4) -> str:
  m, sd, n = ms
  if n == 0:
    return "—"
  return f"{m:.{digits}f} ± {sd:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def markdown(agg: dict[str, Any], title: str, reference: str | None = None) -> str:
  """The sweep's table; with ``reference`` (a variant name), a gap column per slice on the main metric."""
  keys = MAIN_METRICS[agg["task"]]
  cols = [f"{s}/{k}" for s in SLICES for k in keys[:2]]
  gap_cols = [f"{s}/{keys[0]}" for s in SLICES] if reference else []
  if reference is not None and reference not in agg["variants"]:
    raise ValueError(f"--reference {reference!r}: no such variant (have {', '.join(agg['variants'])})")
  label = lambda c: c.replace("all/", "").replace("session_start/", "sess-start ")  # noqa: E731
  head = ["model"] + [label(c) for c in cols] + [f"{label(c)} vs {reference}" for c in gap_cols] + \
         ["seeds", "train ex/s", "train wall s", "fwd MFLOPs/ex"]
  lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, row in agg["variants"].items():
    f = row["flops"][0]
    gaps = []
    for c in gap_cols:
      diff, z, verdict = compare(row[c], agg["variants"][reference][c])
      gaps.append("—" if name == reference else f"{diff:+.4f} ({z:+.1f} sd, {verdict})" if math.isfinite(z)
                  else f"{diff:+.4f} ({verdict})")
    lines.append("| " + " | ".join([name] + [_fmt(row[c]) for c in cols] + gaps + [
        str(row[cols[0]][2]), _fmt(row["train_examples_per_s"], 0), _fmt(row["train_wall_s"], 0),
        f"{f / 1e6:.2f}" if math.isfinite(f) else "—"]) + " |")
  # The best non-oracle rule is the baseline to beat; an oracle rule (it knows how the data were made) is a ceiling.
  if agg.get("rules_shared", True):
    rule_rows = [("best rule", agg["rules"], agg["best_rule"]),
                 ("oracle rule (a ceiling)", agg["rules"], agg["oracle_rule"])]
  else:
    rule_rows = [row for v in agg["variants"] for row in (
        (f"best rule ({v})", agg["rules_by_variant"][v], agg["best_rule_by_variant"][v]),
        (f"oracle rule (a ceiling) ({v})", agg["rules_by_variant"][v], agg["oracle_rule_by_variant"][v]))]
  for label, rows, name in rule_rows:
    if name is not None:
      lines.append("| " + " | ".join([f"{label}: `{name}`"] + [_fmt(rows[name][c][:2] + (1,)) for c in cols]
                                     + ["—"] * (4 + len(gap_cols))) + " |")
  lines.append("")
  lines.append(("mean ± sample sd over seeds; rules are deterministic on the evaluation rows, which every row of "
                "this table shares. " if agg.get("rules_shared", True) else
                "mean ± sample sd over seeds; the variants are evaluated on different rows (their data options "
                "differ), so each has its own best rule; the list below pools them. ") +
               f"All rules (all rows, {RULE_KEY[agg['task']]}): " +
               ", ".join(f"{n} {v['all/' + RULE_KEY[agg['task']]][0]:.4f}" for n, v in agg["rules"].items()))
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/default.py", help="base config file for every variant")
  p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (config.seed and config.data.seed)")
  p.add_argument("--out", required=True, help="sweep folder: OUT/<variant>/seed<K>, OUT/summary.{md,json}")
  p.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDES (repeatable; default: one 'base')")
  p.add_argument("--split", default="test", choices=("valid", "test"))
  p.add_argument("--no-rules", dest="rules", action="store_false", help="skip the rule baselines in eval.py")
  p.add_argument("--title", default="", help="heading of the markdown table")
  p.add_argument("--collect", action="store_true",
                 help="train nothing: tabulate the finished runs and list the ones not finished")
  p.add_argument("--reference", default=None,
                 help="variant to compare every other variant with (gap in sd of the difference, win/tie/loss)")
  args, shared = p.parse_known_args(argv)
  bad = [a for a in shared if not a.startswith("--config.") or "=" not in a]
  if bad:
    p.error(f"unrecognised arguments {bad}: shared overrides must be --config.FIELD=VALUE")
  try:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [parse_variant(v) for v in args.variant] or [Variant("base", [])]
  except ValueError as e:
    p.error(str(e))
  if len({v.name for v in variants}) != len(variants):
    p.error("variant names must be unique")
  if not seeds:
    p.error("--seeds: give at least one seed")
  if args.reference is not None and args.reference not in {v.name for v in variants}:
    p.error(f"--reference {args.reference!r}: not one of the variants ({', '.join(v.name for v in variants)})")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  records, missing = [], []
  for v in variants:
    for s in seeds:
      try:
        record = finished_record(args, v, s, shared) if args.collect else run_one(args, v, s, shared)
      except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
      if record is None:
        missing.append(f"{v.name} seed {s}")
      else:
        records.append(record)
  if not records:
    print(f"error: no finished run under {out} to tabulate", file=sys.stderr)
    return 1
  task = records[0]["eval"]["task"]
  agg = aggregate(records, task)
  title = args.title or f"{args.config} ({records[0]['eval']['dataset']}, {task}, {args.split} split)"
  md = markdown(agg, title, args.reference)
  cmd = "python -m mos_jax.experiments.sweep " + " ".join(repr(a) if " " in a else a for a in argv)
  total = sum(r["train_wall_s"] for r in records if math.isfinite(r["train_wall_s"]))
  md += f"\nCommand: `{cmd}`; train wall time of all runs {total / 60:.1f} min (this invocation " \
        f"{(time.perf_counter() - t0) / 60:.1f} min).\n"
  if missing:
    md += f"\nNot finished, so not in the table: {', '.join(missing)}.\n"
  for name, text in (("summary.md", md), ("summary.json", json.dumps(
      {"command": cmd, "aggregate": agg, "runs": records, "missing": missing}, indent=1, allow_nan=True))):
    write_text_atomic(out / name, text)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
