"""Evaluates a trained run: ``python eval.py --workdir=WORKDIR [--split=test] [--checkpoint=best|latest] [--rules]``.

``mos-eval`` (installed with the package) takes the same flags.

Restores the best checkpoint (by validation metric; the latest one if no validation ran) together with the config it
was trained with, evaluates the split, prints tables and writes ``WORKDIR/eval_<split>.json`` (atomically).
CTR: logloss, AUC, GAUC, and on all rows the bootstrap standard errors and 95% intervals of AUC (rows, and users,
resampled) and GAUC (users resampled; ``--bootstrap=N`` resamples, 0 = none). Next-item: HR@K, NDCG@K
(K = 5, 10, 20, 50) and MRR over the full item set.
Metrics are reported on all rows and per slice (session start / within session, history length, categories;
docs/metrics.md). ``--rules`` adds the trivial rules of ``mos_jax.evaluation.rules`` scored on the same rows.

JSON: ``{"split", "checkpoint", "step", "model", "dataset", "task", "metrics": {all rows}, "slices": {slice: metrics},
"rules": {rule: {slice: metrics}}}`` ("rules" only with ``--rules``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="the run's work directory (holds checkpoints/)")
  p.add_argument("--split", default="test", choices=("train", "valid", "test"))
  p.add_argument("--checkpoint", default="best", choices=("best", "latest"))
  p.add_argument("--batch_size", type=int, default=0, help="evaluation batch size (0 = the run's eval_batch_size)")
  p.add_argument("--item_block", type=int, default=-1,
                 help="next-item: rank over blocks of this many items (0 = all at once; -1 = the run's "
                      "train.eval_item_block)")
  p.add_argument("--rules", action="store_true", help="also score the trivial rules on the same rows, per slice")
  p.add_argument("--bootstrap", type=int, default=1000,
                 help="CTR: bootstrap resamples for the standard errors and 95%% intervals of AUC and GAUC on all "
                      "rows (0 = none; docs/metrics.md)")
  p.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the bootstrap resamples")
  return p


# Columns of the compact tables: the metrics a reader compares first.
SLICE_COLUMNS = {"ctr": ("auc", "gauc"), "next": ("ndcg@10", "hr@10", "mrr")}
RULE_SLICES = {"all": "all", "session_start": "start", "within_session": "within"}  # slice -> column label


def _cell(v) -> str:
  if isinstance(v, float):
    return f"{v:.4f}"
  if isinstance(v, (list, tuple)):  # an interval
    return "[" + ", ".join(_cell(x) for x in v) + "]"
  return str(v)


def format_table(metrics: dict, title: str) -> str:
  rows = [(k, _cell(v)) for k, v in metrics.items()]
  width = max(len(k) for k, _ in rows)
  vwidth = max(len(v) for _, v in rows)
  line = "-" * (width + vwidth + 3)
  return "\n".join([title, line] + [f"{k:<{width}} | {v:>{vwidth}}" for k, v in rows] + [line])


def _grid(title: str, header: list[str], rows: list[list[str]], footer: str = "") -> str:
  cells = [header] + rows
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  fmt = lambda r: " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
  line = "-" * len(fmt(header))
  return "\n".join([title, line, fmt(header), line] + [fmt(r) for r in rows] + [line] + ([footer] if footer else []))


def _num(v) -> str:
  return "-" if v is None else f"{v:.4f}"


def format_slice_table(slices: dict[str, dict], task: str, title: str) -> str:
  """Rows = slices, columns = number of rows and the main metrics."""
  cols = SLICE_COLUMNS[task]
  rows = [[name, str(m["num_examples"])] + [_num(m.get(c)) for c in cols] for name, m in slices.items()]
  return _grid(title, ["slice", "rows", *cols], rows)


def format_rule_table(model_name: str, slices: dict[str, dict], rules: dict[str, dict[str, dict]], task: str,
                      title: str) -> str:
  """Rows = the model, then each rule; columns = each main metric on all rows and on the session slices.

  The best rule of each column is marked with ``*`` (higher is better for every column).
  """
  names = [s for s in RULE_SLICES if s in slices]
  cols = [(metric, name) for metric in SLICE_COLUMNS[task][:2] for name in names]
  values = {"model: " + model_name: slices}
  values.update({"rule: " + r: v for r, v in rules.items()})
  best = {}
  for col in cols:
    scores = {r: v.get(col[1], {}).get(col[0]) for r, v in rules.items()}
    scores = {r: x for r, x in scores.items() if x is not None and x == x}  # x == x drops NaN
    best[col] = max(scores, key=scores.get) if scores else None
  rows = []
  for label, per_slice in values.items():
    rule = label[len("rule: "):] if label.startswith("rule: ") else None
    rows.append([label] + [_num(per_slice.get(name, {}).get(metric)) + ("*" if rule and best[(metric, name)] == rule
                                                                          else " ") for metric, name in cols])
  return _grid(title, ["", *[f"{m} {RULE_SLICES[n]}" for m, n in cols]], rows,
               footer="* best rule in the column; start / within: targets that open a new session / inside one")


def rule_slices(dataset, split: str, task: str, arrays: dict, masks: dict) -> dict[str, dict[str, dict]]:
  """``{rule: {slice: metrics}}`` of ``mos_jax.evaluation.rules.rule_outputs`` on the same rows."""
  from mos_jax.evaluation.rules import rule_outputs  # noqa: PLC0415
  from mos_jax.evaluation.slices import slice_metrics  # noqa: PLC0415

  # A rule's CTR score is an order, not a logit, so it gets no logloss.
  return {name: slice_metrics(arrays, out, task=task, masks=masks, with_logloss=False)
          for name, out in rule_outputs(dataset, split, task, arrays=arrays).items()}


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
  if args.bootstrap < 0 or args.bootstrap == 1:
    print(f"error: --bootstrap={args.bootstrap}: expected 0 (none) or an integer >= 2", file=sys.stderr)
    return 2
  from mos_jax.runtime import start_jax  # noqa: PLC0415

  jax = start_jax()
  from mos_jax import config as config_lib  # noqa: PLC0415
  from mos_jax.data import DataError  # noqa: PLC0415
  from mos_jax.training import checkpoint as ckpt_lib  # noqa: PLC0415
  from mos_jax.evaluation.evaluate import ctr_intervals  # noqa: PLC0415
  from mos_jax.evaluation.slices import slice_masks, slice_metrics  # noqa: PLC0415
  from mos_jax.training.loop import predict_split, write_json_atomic  # noqa: PLC0415
  from mos_jax.training.restore import restore_run  # noqa: PLC0415

  workdir = pathlib.Path(args.workdir).expanduser()
  try:
    cfg, run, executor, step, kind = restore_run(workdir, args.checkpoint, eval_batch_size=args.batch_size,
                                                 note=print)
    if args.item_block >= 0:
      cfg.train.eval_item_block = args.item_block
    arrays = run.dataset.split(args.split, cfg.data.task, seed=cfg.data.seed)  # train: the run's epoch-0 negatives
    outputs = predict_split(executor, arrays, cfg)
    masks = slice_masks(arrays)
    slices = slice_metrics(arrays, outputs, task=cfg.data.task, masks=masks)
    if cfg.data.task == "ctr" and args.bootstrap > 0:  # slices["all"] is the report's "metrics"
      slices["all"].update(ctr_intervals(outputs, label=arrays["label"], user=arrays["user"],
                                         num_samples=args.bootstrap, seed=args.bootstrap_seed))
    rules = rule_slices(run.dataset, args.split, cfg.data.task, arrays, masks) if args.rules else None
  except (ckpt_lib.CheckpointError, config_lib.ConfigError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  title = f"{cfg.model.name} ({cfg.model.backbone}) on {cfg.data.dataset}/{cfg.data.task}, {args.split} split, " \
          f"{kind} checkpoint (step {step})"
  metrics = slices["all"]
  print(format_table(metrics, title))
  print(format_slice_table(slices, cfg.data.task, f"per slice ({args.split} split)"))
  report = {"split": args.split, "checkpoint": kind, "step": step, "model": cfg.model.name,
            "dataset": cfg.data.dataset, "task": cfg.data.task, "metrics": metrics, "slices": slices}
  if rules is not None:
    print(format_rule_table(cfg.model.name, slices, rules, cfg.data.task, f"model vs trivial rules ({args.split} split, "
                                                                          f"same rows)"))
    report["rules"] = rules
  out = workdir / f"eval_{args.split}.json"
  write_json_atomic(out, report)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
