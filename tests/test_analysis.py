"""Analysis commands: exact hop statistics of a hand-built event log, purity / NMI on hand-made labelings, curves from a
hand-written metrics.jsonl, and the routing command end to end on a tiny trained MoS run."""

import json
import math
import pathlib
import shutil

import jax
import numpy as np
import pytest

from mos_jax import config as config_lib
from mos_jax.analysis import (AnalysisError, compare, contingency, dominant_label, hop_stats, hopping_stats, nmi,
                              plot_curves, purity, read_metrics)
from mos_jax.analysis.__main__ import main as analysis_main

DAY = 86400

# ------------------------------------------------------------------------------------------------ hopping

# Three users; each session has three events at +0, +50, +100 s; session d of a user starts on day d.
# Categories per event (0 = unknown) and the dominant category they give (ties -> smallest; none known -> -1):
SESSIONS = {
    1: [[1, 1, 2], [2, 3, 2], [1, 0, 1], [3, 3, 4], [2, 5, 0], [2, 2, 2]],  # dominant 1 2 1 3 2 2
    2: [[5, 5, 5], [0, 0, 0], [5, 5, 1], [5, 0, 0]],  # dominant 5 -1 5 5
    3: [[7, 7, 7], [7, 7, 7]],  # dominant 7 7 (no session has two earlier ones)
}


def hand_events() -> dict[str, np.ndarray]:
  user, time, cat, sid = [], [], [], []
  s = 0
  for u, sessions in SESSIONS.items():
    for d, cats in enumerate(sessions):
      for i, c in enumerate(cats):
        user.append(u), time.append(d * DAY + 50 * i), cat.append(c), sid.append(s)
      s += 1
  n = len(user)
  return {"user": np.array(user, np.int32), "time": np.array(time, np.int64), "cat": np.array(cat, np.int32),
          "sid": np.array(sid, np.int64), "theme": np.full(n, -1, np.int32)}


def test_dominant_label_majority_ties_and_unknown():
  ev = hand_events()
  got = dominant_label(ev["sid"], ev["cat"], ev["cat"] > 0, 12)
  np.testing.assert_array_equal(got, [1, 2, 1, 3, 2, 2, 5, -1, 5, 5, 7, 7])


def test_hop_stats_exact():
  # User 1 (labels 1 2 1 3 2 2): j=2 returns to j=0 (distance 2, hop back); j=3 new; j=4 returns to j=1 (distance 3,
  # hop back); j=5 returns to j=1 (distance 4; same as j=4: a repeat, not a hop back).
  # User 2 (labels 5 ? 5 5): j=2 returns to j=0 (distance 2; j=1 unknown, so a hop back); j=3 returns to j=0
  # (distance 3; repeat). User 3: no eligible session.
  res = hopping_stats(hand_events())
  assert (res["users"], res["sessions"], res["events"]) == (3, 12, 36)
  spu = res["sessions_per_user"]
  assert (spu["count"], spu["mean"], spu["max"]) == (3, 4.0, 6.0)
  assert spu["histogram"]["counts"][spu["histogram"]["bins"].index("2")] == 1
  assert spu["histogram"]["counts"][spu["histogram"]["bins"].index("3-4")] == 1
  assert spu["histogram"]["counts"][spu["histogram"]["bins"].index("5-9")] == 1
  assert list(res["by"]) == ["category"]  # no true themes in this log
  c = res["by"]["category"]
  assert (c["labelled_sessions"], c["eligible_sessions"], c["returning_sessions"]) == (11, 6, 5)
  assert (c["hop_back_sessions"], c["repeat_sessions"], c["new_sessions"]) == (3, 2, 1)
  assert c["hop_rate"] == pytest.approx(5 / 6) and c["hop_back_rate"] == pytest.approx(3 / 6)
  assert c["repeat_rate"] == pytest.approx(2 / 6) and c["new_rate"] == pytest.approx(1 / 6)
  dist_s, dist_t = c["_distances"]
  np.testing.assert_array_equal(dist_s, [2, 3, 4, 2, 3])
  # first event of the returning session minus last event (+100 s) of the earlier one
  np.testing.assert_array_equal(dist_t, [2 * DAY - 100, 3 * DAY - 100, 4 * DAY - 100, 2 * DAY - 100, 3 * DAY - 100])
  assert c["return_distance_sessions"]["mean"] == pytest.approx(2.8)
  hist = c["return_distance_sessions"]["histogram"]
  assert hist["counts"][:4] == [2, 2, 1, 0] and sum(hist["counts"]) == 5
  th = c["return_distance_hours"]["histogram"]
  # 2 and 3 days less 100 s fall in [24 h, 72 h); 4 days less 100 s in [72 h, 168 h)
  assert th["counts"][th["bins"].index("1-3d")] == 4 and th["counts"][th["bins"].index("3-7d")] == 1
  # per-user hop rates: user 1 3/4, user 2 2/2
  assert c["per_user_hop_rate"]["count"] == 2 and c["per_user_hop_rate"]["mean"] == pytest.approx(0.875)


