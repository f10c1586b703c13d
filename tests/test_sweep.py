"""The multi-seed runner's pure parts: variant parsing, mean ± sd, aggregation and the markdown table."""

import math
import pathlib

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
  assert sweep.nan_positions([1.0, float("nan"), None, 2.0, float("inf")]) == [1, 2, 4]


def _record(variant, seed, auc, ss_auc, rule_auc, rules=True):
  ev = {"task": "ctr", "dataset": "synthetic", "metrics": {"auc": auc, "gauc": auc - 0.01, "logloss": 0.5},
        "slices": {"all": {"auc": auc}, "session_start": {"auc": ss_auc, "gauc": ss_auc}}}
  if rules:
    ev["rules"] = {"in_history": {"all": {"auc": rule_auc}, "session_start": {"auc": 0.5}},
                   "popularity": {"all": {"auc": 0.52}, "session_start": {"auc": 0.51}},
                   "generator": {"all": {"auc": 0.97}, "session_start": {"auc": 0.95}}}
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

  args = argparse.Namespace(out=str(tmp_path), select_split="valid", report_set=set(), config="configs/default.py",
                            rules=True)
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
  # Records of older sweeps (no split recorded) read as chosen and shown on test, their --split default.
  assert "Configurations chosen on the **test** split; cells on the **test** split." in md
  assert "| test auc | test gauc | test sess-start auc |" in md
  assert "test auc vs backbone | test sess-start auc vs backbone |" in md
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
  args = argparse.Namespace(out=str(tmp_path), select_split="valid", report_set=set(), config="configs/default.py",
                            rules=True)
  wd, train_cmd, eval_cmds = sweep._commands(args, sweep.Variant("mos", []), 0, [])
  wd.mkdir(parents=True)
  record = {**_record("mos", 0, 0.8, 0.7, 0.6), "train_cmd": " ".join(train_cmd[1:]),
            "eval_cmd": " ".join(eval_cmds["valid"][1:])}
  (wd / "sweep_run.json").write_text(json.dumps(record))
  (wd / "eval_valid.json").write_text(json.dumps(record["eval"]))
  assert sweep.main(argv) == 0
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["missing"] == ["mos seed 1"] and summary["aggregate"]["variants"]["mos"]["seeds"] == [0]
  assert "Not finished, so not in the table: mos seed 1." in (tmp_path / "summary.md").read_text()


# -- issue 22: selection on valid, test only for --report-ed variants; verdicts only on shared rows; NaN seeds --------


def _args(argv):
  args, shared = sweep.parser().parse_known_args(argv)
  variants = [sweep.parse_variant(v) for v in args.variant]
  args.report_set = sweep.report_names(args, variants)
  return args, variants, shared


def test_select_split_defaults_to_valid_and_test_only_for_reported_variants(tmp_path):
  base = [f"--out={tmp_path}", "--variant=mos=", "--variant=backbone=--config.model.name=backbone"]
  args, variants, shared = _args(base)
  assert args.select_split == "valid" and args.report_set == set()
  for v in variants:  # the default never evaluates test
    _, _, evals = sweep._commands(args, v, 0, shared)
    assert list(evals) == ["valid"]
    assert evals["valid"][1:] == ["eval.py", f"--workdir={tmp_path}/{v.name}/seed0", "--split=valid", "--rules"]
  args, variants, shared = _args(base + ["--report=mos"])
  assert [list(sweep._commands(args, v, 0, shared)[2]) for v in variants] == [["valid", "test"], ["valid"]]
  assert sweep._commands(args, variants[0], 0, shared)[2]["test"][-2:] == ["--split=test", "--rules"]
  assert _args(base + ["--report=all"])[0].report_set == {"mos", "backbone"}
  assert _args(base + ["--split=test"])[0].select_split == "test"  # the old flag name still chooses the split
  with pytest.raises(ValueError, match="gshard not among the variants"):
    _args(base + ["--report=mos,gshard"])
  with pytest.raises(ValueError, match="already shown on test"):
    _args(base + ["--select_split=test", "--report=mos"])


def _write_run(args, variant, seed, evals, **extra):
  """A finished run's folder as run_one leaves it: {split: eval} evaluated by this command's eval commands."""
  import json

  wd, train_cmd, cmds = sweep._commands(args, sweep.Variant(variant, []), seed, [])
  wd.mkdir(parents=True)
  select = args.select_split
  record = {"variant": variant, "seed": seed, "workdir": str(wd), "train_cmd": " ".join(train_cmd[1:]),
            "train_wall_s": 10.0, "train_examples_per_s": 100.0, "flops": 2e6, "select_split": select,
            "eval_cmd": " ".join(cmds[select][1:]), "eval": evals[select], **extra}
  if "test" in evals and select != "test":
    record.update(report_split="test", report_eval_cmd=" ".join(cmds["test"][1:]), report_eval=evals["test"])
  (wd / "sweep_run.json").write_text(json.dumps(record))
  for split, ev in evals.items():
    (wd / f"eval_{split}.json").write_text(json.dumps({**ev, "split": split}))


