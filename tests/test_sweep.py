"""The multi-seed runner's pure parts: variant parsing, mean ± sd, aggregation and the markdown table."""

import math

import pytest

from mos_jax.experiments import sweep


def test_parse_variant():
  v = sweep.parse_variant("gshard=--config=configs/gshard.py --config.model.moe.top_k=1")
  assert v.name == "gshard" and v.overrides == ["--config=configs/gshard.py", "--config.model.moe.top_k=1"]
  assert sweep.parse_variant("mos=").overrides == []
  with pytest.raises(ValueError, match="NAME=OVERRIDES"):
    sweep.parse_variant("no equals sign")
  with pytest.raises(ValueError, match="is not --config"):
    sweep.parse_variant("x=--workdir=/tmp")


def test_mean_sd_is_sample_sd_and_skips_nan():
  m, sd, n = sweep.mean_sd([1.0, 2.0, 3.0, float("nan")])
  assert (m, n) == (2.0, 3) and sd == pytest.approx(1.0)
  assert sweep.mean_sd([5.0]) == (5.0, 0.0, 1)
  assert math.isnan(sweep.mean_sd([])[0])


def _record(variant, seed, auc, ss_auc, rule_auc):
  ev = {"task": "ctr", "dataset": "synthetic", "metrics": {"auc": auc, "gauc": auc - 0.01, "logloss": 0.5},
        "slices": {"all": {"auc": auc}, "session_start": {"auc": ss_auc, "gauc": ss_auc}},
        "rules": {"in_history": {"all": {"auc": rule_auc}, "session_start": {"auc": 0.5}},
                  "popularity": {"all": {"auc": 0.52}, "session_start": {"auc": 0.51}},
                  "generator": {"all": {"auc": 0.97}, "session_start": {"auc": 0.95}}}}
  return {"variant": variant, "seed": seed, "train_wall_s": 10.0, "train_examples_per_s": 100.0 + seed,
          "flops": 2e6, "eval": ev}


def test_aggregate_and_markdown():
  recs = [_record("mos", s, a, a - 0.1, 0.6) for s, a in zip((0, 1, 2), (0.80, 0.82, 0.84))]
  recs += [_record("backbone", s, 0.7, 0.6, 0.6) for s in (0, 1, 2)]
  agg = sweep.aggregate(recs, "ctr")
  m, sd, n = agg["variants"]["mos"]["all/auc"]
  assert (n, round(m, 6), round(sd, 6)) == (3, 0.82, 0.02)
  assert agg["variants"]["mos"]["session_start/auc"][0] == pytest.approx(0.72)
  assert agg["variants"]["backbone"]["all/auc"][1] == pytest.approx(0.0, abs=1e-12)
  # The oracle (0.97) scores highest but is a ceiling, never the best rule to beat.
  assert (agg["best_rule"], agg["oracle_rule"]) == ("in_history", "generator")
  assert agg["rules"]["in_history"]["all/auc"][::2] == (0.6, 6)
  md = sweep.markdown(agg, "t")
  assert "| mos | 0.8200 ± 0.0200 |" in md
  assert "| best rule: `in_history` | 0.6000 |" in md and "popularity 0.5200" in md
  assert "| oracle rule (a ceiling): `generator` | 0.9700 |" in md


def test_variants_on_different_rows_get_their_own_best_rule():
  recs = [_record("mos", s, 0.8, 0.7, 0.6) for s in (0, 1)] + [_record("short", s, 0.8, 0.7, 0.9) for s in (0, 1)]
  agg = sweep.aggregate(recs, "ctr")
  assert agg["rules_shared"] is False
  assert agg["best_rule_by_variant"] == {"mos": "in_history", "short": "in_history"}
  assert agg["oracle_rule_by_variant"] == {"mos": "generator", "short": "generator"}
  assert agg["rules_by_variant"]["short"]["in_history"]["all/auc"][0] == pytest.approx(0.9)
  md = sweep.markdown(agg, "t")
  assert "best rule (mos): `in_history` | 0.6000" in md and "best rule (short): `in_history` | 0.9000" in md
  assert "oracle rule (a ceiling) (short): `generator` | 0.9700" in md