def test_hop_stats_true_theme_stripe_and_no_eligible_sessions():
  ev = hand_events()
  ev["theme"] = np.where(ev["user"] == 3, 0, -1).astype(np.int32)  # only user 3 has known themes
  res = hopping_stats(ev)
  t = res["by"]["theme"]
  assert t["labelled_sessions"] == 2 and t["eligible_sessions"] == 0 and t["hop_rate"] is None
  assert hop_stats(np.zeros(0, int), np.zeros(0, int), np.zeros(0, int), np.zeros(0, int))["hop_rate"] is None


def test_hopping_command_synthetic(tmp_path):
  out = tmp_path / "out"
  rc = analysis_main(["hopping", "--dataset", "synthetic", f"--config.data.cache_dir={tmp_path / 'cache'}",
                      "--config.data.synthetic.num_users=30", "--config.data.synthetic.num_themes=3",
                      "--users", "3", "--out", str(out)])
  assert rc == 0
  res = json.loads((out / "hopping.json").read_text())
  assert {p.name for p in out.iterdir()} == {"hopping.json", "hopping.png", "hopping_timelines.png"}
  assert res["users"] == 30 and set(res["by"]) == {"category", "theme"} and len(res["timeline_users"]) == 3
  # Sessions come from the time-gap rule; the generator's sessions are 14..22 per user.
  assert 14 <= res["sessions_per_user"]["mean"] <= 22
  for v in res["by"].values():
    assert 0.0 <= v["hop_rate"] <= 1.0 and v["hop_back_rate"] <= v["hop_rate"]
    assert v["returning_sessions"] == sum(v["return_distance_sessions"]["histogram"]["counts"])
  # 3 themes, one favourite theme set per user: most sessions return to a theme seen two or more sessions back.
  assert res["by"]["theme"]["hop_rate"] > 0.5
  assert res["summary"]["theme"]["hop_rate"] == res["by"]["theme"]["hop_rate"]


def test_hopping_command_bad_override(tmp_path, capsys):
  assert analysis_main(["hopping", "--config.data.no_such_field=1", "--out", str(tmp_path)]) == 2
  assert "no_such_field" in capsys.readouterr().err
  assert analysis_main(["hopping", "--config.model.num_themes=2", "--out", str(tmp_path)]) == 2
  assert "only --config.data" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ purity, NMI


