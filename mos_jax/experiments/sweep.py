"""Multi-seed runner: train and evaluate every (variant, seed) in its own workdir, then mean ± sd tables.

    python -m mos_jax.experiments.sweep --config=configs/default.py --seeds=0,1,2 --out=runs/sweeps/synthetic \
        --variant mos= --variant backbone=--config.model.name=backbone --variant gshard=--config=configs/gshard.py \
        [--select_split=valid] [--report=mos,backbone | --report=all] [--config.FIELD=VALUE ...]

Selection on valid, always (issue 22). Every variant is evaluated and tabulated on ``--select_split`` (default
``valid``): the split configurations are chosen by. ``test`` is read only for the variants ``--report`` names
(comma-separated, or ``all``), once they are chosen: those get a second table on test. ``--select_split=test`` (old
name ``--split``) chooses on test and shows every variant there, as sweeps did before; ``--report`` is then refused.
Each table says which split chose and which split it shows, and its column headers name the shown split.

Each run is two or three subprocesses, exactly the commands a user would type (so a sweep measures what the README
promises):
``python train.py --config=C <shared> <variant> --config.seed=K --config.data.seed=K --workdir=OUT/<variant>/seed<K>``
then ``python eval.py --workdir=... --split=SELECT --rules`` (and ``--split=test`` for a reported variant). ``seed``
(init, dropout) and ``data.seed`` (training negatives and order) move together; ``data.split_seed`` stays fixed, so
every seed is scored on the same rows. A finished run (its eval files exist, made by the same commands) is not run
again: re-running the command completes an interrupted sweep, and adding a variant to ``--report`` later only runs its
test evaluation. ``--collect`` trains nothing and tabulates the runs finished so far (the others are listed under the
table). Records of older sweeps (one ``eval`` on their ``--split``) are read as selection on that split.

Outputs: ``OUT/summary.json`` (every run's metrics, ``aggregate`` on the selection split and ``report`` on test, or
null) and ``OUT/summary.md``: per table the variants, then the best rule of the same rows and, where one ran, the best
oracle rule as a ceiling (``rules.ORACLE_RULES``: it knows how the data were made, so it is never "the best rule"),
metrics as mean ± sd over seeds on all rows and on the session-start slice (a cell that lost a seed to NaN says
which: ``0.8200 ± 0.0200 (2 of 3 seeds; seed 1 NaN)``), train examples/s, train wall time and forward FLOPs per
example. ``--reference NAME`` adds, for every other variant, its gap to NAME on the main metric (all rows and session
starts) in units of the sd of the difference, sqrt(sd_a² + sd_b²), with the verdict of docs/results.md: beyond 2 of
those sd a win or a loss, otherwise a tie. A verdict is given only between variants scored on the same rows (same
data options, and rules that score them identically); otherwise the cell says why there is none, and the footer says
what is known about the rows.
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
  """Mean and sample standard deviation (ddof = 1; 0 for a single value) of the finite values, and their count.

  The values left out (None, NaN, inf) are not lost: ``nan_positions`` names them, and ``aggregate`` records the
  seeds they belong to (``row["nan_seeds"]``), which the table prints beside the cell.
  """
  v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
  if not v:
    return float("nan"), float("nan"), 0
  m = sum(v) / len(v)
  sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
  return m, sd, len(v)


def nan_positions(values: Sequence[float | None]) -> list[int]:
  """Indices of the values ``mean_sd`` leaves out (None or not finite)."""
  return [i for i, x in enumerate(values) if x is None or not math.isfinite(float(x))]


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


REPORT_SPLIT = "test"  # the split --report scores its variants on
# Data options that do not change the evaluation rows: data.seed draws the training negatives and order only (the
# valid/test negatives come from data.split_seed), and the cache folder and file format hold the same examples.
NOT_ROW_OPTIONS = ("seed", "cache_dir", "format")


def report_names(args: argparse.Namespace, variants: Sequence[Variant]) -> set[str]:
  """The variants ``--report`` names (``all``: every variant), checked against ``variants``; ValueError otherwise."""
  text = getattr(args, "report", "") or ""
  names = [n.strip() for n in text.split(",") if n.strip()]
  known = [v.name for v in variants]
  if names == ["all"]:
    names = known
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"--report {text!r}: {', '.join(unknown)} not among the variants ({', '.join(known)}); "
                     "give variant names separated by commas, or 'all'")
  if names and args.select_split == REPORT_SPLIT:
    raise ValueError(f"--report {text!r} with --select_split={REPORT_SPLIT}: every variant is already shown on "
                     f"{REPORT_SPLIT}; select on valid to report {REPORT_SPLIT} for a few")
  return set(names)


def _eval_cmd(wd: pathlib.Path, split: str, rules: bool) -> list[str]:
  return [sys.executable, "eval.py", f"--workdir={wd}", f"--split={split}"] + (["--rules"] if rules else [])


def _commands(args: argparse.Namespace, variant: Variant, seed: int, shared: list[str]
              ) -> tuple[pathlib.Path, list[str], dict[str, list[str]]]:
  """(workdir, train command, {split: eval command}) of one (variant, seed): the selection split always, the report
  split (test) too when ``args.report_set`` holds the variant."""
  wd = pathlib.Path(args.out) / variant.name / f"seed{seed}"
  train_cmd = [sys.executable, "train.py", f"--config={args.config}", *shared, *variant.overrides,
               f"--config.seed={seed}", f"--config.data.seed={seed}", f"--workdir={wd}"]
  splits = [args.select_split] + ([REPORT_SPLIT] if variant.name in getattr(args, "report_set", ()) else [])
  return wd, train_cmd, {split: _eval_cmd(wd, split, args.rules) for split in splits}


def _split_of_cmd(cmd: str | None) -> str | None:
  for part in (cmd or "").split():
    if part.startswith("--split="):
      return part.partition("=")[2]
  return None


def select_split_of(record: dict[str, Any]) -> str:
  """The split of ``record["eval"]``. Records written before ``--select_split`` (whose ``--split`` defaulted to test)
  say it in their eval file or command."""
  return (record.get("select_split") or record.get("eval", {}).get("split") or _split_of_cmd(record.get("eval_cmd"))
          or "test")


def stored_evals(record: dict[str, Any]) -> dict[str, tuple[str | None, dict[str, Any]]]:
  """{split: (eval command, eval.py's JSON)} of every evaluation a (new or old) record holds."""
  out = {select_split_of(record): (record.get("eval_cmd"), record["eval"])}
  if record.get("report_eval") is not None:
    out[record["report_split"]] = (record.get("report_eval_cmd"), record["report_eval"])
  return out


def data_options(workdir: pathlib.Path) -> dict[str, Any] | None:
  """The run's data options that decide its evaluation rows (``config.json``'s ``data`` less ``NOT_ROW_OPTIONS``);
  None when the run saved no config."""
  path = workdir / "config.json"
  if not path.exists():
    return None
  data = json.loads(path.read_text()).get("data", {})
  return {k: v for k, v in data.items() if k not in NOT_ROW_OPTIONS}


def _assemble(base: dict[str, Any], evals: dict[str, tuple[str | None, dict[str, Any]]], select: str,
              report: str | None) -> dict[str, Any]:
  """``base`` with the evaluations of this command: ``eval``/``eval_cmd`` on the selection split and, for a reported
  variant, ``report_eval``/``report_eval_cmd`` on the report split (None otherwise)."""
  rec = {k: v for k, v in base.items() if k not in ("eval", "eval_cmd", "report_eval", "report_eval_cmd")}
  rec.update(select_split=select, eval_cmd=evals[select][0], eval=evals[select][1], report_split=report,
             report_eval_cmd=evals[report][0] if report else None, report_eval=evals[report][1] if report else None)
  if rec.get("data_options") is None and rec.get("workdir"):
    rec["data_options"] = data_options(pathlib.Path(rec["workdir"]))
  return rec


def finished_record(args: argparse.Namespace, variant: Variant, seed: int, shared: list[str]) -> dict[str, Any] | None:
  """The record of a finished (variant, seed) run of this very command, or None when it has not finished.

  ``sweep_train.json`` (command, wall time) marks a finished training, ``sweep_run.json`` the whole record. A folder
  left by a different command raises RuntimeError rather than being silently reused. A record holds the evaluations
  of this command when each split's eval command is the same (records of older sweeps, one ``eval`` on the split of
  their ``--split``, are read too).
  """
  wd, train_cmd, eval_cmds = _commands(args, variant, seed, shared)
  cmd_text = " ".join(train_cmd[1:])
  for f in (wd / "sweep_run.json", wd / "sweep_train.json"):
    if f.exists() and json.loads(f.read_text())["train_cmd"] != cmd_text:
      raise RuntimeError(f"{wd} holds a run of another command ({f.name}: {json.loads(f.read_text())['train_cmd']!r}"
                         f", now {cmd_text!r}); use another --out or remove that folder")
  record_file = wd / "sweep_run.json"
  if not record_file.exists():
    return None
  record = json.loads(record_file.read_text())
  evals = stored_evals(record)
  for split, cmd in eval_cmds.items():
    if split not in evals or evals[split][0] not in (None, " ".join(cmd[1:])) or \
        not (wd / f"eval_{split}.json").exists():
      return None
  report = REPORT_SPLIT if REPORT_SPLIT in eval_cmds and REPORT_SPLIT != args.select_split else None
  return _assemble(record, evals, args.select_split, report)


def run_one(args: argparse.Namespace, variant: Variant, seed: int, shared: list[str]) -> dict[str, Any]:
  """Trains and evaluates one (variant, seed); a finished step with the same command is not run again."""
  record = finished_record(args, variant, seed, shared)
  if record is not None:
    return record
  wd, train_cmd, eval_cmds = _commands(args, variant, seed, shared)
  cmd_text = " ".join(train_cmd[1:])
  train_file, record_file = wd / "sweep_train.json", wd / "sweep_run.json"
  wd.mkdir(parents=True, exist_ok=True)
  print(f"[{variant.name} seed {seed}] {cmd_text}", flush=True)
  if train_file.exists():
    train_s = json.loads(train_file.read_text())["train_wall_s"]
  else:
    train_s = _run(train_cmd, wd / "train.log")
    _write_json(train_file, {"train_cmd": cmd_text, "train_wall_s": train_s})
  # Evaluations of an earlier command on the same training (e.g. before a variant was --report-ed) are kept.
  previous = stored_evals(json.loads(record_file.read_text())) if record_file.exists() else {}
  evals: dict[str, tuple[str | None, dict[str, Any]]] = {}
  for split, cmd in eval_cmds.items():
    text, out = " ".join(cmd[1:]), wd / f"eval_{split}.json"
    if split in previous and previous[split][0] == text and out.exists():
      evals[split] = previous[split]
      continue
    _run(cmd, wd / ("eval.log" if split == args.select_split else f"eval_{split}.log"))
    evals[split] = (text, json.loads(out.read_text()))
  report = REPORT_SPLIT if REPORT_SPLIT in eval_cmds and REPORT_SPLIT != args.select_split else None
  record = _assemble({"variant": variant.name, "seed": seed, "workdir": str(wd), "train_cmd": cmd_text,
                      "train_wall_s": train_s, "train_examples_per_s": train_throughput(wd),
                      "flops": forward_flops(wd), "data_options": data_options(wd)},
                     evals, args.select_split, report)
  _write_json(record_file, record)
  return record


def _slice_metrics(ev: dict, slice_name: str) -> dict[str, float]:
  if slice_name == "all":
    return ev.get("metrics", {})
  return ev.get("slices", {}).get(slice_name, {})


def _eval_on(record: dict[str, Any], split: str | None) -> dict[str, Any] | None:
  """The record's evaluation on ``split`` (None: its selection split), or None when it has none there."""
  if split is None or split == select_split_of(record):
    return record["eval"]
  return record.get("report_eval") if record.get("report_split") == split else None


MIXED = "(the seeds differ)"  # data_options_by_variant: the seeds of one variant used different data options


def _same_rule_rows(a: dict[str, Any], b: dict[str, Any]) -> bool:
  """Whether two rule tables (rule -> column -> (mean, sd, n)) are the same rows' scores: the same rules, equal
  means (NaN equal to NaN) and no spread over seeds."""
  if set(a) != set(b):
    return False
  for rule, cols in a.items():
    for col, (m, sd, n) in cols.items():
      m2, sd2, n2 = b[rule].get(col, (math.nan, math.nan, 0))
      if (n > 1 and not sd < 1e-9) or (n2 > 1 and not sd2 < 1e-9):
        return False
      if not (math.isnan(m) and math.isnan(m2)) and not abs(m - m2) < 1e-9:
        return False
  return True


def rows_relation(agg: dict[str, Any], a: str, b: str) -> bool | None:
  """Whether variants ``a`` and ``b`` were scored on the same rows: False when their data options or their rules'
  scores differ, True when either check says they are the same (and neither says not), None when neither could be
  made (no rules ran and the runs recorded no data options)."""
  checks = []
  opts = agg.get("data_options_by_variant", {})
  if opts.get(a) is not None and opts.get(b) is not None:
    checks.append(opts[a] == opts[b] and opts[a] != MIXED)
  rules = agg.get("rules_by_variant", {})
  if rules.get(a) and rules.get(b):
    checks.append(_same_rule_rows(rules[a], rules[b]))
  return None if not checks else all(checks)


def aggregate(records: list[dict[str, Any]], task: str, split: str | None = None) -> dict[str, Any]:
  """Per variant and per rule: mean, sd and n of the main metrics on each slice, plus cost columns.

  ``split``: the evaluations to read (None: each record's selection split, ``eval``; ``"test"`` on a sweep that
  selects on valid: the ``--report`` evaluations, so only the reported variants). Per variant ``nan_seeds`` maps a
  metric column to the seeds whose value was NaN (left out of its mean and sd). ``rows_shared``: True when every
  variant was scored on the same rows (equal data options, or rules that score every run identically), False when
  not, None when that could not be checked (no rules and no recorded data options).
  """
  keys = MAIN_METRICS[task]
  picked = [(r, ev) for r in records for ev in [_eval_on(r, split)] if ev is not None]
  out: dict[str, Any] = {"task": task, "split": split or ", ".join(dict.fromkeys(select_split_of(r) for r in records)),
                         "select_split": ", ".join(dict.fromkeys(select_split_of(r) for r in records)),
                         "variants": {}, "rules": {}, "best_rule": None, "oracle_rule": None}
  for name in dict.fromkeys(r["variant"] for r, _ in picked):
    rs = [(r, ev) for r, ev in picked if r["variant"] == name]
    seeds = [r["seed"] for r, _ in rs]
    row: dict[str, Any] = {"seeds": seeds, "nan_seeds": {}}
    for s in SLICES:
      for k in keys:
        values = [_slice_metrics(ev, s).get(k) for _, ev in rs]
        row[f"{s}/{k}"] = mean_sd(values)
        if nan_positions(values) and any(x is not None for x in values):  # a metric no run computed is no loss
          row["nan_seeds"][f"{s}/{k}"] = [seeds[i] for i in nan_positions(values)]
    for k in ("train_examples_per_s", "train_wall_s", "flops"):
      row[k] = mean_sd([r[k] for r, _ in rs])
    out["variants"][name] = row

  # Rules are deterministic given the evaluation rows. Every seed of a variant shares them; variants share them unless
  # they change data options, which is checked: with different rows each variant gets its own best-rule row.
  def rule_rows(evs: list[dict[str, Any]]) -> dict[str, Any]:
    names = dict.fromkeys(n for ev in evs for n in ev.get("rules", {}))
    return {rule: {f"{s}/{k}": mean_sd([ev["rules"][rule].get(s, {}).get(k, float("nan")) for ev in evs
                                        if rule in ev.get("rules", {})]) for s in SLICES for k in keys}
            for rule in names}

  def best(rows: dict[str, Any], oracle: bool = False) -> str | None:
    """The best non-oracle rule; ``oracle=True``: the best of the rules that know how the data were made."""
    rk = f"all/{RULE_KEY[task]}"
    scored = [(v[rk][0], n) for n, v in rows.items() if (n in ORACLE_RULES) == oracle and math.isfinite(v[rk][0])]
    return max(scored)[1] if scored else None

  out["rules"] = rule_rows([ev for _, ev in picked])
  out["best_rule"] = best(out["rules"])
  out["oracle_rule"] = best(out["rules"], oracle=True)
  # None: no rules ran, so they tell nothing about the rows.
  out["rules_shared"] = (all(v[1] < 1e-9 for row in out["rules"].values() for v in row.values() if v[2] > 1)
                         if out["rules"] else None)
  opts: dict[str, Any] = {}
  for name in out["variants"]:
    found = [r.get("data_options") for r, _ in picked if r["variant"] == name]
    texts = {json.dumps(o, sort_keys=True) for o in found if o is not None}
    opts[name] = None if None in found or not texts else MIXED if len(texts) > 1 else texts.pop()
  out["data_options_by_variant"] = opts
  out["rules_by_variant"] = {name: rule_rows([ev for r, ev in picked if r["variant"] == name])
                             for name in out["variants"]} if out["rules"] else {}
  names = list(out["variants"])
  relations = [rows_relation(out, a, b) for i, a in enumerate(names) for b in names[i:]]
  out["rows_shared"] = False if False in relations or out["rules_shared"] is False else \
      True if relations and all(r is True for r in relations) else None
  if out["rules"] and out["rows_shared"] is not True:
    out["best_rule_by_variant"] = {name: best(rows) for name, rows in out["rules_by_variant"].items()}
    out["oracle_rule_by_variant"] = {name: best(rows, True) for name, rows in out["rules_by_variant"].items()}
  return out


def compare(a: tuple[float, float, int], b: tuple[float, float, int]) -> tuple[float, float, str]:
  """Gap ``a - b`` of two (mean, sd, n) cells, that gap in units of sqrt(sd_a² + sd_b²), and the verdict.

  ``win`` / ``loss`` beyond 2 units, otherwise ``tie``; ``n/a`` without two seeds on each side (no spread to judge by).
  Only meaningful for cells scored on the same rows: ``markdown`` gives a verdict only where ``rows_relation`` is True.
  """
  diff = a[0] - b[0]
  if a[2] < 2 or b[2] < 2 or not math.isfinite(diff):
    return diff, float("nan"), "n/a"
  sd = math.sqrt(a[1] ** 2 + b[1] ** 2)
  z = diff / sd if sd > 0 else math.copysign(math.inf, diff) if diff else 0.0
  return diff, z, "win" if z > 2 else "loss" if z < -2 else "tie"


def _fmt(ms: tuple[float, float, int], digits: int = 4) -> str:
  m, sd, n = ms[:3]
  if n == 0:
    return "—"
  return f"{m:.{digits}f} ± {sd:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def _fmt_cell(row: dict[str, Any], col: str) -> str:
  """A metric cell; one that lost seeds to NaN says so: ``0.8200 ± 0.0200 (2 of 3 seeds; seed 1 NaN)``."""
  text = _fmt(row[col])
  lost = row.get("nan_seeds", {}).get(col, [])
  if lost:
    total = len(row.get("seeds", [])) or row[col][2] + len(lost)
    text += (f" ({row[col][2]} of {total} seeds; seed{'s' if len(lost) > 1 else ''} "
             f"{', '.join(str(s) for s in lost)} NaN)")
  return text


def _rows_sentence(agg: dict[str, Any]) -> str:
  """What the table knows about its rows (docs/results.md: rules and verdicts need the same rows)."""
  split, shared, opts = agg.get("split", "evaluation"), agg.get("rows_shared"), agg.get("data_options_by_variant", {})
  by_options = bool(opts) and all(o is not None for o in opts.values())
  if shared is True:
    how = " and ".join(w for w, ok in (("the same data options", by_options), (
        "rules that score every run identically", bool(agg.get("rules")))) if ok)
    return f"Every variant is scored on the same {split} rows ({how})."
  if shared is False:
    return (f"The variants are not all scored on the same {split} rows (their data options or their rules' scores "
            "differ), so the gaps carry no win/tie/loss verdict between such variants" +
            ("; each variant has its own best rule, and the list of all rules pools them." if agg.get("rules")
             else "."))
  return (f"Whether the variants share their {split} rows is unknown: no rules ran (--no-rules) and the runs recorded "
          "no data options, so the gaps carry no win/tie/loss verdict.")


def markdown(agg: dict[str, Any], title: str, reference: str | None = None, note: str = "") -> str:
  """The sweep's table; with ``reference`` (a variant name), a gap column per slice on the main metric, with a
  win/tie/loss verdict only for variants scored on the same rows as the reference.

  Under the title a line says which split chose the configurations (``agg["select_split"]``) and which split the
  cells show (``agg["split"]``); the column headers name the shown split. ``note`` is added to that line.
  """
  keys = MAIN_METRICS[agg["task"]]
  split = agg.get("split", "test")  # aggregates of older sweeps: their default split
  select = agg.get("select_split", split)
  cols = [f"{s}/{k}" for s in SLICES for k in keys[:2]]
  gap_cols = [f"{s}/{keys[0]}" for s in SLICES] if reference else []
  if reference is not None and reference not in agg["variants"]:
    raise ValueError(f"--reference {reference!r}: no such variant (have {', '.join(agg['variants'])})")
  label = lambda c: f"{split} " + c.replace("all/", "").replace("session_start/", "sess-start ")  # noqa: E731
  head = ["model"] + [label(c) for c in cols] + [f"{label(c)} vs {reference}" for c in gap_cols] + \
         ["seeds", "train ex/s", "train wall s", "fwd MFLOPs/ex"]
  lines = [f"### {title}", "", f"Configurations chosen on the **{select}** split; cells on the **{split}** split"
           f"{note}.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, row in agg["variants"].items():
    f = row["flops"][0]
    gaps = []
    same = rows_relation(agg, name, reference) if reference and name != reference else None
    for c in gap_cols:
      diff, z, verdict = compare(row[c], agg["variants"][reference][c])
      if name == reference:
        gaps.append("—")
      elif same is not True:
        gaps.append(f"{diff:+.4f} (no verdict: {'other rows' if same is False else 'rows unchecked'})")
      else:
        gaps.append(f"{diff:+.4f} ({z:+.1f} sd, {verdict})" if math.isfinite(z) else f"{diff:+.4f} ({verdict})")
    lines.append("| " + " | ".join([name] + [_fmt_cell(row, c) for c in cols] + gaps + [
        str(len(row["seeds"])), _fmt(row["train_examples_per_s"], 0), _fmt(row["train_wall_s"], 0),
        f"{f / 1e6:.2f}" if math.isfinite(f) else "—"]) + " |")
  # The best non-oracle rule is the baseline to beat; an oracle rule (it knows how the data were made) is a ceiling.
  if not agg.get("rules"):
    rule_rows = []
  elif agg.get("rows_shared") is not False:
    rule_rows = [("best rule", agg["rules"], agg["best_rule"]),
                 ("oracle rule (a ceiling)", agg["rules"], agg["oracle_rule"])]
  else:
    rule_rows = [row for v in agg["variants"] for row in (
        (f"best rule ({v})", agg["rules_by_variant"][v], agg["best_rule_by_variant"][v]),
        (f"oracle rule (a ceiling) ({v})", agg["rules_by_variant"][v], agg["oracle_rule_by_variant"][v]))]
  for label_, rows, name in rule_rows:
    if name is not None:
      lines.append("| " + " | ".join([f"{label_}: `{name}`"] + [_fmt(rows[name][c][:2] + (1,)) for c in cols]
                                     + ["—"] * (4 + len(gap_cols))) + " |")
  lines.append("")
  text = "mean ± sample sd over seeds (a cell that lost seeds to NaN names them). " + _rows_sentence(agg)
  if agg.get("rules"):
    text += (f" Rules are deterministic on the rows; oracle rules ({', '.join(f'`{n}`' for n in ORACLE_RULES)}) "
             f"know how the data were made and are a ceiling, never the best rule. All rules (all rows, "
             f"{RULE_KEY[agg['task']]}): " +
             ", ".join(f"{n} {v['all/' + RULE_KEY[agg['task']]][0]:.4f}" for n, v in agg["rules"].items()))
  else:
    text += " No rules ran (--no-rules), so the table has no rule rows."
  lines.append(text)
  return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/default.py", help="base config file for every variant")
  p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (config.seed and config.data.seed)")
  p.add_argument("--out", required=True, help="sweep folder: OUT/<variant>/seed<K>, OUT/summary.{md,json}")
  p.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDES (repeatable; default: one 'base')")
  p.add_argument("--select_split", "--split", dest="select_split", default="valid", choices=("valid", "test"),
                 help="the split every variant is evaluated and tabulated on, the one configurations are chosen by "
                      "(default valid; --split is the old name)")
  p.add_argument("--report", default="",
                 help=f"comma-separated variants (or 'all') also evaluated on {REPORT_SPLIT}, in a table of their own; "
                      f"default none: {REPORT_SPLIT} is read only for the variants named here")
  p.add_argument("--no-rules", dest="rules", action="store_false", help="skip the rule baselines in eval.py")
  p.add_argument("--title", default="", help="heading of the markdown table")
  p.add_argument("--collect", action="store_true",
                 help="train nothing: tabulate the finished runs and list the ones not finished")
  p.add_argument("--reference", default=None,
                 help="variant to compare every other variant with (gap in sd of the difference, win/tie/loss)")
  return p


def main(argv: list[str]) -> int:
  p = parser()
  args, shared = p.parse_known_args(argv)
  bad = [a for a in shared if not a.startswith("--config.") or "=" not in a]
  if bad:
    p.error(f"unrecognised arguments {bad}: shared overrides must be --config.FIELD=VALUE")
  try:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [parse_variant(v) for v in args.variant] or [Variant("base", [])]
    args.report_set = report_names(args, variants)
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
  title = args.title or f"{args.config} ({records[0]['eval']['dataset']}, {task})"
  md = markdown(agg, title, args.reference, note=" (every variant)" if args.report_set else "")
  report_agg = None
  reported = [r for r in records if r.get("report_eval") is not None]
  if reported:
    report_agg = aggregate(reported, task, split=REPORT_SPLIT)
    ref = args.reference if args.reference in report_agg["variants"] else None
    md += "\n" + markdown(report_agg, f"{title}: reported on {REPORT_SPLIT}", ref,
                          note=f" (only the variants named by --report: {', '.join(report_agg['variants'])})")
  cmd = "python -m mos_jax.experiments.sweep " + " ".join(repr(a) if " " in a else a for a in argv)
  total = sum(r["train_wall_s"] for r in records if math.isfinite(r["train_wall_s"]))
  md += f"\nCommand: `{cmd}`; train wall time of all runs {total / 60:.1f} min (this invocation " \
        f"{(time.perf_counter() - t0) / 60:.1f} min).\n"
  if missing:
    md += f"\nNot finished, so not in the table: {', '.join(missing)}.\n"
  for name, text in (("summary.md", md), ("summary.json", json.dumps(
      {"command": cmd, "select_split": args.select_split, "report_split": REPORT_SPLIT if reported else None,
       "aggregate": agg, "report": report_agg, "runs": records, "missing": missing}, indent=1, allow_nan=True))):
    write_text_atomic(out / name, text)
  print(md)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