def test_collect_tables_name_the_choosing_and_the_shown_split(tmp_path):
  import json

  argv = [f"--out={tmp_path}", "--seeds=0,1", "--variant=mos=", "--variant=backbone=", "--report=mos", "--collect"]
  args, _, _ = _args(argv)
  for s in (0, 1):
    _write_run(args, "mos", s, {"valid": _record("mos", s, 0.81 + s / 100, 0.7, 0.6)["eval"],
                                "test": _record("mos", s, 0.71 + s / 100, 0.6, 0.55)["eval"]})
    _write_run(args, "backbone", s, {"valid": _record("backbone", s, 0.75, 0.65, 0.6)["eval"]})
  assert sweep.main(argv) == 0
  md = (tmp_path / "summary.md").read_text()
  valid_table, test_table = md.split("reported on test")
  assert "Configurations chosen on the **valid** split; cells on the **valid** split (every variant)." in valid_table
  assert "| model | valid auc | valid gauc | valid sess-start auc |" in valid_table
  assert "| mos | 0.8150 ± 0.0071 |" in valid_table and "| backbone | 0.7500 ± 0.0000 |" in valid_table
  assert ("Configurations chosen on the **valid** split; cells on the **test** split (only the variants named by "
          "--report: mos).") in test_table
  assert "| model | test auc |" in test_table and "| mos | 0.7150 ± 0.0071 |" in test_table
  assert "| backbone |" not in test_table and "| best rule: `in_history` | 0.5500 |" in test_table
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert (summary["select_split"], summary["report_split"]) == ("valid", "test")
  assert summary["aggregate"]["split"] == "valid" and list(summary["report"]["variants"]) == ["mos"]
  # Not reported: no test table, and nothing on test is read.
  assert sweep.main(argv[:-2] + ["--collect"]) == 0
  assert "reported on test" not in (tmp_path / "summary.md").read_text()
  assert json.loads((tmp_path / "summary.json").read_text())["report"] is None


def test_records_of_older_sweeps_are_read_as_chosen_on_their_split(tmp_path):
  import json

  argv = [f"--out={tmp_path}", "--seeds=0", "--variant=mos=", "--collect"]
  old = _args(argv + ["--split=test"])[0]
  wd, train_cmd, cmds = sweep._commands(old, sweep.Variant("mos", []), 0, [])
  wd.mkdir(parents=True)
  record = {**_record("mos", 0, 0.8, 0.7, 0.6), "train_cmd": " ".join(train_cmd[1:]),
            "eval_cmd": " ".join(cmds["test"][1:])}  # the old format: one "eval", no "select_split"
  (wd / "sweep_run.json").write_text(json.dumps(record))
  (wd / "eval_test.json").write_text(json.dumps(record["eval"]))
  assert sweep.main(argv + ["--split=test"]) == 0
  assert "chosen on the **test** split; cells on the **test** split" in (tmp_path / "summary.md").read_text()
  assert sweep.main(argv) == 1  # selecting on valid: that run has no valid evaluation yet


def test_run_one_reuses_the_training_and_the_evaluations_it_has(tmp_path, monkeypatch):
  import json

  calls = []

  def fake_run(cmd, log):
    calls.append(cmd[1])
    split = next((a.partition("=")[2] for a in cmd if a.startswith("--split=")), None)
    if split:
      wd = pathlib.Path(next(a.partition("=")[2] for a in cmd if a.startswith("--workdir=")))
      (wd / f"eval_{split}.json").write_text(json.dumps({**_record("mos", 0, 0.8, 0.7, 0.6)["eval"], "split": split}))
    return 1.0

  monkeypatch.setattr(sweep, "_run", fake_run)
  monkeypatch.setattr(sweep, "forward_flops", lambda wd: 1.0)
  v = sweep.Variant("mos", [])
  args = _args([f"--out={tmp_path}", "--variant=mos="])[0]
  rec = sweep.run_one(args, v, 0, [])
  assert calls == ["train.py", "eval.py"] and rec["select_split"] == "valid" and rec["report_eval"] is None
  again = sweep.run_one(args, v, 0, [])
  assert len(calls) == 2 and again["eval"] == rec["eval"] and again["eval_cmd"] == rec["eval_cmd"]  # nothing runs
  args = _args([f"--out={tmp_path}", "--variant=mos=", "--report=mos"])[0]
  rec = sweep.run_one(args, v, 0, [])
  assert calls == ["train.py", "eval.py", "eval.py"]  # only the test evaluation is new
  assert (rec["report_split"], rec["report_eval"]["split"], rec["eval"]["split"]) == ("test", "test", "valid")