def test_a_folder_of_another_command_is_refused(tmp_path):
  import argparse
  import json

  args = argparse.Namespace(out=str(tmp_path), split="test", config="configs/default.py", rules=True)
  wd = tmp_path / "mos" / "seed0"
  wd.mkdir(parents=True)
  (wd / "sweep_train.json").write_text(json.dumps({"train_cmd": "train.py --config=other.py", "train_wall_s": 1.0}))
  with pytest.raises(RuntimeError, match="holds a run of another command"):
    sweep.run_one(args, sweep.Variant("mos", []), 0, [])


def test_compare_gap_in_sd_of_difference_and_verdict():
  # sd of the difference = sqrt(0.03² + 0.04²) = 0.05
  diff, z, verdict = sweep.compare((0.90, 0.03, 3), (0.80, 0.04, 3))
  assert diff == pytest.approx(0.10) and z == pytest.approx(2.0) and verdict == "tie"  # exactly 2 sd: not beyond
  assert sweep.compare((0.91, 0.03, 3), (0.80, 0.04, 3))[2] == "win"
  assert sweep.compare((0.69, 0.03, 3), (0.80, 0.04, 3))[2] == "loss"
  assert sweep.compare((0.90, 0.0, 3), (0.80, 0.0, 3))[1:] == (math.inf, "win")
  assert sweep.compare((0.90, 0.0, 1), (0.80, 0.01, 3))[2] == "n/a"  # one seed: no spread to judge by


def test_markdown_reference_column():
  recs = [_record("mos", s, a, a - 0.1, 0.6) for s, a in zip((0, 1, 2), (0.80, 0.82, 0.84))]
  recs += [_record("backbone", s, a, a - 0.2, 0.6) for s, a in zip((0, 1, 2), (0.70, 0.71, 0.72))]
  agg = sweep.aggregate(recs, "ctr")
  md = sweep.markdown(agg, "t", reference="backbone")
  assert "auc vs backbone | sess-start auc vs backbone |" in md
  # mos - backbone = 0.11 on all rows; sd of the difference sqrt(0.02² + 0.01²) = 0.02236 -> 4.9 sd
  assert "| +0.1100 (+4.9 sd, win) | +0.2100 (+9.4 sd, win) |" in md
  assert "| backbone | 0.7100 ± 0.0100 |" in md and md.count("| — | — |") >= 1
  with pytest.raises(ValueError, match="no such variant"):
    sweep.markdown(agg, "t", reference="gshard")


def test_collect_tabulates_finished_runs_and_lists_the_rest(tmp_path, capsys):
  import argparse
  import json

  argv = [f"--out={tmp_path}", "--seeds=0,1", "--variant=mos=", "--collect"]
  assert sweep.main(argv) == 1 and "no finished run" in capsys.readouterr().err  # nothing trained, nothing to show
  args = argparse.Namespace(out=str(tmp_path), split="test", config="configs/default.py", rules=True)
  wd, train_cmd, eval_cmd = sweep._commands(args, sweep.Variant("mos", []), 0, [])
  wd.mkdir(parents=True)
  record = {**_record("mos", 0, 0.8, 0.7, 0.6), "train_cmd": " ".join(train_cmd[1:]), "eval_cmd": " ".join(eval_cmd[1:])}
  (wd / "sweep_run.json").write_text(json.dumps(record))
  (wd / "eval_test.json").write_text(json.dumps(record["eval"]))
  assert sweep.main(argv) == 0
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["missing"] == ["mos seed 1"] and summary["aggregate"]["variants"]["mos"]["seeds"] == [0]
  assert "Not finished, so not in the table: mos seed 1." in (tmp_path / "summary.md").read_text()
