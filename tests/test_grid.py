"""benchmarks/grid.py's pure parts on fake sweep aggregates: table assembly, lifts, best rule, markdown, flags."""

import math
import pathlib
import sys

import pytest

from mos_jax.experiments import sweep

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import grid  # noqa: E402


def _record(variant, seed, auc, gauc):
  ev = {"task": "ctr", "dataset": "synthetic", "metrics": {"auc": auc, "gauc": gauc, "logloss": 0.6 - auc / 10},
        "slices": {}, "rules": {"in_history": {"all": {"auc": 0.61, "gauc": 0.6}},
                                "popularity": {"all": {"auc": 0.55, "gauc": 0.52}},
                                "generator": {"all": {"auc": 0.97, "gauc": 0.96}}}}
  return {"variant": variant, "seed": seed, "train_wall_s": 1.0, "train_examples_per_s": 1000.0 + seed,
          "flops": {"mos": 3e6, "backbone": 2e6}.get(variant, 4e6), "eval": ev}


def _agg(base_auc, mos_auc):
  recs = [_record("backbone", s, base_auc + d, base_auc + d - 0.1) for s, d in ((0, -0.01), (1, 0.01))]
  recs += [_record("mos", s, mos_auc + d, mos_auc + d - 0.1) for s, d in ((0, -0.02), (1, 0.02))]
  recs += [_record("gshard", 0, 0.7, 0.6)]
  return sweep.aggregate(recs, "ctr")


@pytest.fixture
def summaries():
  return {("synthetic", "sasrec"): _agg(0.80, 0.84), ("synthetic", "din"): _agg(0.50, 0.49)}


def test_table_rows_follow_model_order_and_keep_mean_sd(summaries):
  rows = grid.table_rows(summaries, {("synthetic", "sasrec", "mos"): 1234})
  assert [(r["host"], r["model"]) for r in rows] == [
      ("sasrec", "backbone"), ("sasrec", "gshard"), ("sasrec", "mos"), ("din", "backbone"), ("din", "gshard"),
      ("din", "mos")]
  mos = rows[2]
  assert mos["auc"][0] == pytest.approx(0.84) and mos["auc"][1] == pytest.approx(math.sqrt(2) * 0.02)
  assert mos["auc"][2] == 2 and mos["gauc"][0] == pytest.approx(0.74)
  assert mos["logloss"][0] == pytest.approx(0.6 - 0.084)
  assert (mos["params"], mos["flops"], mos["seeds"]) == (1234, 3e6, [0, 1])
  assert mos["train_examples_per_s"][0] == pytest.approx(1000.5)
  assert rows[0]["params"] is None and rows[1]["auc"][2] == 1


def test_lifts_are_relative_percent_and_averaged(summaries):
  lt = grid.lifts(grid.table_rows(summaries, {}))["synthetic"]
  assert lt["hosts"]["sasrec"]["auc"] == pytest.approx(5.0)  # (0.84 - 0.80) / 0.80
  assert lt["hosts"]["sasrec"]["gauc"] == pytest.approx(100 * 0.04 / 0.70)
  assert lt["hosts"]["din"]["auc"] == pytest.approx(-2.0)
  assert lt["mean_auc"] == pytest.approx(1.5)
  assert lt["hosts"]["sasrec"]["auc_verdict"] == "tie" and lt["hosts"]["sasrec"]["auc_z"] == pytest.approx(
      0.04 / math.sqrt(2 * 0.02**2 + 2 * 0.01**2))
  assert math.isnan(grid.lift(0.5, 0.0)) and math.isnan(grid.lift(float("nan"), 0.5))
  # A host without its plain backbone has no lift.
  rows = [r for r in grid.table_rows(summaries, {}) if not (r["host"] == "din" and r["model"] == "backbone")]
  assert list(grid.lifts(rows)["synthetic"]["hosts"]) == ["sasrec"]