def test_contingency_and_purity():
  va, vb, c = contingency([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(va, [0, 1])
  np.testing.assert_array_equal(c, [[2, 1], [0, 3]])
  assert purity([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]) == pytest.approx(5 / 6)
  assert purity([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="differ in length"):
    contingency([0, 1], [0])


def test_nmi_known_values():
  assert nmi([0, 0, 1, 1, 2], [5, 5, 3, 3, 9]) == pytest.approx(1.0)  # identical up to renaming
  assert nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)  # independent
  assert nmi([4, 4, 4], [1, 1, 1]) == 1.0  # one class each: identical partitions
  assert nmi([0, 1, 2], [0, 0, 0]) == pytest.approx(0.0, abs=1e-12)
  # Worked example: a = 000111, b = 001111. p(a) = (1/2, 1/2), p(b) = (1/3, 2/3);
  # I = 1/3 ln(2) + 1/6 ln(1/2) + 1/2 ln(3/2); NMI = I / ((H(a) + H(b)) / 2).
  mi = math.log(2) / 3 + math.log(0.5) / 6 + math.log(1.5) / 2
  ha, hb = math.log(2), -(math.log(1 / 3) / 3 + 2 * math.log(2 / 3) / 3)
  assert nmi([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]) == pytest.approx(mi / ((ha + hb) / 2), rel=1e-12)


def test_nmi_and_purity_match_scikit_learn_on_random_labelings():
  metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  for n, ka, kb in ((50, 3, 4), (200, 8, 2), (7, 1, 3)):
    a, b = rng.integers(0, ka, n), rng.integers(0, kb, n)
    assert nmi(a, b) == pytest.approx(metrics.normalized_mutual_info_score(b, a), abs=1e-12)
    c = metrics.cluster.contingency_matrix(b, a)  # rows: reference classes, columns: assigned groups
    assert purity(a, b) == pytest.approx(c.max(axis=0).sum() / n)


def test_compare_includes_empty_themes():
  res = compare(np.array([0, 0, 2, 2, 2]), np.array([7, 8, 8, 8, 8]), num_themes=3)
  assert res["labels"] == [7, 8] and res["counts"] == [[1, 1], [0, 0], [0, 3]]
  assert res["sessions"] == 5 and res["purity"] == pytest.approx(4 / 5)
  assert res["baseline_purity"] == pytest.approx(4 / 5)
  assert res["purity_per_theme"][0] == 0.5 and math.isnan(res["purity_per_theme"][1])
  assert res["majority_label_per_theme"] == [7, None, 8]


# ------------------------------------------------------------------------------------------------ curves


def write_log(workdir: pathlib.Path, lines: list[str]) -> None:
  workdir.mkdir(parents=True)
  (workdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_curves_from_hand_written_logs(tmp_path):
  a, b = tmp_path / "x" / "run", tmp_path / "y" / "run"  # same folder name: labels get the parent added
  write_log(a, [
      '{"step": 1, "split": "train", "loss": 0.9, "lr": 0.1}',
      '{"step": 2, "split": "train", "loss": 0.7}',
      '{"step": 2, "split": "valid", "auc": 0.60, "logloss": 0.69}',
      '{"step": 4, "split": "train", "loss": 0.5}',
      '{"step": 4, "split": "valid", "auc": 0.58, "logloss": 0.65}',
      '{"step": 5, "split": "tra',  # cut short by a hard kill
  ])
  write_log(b, ['{"step": 3, "split": "train", "loss": 1.5}', '{"step": 3, "split": "valid", "ndcg@10": 0.2}'])
  m = read_metrics(a)
  assert m["train"]["step"] == [1, 2, 4] and m["train"]["loss"] == [0.9, 0.7, 0.5]
  assert m["train"]["lr"] == [0.1, None, None]  # a key missing from a record reads as None
  assert m["valid"] == {"step": [2, 4], "auc": [0.60, 0.58], "logloss": [0.69, 0.65]}
  res = plot_curves([a, b], tmp_path / "out")
  ra, rb = res["runs"]
  assert (ra["label"], rb["label"]) == ("x/run", "y/run")
  assert ra["best_valid"] == {"auc": {"value": 0.60, "step": 2}, "logloss": {"value": 0.65, "step": 4}}
  assert ra["final_train_loss"] == 0.5 and rb["best_valid"] == {"ndcg@10": {"value": 0.2, "step": 3}}
  assert json.loads((tmp_path / "out" / "curves.json").read_text()) == res
  assert (tmp_path / "out" / "curves.png").stat().st_size > 0
  with pytest.raises(AnalysisError, match="metrics.jsonl: no such file"):
    read_metrics(tmp_path / "nothing")


def test_commands_report_bad_workdirs(tmp_path, capsys):
  assert analysis_main(["curves", "--workdir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
  assert "metrics.jsonl: no such file" in capsys.readouterr().err
  assert analysis_main(["routing", "--workdir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
  assert "no such directory" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ routing (trained)

STEPS = 2


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> pathlib.Path:
  from mos_jax.training.loop import train  # noqa: PLC0415

  workdir = tmp_path_factory.mktemp("tiny_mos")
  cfg = config_lib.Config(workdir=str(workdir), seed=0)
  cfg.data.cache_dir = str(tmp_path_factory.mktemp("prepared"))
  cfg.data.synthetic.num_users = 40
  cfg.data.num_sessions, cfg.data.session_len = 4, 4
  m = cfg.model
  m.embed_dim = m.hidden_dim = 8
  m.num_themes = 2
  t = cfg.train
  t.batch_size, t.eval_batch_size, t.num_steps, t.warmup_steps = 8, 64, STEPS, 1
  t.eval_every, t.checkpoint_every, t.log_every, t.progress_bar = 0, 0, 1, False
  assert train(cfg).status == "finished"
  return workdir


def test_routing_command_end_to_end(tiny_run, tmp_path):
  from mos_jax import data as data_lib  # noqa: PLC0415

  out = tmp_path / "routing"
  assert analysis_main(["routing", "--workdir", str(tiny_run), "--out", str(out), "--users", "3"]) == 0
  assert {p.name for p in out.iterdir()} == {"routing.json", "routing_heatmap.png", "routing_training.png",
                                             "routing_timelines.png"}
  res = json.loads((out / "routing.json").read_text())
  assert (res["checkpoint"], res["step"], res["split"], res["num_themes"]) == ("best", STEPS, "test", 2)
  # Independent count of the routed sessions: real sessions in the test split's positive rows.
  cfg = config_lib.config_from_dict(json.loads((tiny_run / "config.json").read_text()))
  test = data_lib.load_prepared(data_lib.prepare_dataset(cfg.data)).split("test", "ctr")
  pos = test["label"] > 0
  n_sessions = int(np.any(test["items"][pos] > 0, axis=-1).sum())
  assert res["num_examples"] == int(pos.sum()) == 40 and res["num_sessions"] == n_sessions
  assert sum(res["theme_sessions"]) == n_sessions
  assert sum(res["theme_share"]) == pytest.approx(1.0)
  cat = res["vs"]["category"]
  assert np.sum(cat["counts"]) == cat["sessions"] == n_sessions - res["unknown_category_sessions"]
  theme = res["vs"]["theme"]  # synthetic: every real session has its true theme
  assert np.sum(theme["counts"]) == n_sessions and np.asarray(theme["counts"]).shape == (2, len(theme["labels"]))
  np.testing.assert_array_equal(np.sum(theme["counts"], 1), res["theme_sessions"])
  for v in (cat, theme):
    assert 0.0 <= v["purity"] <= 1.0 and 0.0 <= v["nmi"] <= 1.0
    assert v["baseline_purity"] == pytest.approx(max(np.sum(v["counts"], 0)) / v["sessions"])
    assert v["purity"] >= v["baseline_purity"] - 1e-12  # never below the one-theme purity
  assert 0 <= res["kept_sessions_top1"] <= n_sessions and 0.0 <= res["dropped_fraction"] <= 1.0
  assert res["kept_sessions_top1"] == round(n_sessions * (1 - res["dropped_fraction"]))  # top_k = 1
  # Every row with history has fusion weights summing to 1 over the available experts.
  assert res["fusion_experts"] == ["global", "short", "theme 0", "theme 1"]
  assert sum(res["fusion_weights"]) == pytest.approx(1.0, abs=1e-5)
  tr = res["training"]
  assert tr["step"] == list(range(1, STEPS + 1)) and len(tr["expert_usage"]) == STEPS
  assert all(len(u) == 2 and sum(u) == pytest.approx(1.0, abs=1e-5) for u in tr["expert_usage"])
  assert len(res["timeline_users"]) == 3


def test_routing_refuses_a_non_mos_run(tiny_run, tmp_path):
  from mos_jax.analysis import analyze_routing  # noqa: PLC0415

  fake = tmp_path / "backbone_run"
  shutil.copytree(tiny_run, fake)
  for meta in (fake / "checkpoints").glob("*/*/config/metadata"):  # the saved config (Orbax JSON item)
    saved = json.loads(meta.read_text())
    saved["model"]["name"] = "backbone"
    meta.write_text(json.dumps(saved))
  with pytest.raises(AnalysisError, match="needs a MoS run.*model.name='backbone'"):
    analyze_routing(fake, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_restore_run_falls_back_to_latest_and_reports_missing(tiny_run, tmp_path):
  from mos_jax.training.checkpoint import CheckpointError  # noqa: PLC0415
  from mos_jax.training.restore import restore_run  # noqa: PLC0415

  no_best = tmp_path / "no_best"
  shutil.copytree(tiny_run, no_best)
  shutil.rmtree(no_best / "checkpoints" / "best")
  notes = []
  restored = restore_run(no_best, "best", note=notes.append)
  cfg, run, executor, step, kind = restored
  assert (step, kind) == (STEPS, "latest") and "no best checkpoint" in notes[0]
  assert cfg.model.num_sessions == 4 and executor.num_shards == 1
  # The merged model holds the trained parameters: those of the saved state, not the fresh initial ones.
  from flax import nnx  # noqa: PLC0415

  got = jax.tree.leaves(nnx.state(restored.model, nnx.Param))
  saved = jax.tree.leaves(executor.saveable_state().params)
  fresh = jax.tree.leaves(run.state.params)
  assert len(got) == len(saved) == len(fresh)
  assert all(np.array_equal(a, b) for a, b in zip(got, saved))
  assert not all(np.array_equal(a, b) for a, b in zip(got, fresh))
  with pytest.raises(CheckpointError, match="no such directory"):
    restore_run(tmp_path / "missing")
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  with pytest.raises(CheckpointError, match="no checkpoints in"):
    restore_run(tmp_path / "empty")