def _reference_md(recs, **kw):
  return sweep.markdown(sweep.aggregate(recs, "ctr"), "t", reference="backbone", **kw)


def test_verdicts_only_between_variants_on_the_same_rows():
  mos = [_record("mos", s, a, a - 0.1, 0.6) for s, a in zip((0, 1, 2), (0.80, 0.82, 0.84))]
  base = [_record("backbone", s, a, a - 0.2, 0.6) for s, a in zip((0, 1, 2), (0.70, 0.71, 0.72))]
  md = _reference_md(mos + base)
  assert "(+4.9 sd, win)" in md and "Every variant is scored on the same test rows (rules that score" in md
  # Different rows (the rules score the variants differently): the gap stays, the verdict goes, the footer says why.
  other = [_record("backbone", s, a, a - 0.2, 0.9) for s, a in zip((0, 1, 2), (0.70, 0.71, 0.72))]
  agg = sweep.aggregate(mos + other, "ctr")
  assert agg["rows_shared"] is False and sweep.rows_relation(agg, "mos", "backbone") is False
  md = sweep.markdown(agg, "t", reference="backbone")
  assert "| +0.1100 (no verdict: other rows) |" in md and "sd, win)" not in md
  assert "are not all scored on the same test rows" in md and "every variant shares" not in md
  # Different data options, rules equal: still other rows.
  for r in base:
    r["data_options"] = {"negatives": "uniform"}
  for r in mos:
    r["data_options"] = {"negatives": "matched"}
  assert sweep.aggregate(mos + base, "ctr")["rows_shared"] is False


def test_no_rules_footer_states_what_is_known():
  mos = [_record("mos", s, a, a - 0.1, 0.6, rules=False) for s, a in zip((0, 1, 2), (0.80, 0.82, 0.84))]
  base = [_record("backbone", s, a, a - 0.2, 0.6, rules=False) for s, a in zip((0, 1, 2), (0.70, 0.71, 0.72))]
  agg = sweep.aggregate(mos + base, "ctr")
  assert (agg["rules_shared"], agg["rows_shared"]) == (None, None)
  md = sweep.markdown(agg, "t", reference="backbone")
  assert "| +0.1100 (no verdict: rows unchecked) |" in md and "sd, win)" not in md
  assert "share their test rows is unknown" in md and "No rules ran (--no-rules)" in md
  assert "rules are deterministic" not in md.lower() and "best rule" not in md
  # The runs' data options settle it: the same options, the same rows, verdicts back.
  for r in mos + base:
    r["data_options"] = {"negatives": "uniform", "split_seed": 0}
  md = _reference_md(mos + base)
  assert "(+4.9 sd, win)" in md and "Every variant is scored on the same test rows (the same data options)." in md


def test_nan_seeds_are_reported_not_dropped_silently():
  recs = [_record("mos", s, a, a - 0.1, 0.6) for s, a in zip((0, 1, 2), (0.80, float("nan"), 0.82))]
  agg = sweep.aggregate(recs, "ctr")
  row = agg["variants"]["mos"]
  assert row["all/auc"][2] == 2 and row["all/auc"][0] == pytest.approx(0.81)
  assert row["nan_seeds"] == {"all/auc": [1], "all/gauc": [1], "session_start/auc": [1], "session_start/gauc": [1]}
  md = sweep.markdown(agg, "t")
  assert "| mos | 0.8100 ± 0.0141 (2 of 3 seeds; seed 1 NaN) |" in md and "| 3 |" in md  # 3 seeds ran
  recs[0]["eval"]["metrics"]["auc"] = None
  row = sweep.aggregate(recs, "ctr")["variants"]["mos"]
  assert sweep._fmt_cell(row, "all/auc") == "0.8200 (1 of 3 seeds; seeds 0, 1 NaN)"


def test_realistic_config_chooses_its_checkpoint_on_valid():
  from mos_jax.config import load_config_file

  t = load_config_file(pathlib.Path(sweep.REPO_ROOT) / "configs" / "realistic.py").train
  assert t.eval_split == "valid" and t.eval_every > 0 and t.patience > 0 and t.num_steps % t.eval_every == 0