def test_best_rule_and_markdown(summaries):
  rows = grid.table_rows(summaries, {("synthetic", "sasrec", "mos"): 1234})
  rules = grid.best_rules(summaries)
  assert list(rules) == ["synthetic"] and math.isnan(rules["synthetic"].pop("logloss"))  # rules give no logloss
  assert rules == {"synthetic": {"rule": "in_history", "auc": 0.61, "gauc": 0.6}}
  oracles = grid.best_rules(summaries, oracle=True)
  assert oracles["synthetic"]["rule"] == "generator"  # the oracle is a ceiling, never the "best rule"
  md = grid.markdown(rows, {"backbone": grid.lifts(rows)}, grid.best_rules(summaries), "t",
                     "python benchmarks/grid.py --quick",
                     oracles=oracles)
  assert "| synthetic | sasrec | mos | 0.8400 ± 0.0283 | 0.7400 ± 0.0283 |" in md
  assert "| 3.00 | 1,234 | 1000 ± 1 | 2 |" in md
  assert "| synthetic | sasrec | gshard | 0.7000 | 0.6000 |" in md  # one seed: no sd
  assert "| synthetic | best rule: `in_history` | — | 0.6100 | 0.6000 | — |" in md
  assert "| synthetic | oracle rule (a ceiling): `generator` | — | 0.9700 | 0.9600 | — |" in md
  # 0.04 / sqrt(0.0283^2 + 0.0141^2) = 1.26 sd: a tie, however large the lift looks
  assert "| synthetic | sasrec | +5.00% (+1.3 sd, tie) | +5.71% (+1.3 sd, tie) |" in md


def test_verdict_counts(summaries):
  rows = grid.table_rows(summaries, {})
  tables = {"backbone": grid.lifts(rows), "gshard": grid.lifts(rows, base="gshard")}
  counts = grid.verdict_counts(tables)
  # sasrec: +0.04 at 1.3 sd (tie); din: -0.01 at 0.3 sd (tie). Against gshard (one seed) every verdict is n/a.
  assert [(r["base"], r["hosts"], r["auc"], r["gauc"]) for r in counts] == [
      ("backbone", 2, {"win": 0, "tie": 2, "loss": 0}, {"win": 0, "tie": 2, "loss": 0}),
      ("gshard", 2, {"win": 0, "tie": 0, "loss": 0}, {"win": 0, "tie": 0, "loss": 0})]
  assert counts[0]["mean_auc"] == pytest.approx(1.5)
  md = grid.markdown(rows, tables, {}, "t", "cmd")
  assert "| synthetic | backbone | 2 | 0 / 2 / 0 | 0 / 2 / 0 | +1.50% |" in md
  assert "| synthetic | **mean over hosts** | +1.50% |" in md
  md = grid.markdown(rows, {}, {}, "t", "c", {"taobao / din": ["every cell"], "synthetic / sasrec": ["mos seed 2"]})
  assert "Not finished, so not in the tables: taobao / din: every cell; synthetic / sasrec: mos seed 2." in md


def test_flags_quick_defaults_and_errors(capsys):
  a = grid.parse_args(["--out=x", "--quick", "--seeds=0,1", "--config.data.neg_ratio=2"])
  assert (a.hosts, a.seeds, a.steps, a.batch, a.dim) == (["sasrec", "din"], "0,1", 60, 64, 16)
  assert a.extra == ["--config.data.neg_ratio=2"]
  over = grid.shared_overrides(a, "din")
  assert "--config.model.backbone=din" in over and "--config.train.num_steps=60" in over
  assert "--config.train.eval_every=60" in over and over[-1] == "--config.data.neg_ratio=2"
  full = grid.parse_args(["--out=x", "--steps=100"])
  assert full.hosts == list(grid.HOSTS) and full.seeds == "0,1,2" and full.evals == 2
  assert "--config.train.eval_every=50" in grid.shared_overrides(full, "sasrec")
  with pytest.raises(SystemExit):
    grid.parse_args(["--out=x", "--hosts=nope"])
  assert "--hosts: unknown ['nope']" in capsys.readouterr().err


def test_collect_before_any_cell_finished_lists_every_block(tmp_path):
  assert grid.main([f"--out={tmp_path}", "--collect", "--hosts=sasrec,din", "--datasets=taobao", "--seeds=0"]) == 0
  md = (tmp_path / "grid.md").read_text()
  assert "Not finished, so not in the tables: taobao / sasrec: every cell; taobao / din: every cell." in md
  assert not list(tmp_path.glob("*/*/*/seed0"))  # collecting trains nothing
