"""Slices of an evaluation split: exact membership on hand-made rows, per-slice metrics equal to metrics computed
directly on the subset, and the undefined cases (empty slice, one label class, missing keys)."""

import json
import math
import pathlib
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mos_jax.evaluation import metrics, slices
from mos_jax.evaluation.slices import num_history_cats, slice_masks, slice_metrics

# 8 hand-made rows, S=2 sessions of T=4 items. hist_len sits on both sides of every edge (1 | 9, 10 | 49, 50 | 199,
# 200); the categories counted are those > 0 under an item > 0.
HIST_LEN = [1, 9, 10, 49, 50, 199, 200, 5000]
SESSION_START = [1, 0, 0, 1, 1, 0, 0, 1]
ITEMS = [
    [[0, 0, 0, 0], [1, 2, 0, 0]],
    [[1, 2, 3, 4], [5, 6, 0, 0]],
    [[0, 0, 0, 0], [3, 3, 0, 0]],
    [[1, 1, 1, 1], [2, 2, 2, 2]],
    [[1, 2, 3, 4], [5, 6, 7, 8]],
    [[1, 2, 3, 4], [5, 6, 7, 8]],
    [[1, 2, 3, 4], [5, 6, 7, 8]],
    [[0, 0, 0, 0], [9, 0, 0, 0]],
]
CATS = [
    [[0, 0, 0, 0], [5, 5, 0, 0]],  # 1 category
    [[1, 2, 3, 4], [9, 9, 7, 7]],  # {1, 2, 3, 4, 9}: the 7s sit under padding items -> 5
    [[0, 0, 0, 0], [0, 0, 0, 0]],  # unknown categories only -> 0
    [[3, 0, 3, 3], [8, 8, 8, 8]],  # {3, 8}; the unknown 0 is not a category -> 2
    [[1, 2, 3, 4], [5, 6, 7, 8]],  # 8
    [[2, 2, 4, 4], [6, 6, 6, 6]],  # 3
    [[1, 2, 3, 4], [5, 6, 7, 7]],  # 7
    [[0, 0, 0, 0], [4, 0, 0, 0]],  # 1
]
NUM_CATS = [1, 5, 0, 2, 8, 3, 7, 1]
EXPECTED_ROWS = {
    "all": [0, 1, 2, 3, 4, 5, 6, 7],
    "session_start": [0, 3, 4, 7],
    "within_session": [1, 2, 5, 6],
    "hist_len:1-9": [0, 1],
    "hist_len:10-49": [2, 3],
    "hist_len:50-199": [4, 5],
    "hist_len:200+": [6, 7],
    "cats:0": [2],
    "cats:1": [0, 7],
    "cats:2-3": [3, 5],
    "cats:4-7": [1, 6],
    "cats:8+": [4],
}


def hand_made(repeat: int = 1, rng=None) -> dict[str, np.ndarray]:
  a = {"items": np.asarray(ITEMS, np.int32), "cats": np.asarray(CATS, np.int32),
       "hist_len": np.asarray(HIST_LEN, np.int32), "session_start": np.asarray(SESSION_START, np.int32)}
  a = {k: np.concatenate([v] * repeat) for k, v in a.items()}
  n = 8 * repeat
  rng = rng or np.random.default_rng(0)
  a.update(label=rng.integers(0, 2, n).astype(np.float32), user=rng.integers(1, 4, n).astype(np.int32),
           weight=np.ones(n, np.float32))
  return a


def rows(mask: np.ndarray) -> list[int]:
  return np.flatnonzero(mask).tolist()


def test_exact_membership_and_order_on_hand_made_rows():
  masks = slice_masks(hand_made())
  assert list(masks) == list(EXPECTED_ROWS)  # fixed order: all, session, history length, categories
  for name, want in EXPECTED_ROWS.items():
    assert masks[name].dtype == bool and rows(masks[name]) == want, name
  np.testing.assert_array_equal(num_history_cats(ITEMS, CATS), NUM_CATS)


def test_category_count_is_the_same_in_chunks(monkeypatch):
  monkeypatch.setattr(slices, "_CHUNK", 3)  # 8 rows -> chunks of 3, 3, 2
  np.testing.assert_array_equal(num_history_cats(ITEMS, CATS), NUM_CATS)


def test_bucket_names_follow_the_edges():
  assert slices.bucket_names("hist_len", slices.HIST_LEN_EDGES) == [
      "hist_len:1-9", "hist_len:10-49", "hist_len:50-199", "hist_len:200+"]
  assert slices.bucket_names("cats", slices.CATS_EDGES) == ["cats:0", "cats:1", "cats:2-3", "cats:4-7", "cats:8+"]


def test_slices_whose_keys_are_missing_are_skipped():
  a = hand_made()
  no_session = {k: v for k, v in a.items() if k not in ("session_start", "hist_len")}
  assert list(slice_masks(no_session)) == ["all", "cats:0", "cats:1", "cats:2-3", "cats:4-7", "cats:8+"]
  assert list(slice_masks({"label": a["label"]})) == ["all"]


def _direct_ctr(s, y, u):
  both = 0 < y.sum() < len(y)
  if both:  # independent of the metrics module where it is defined
    assert metrics.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
  return {"logloss": metrics.logloss(y, metrics.sigmoid(s)), "auc": metrics.auc(y, s) if both else math.nan,
          "gauc": metrics.gauc(y, s, u), "num_examples": len(y)}


def test_ctr_slice_metrics_equal_metrics_on_the_subset():
  rng = np.random.default_rng(1)
  a = hand_made(repeat=6, rng=rng)
  logits = rng.normal(size=48)
  result = slice_metrics(a, logits, task="ctr")
  assert list(result) == list(EXPECTED_ROWS)
  for name in EXPECTED_ROWS:
    m = np.isin(np.arange(48) % 8, EXPECTED_ROWS[name])
    want = _direct_ctr(logits[m], a["label"][m], a["user"][m])
    assert result[name] == pytest.approx(want, abs=1e-12, nan_ok=True), name
    assert result[name]["num_examples"] == 6 * len(EXPECTED_ROWS[name])


def test_next_slice_metrics_equal_ranking_metrics_on_the_subset():
  rng = np.random.default_rng(2)
  a = hand_made(repeat=3, rng=rng)
  ranks = rng.integers(1, 30, 24)
  result = slice_metrics(a, ranks, task="next", ks=(1, 10))
  for name in EXPECTED_ROWS:
    m = np.isin(np.arange(24) % 8, EXPECTED_ROWS[name])
    want = {**metrics.ranking_metrics(ranks[m], (1, 10)), "num_examples": int(m.sum())}
    assert result[name] == pytest.approx(want, abs=1e-15), name
  assert set(result["all"]) == {"hr@1", "hr@10", "ndcg@1", "ndcg@10", "mrr@1", "mrr@10", "mrr", "num_examples"}


def test_empty_slices_are_left_out_and_one_class_slices_give_nan():
  a = hand_made()
  a["hist_len"] = np.full(8, 3, np.int32)  # every row in hist_len:1-9
  a["label"] = np.asarray(SESSION_START, np.float32)  # session_start: all 1; within_session: all 0
  result = slice_metrics(a, np.linspace(-1, 1, 8), task="ctr", with_logloss=False)
  assert [k for k in result if k.startswith("hist_len")] == ["hist_len:1-9"]
  assert math.isnan(result["session_start"]["auc"]) and math.isnan(result["session_start"]["gauc"])
  assert math.isnan(result["within_session"]["auc"]) and result["within_session"]["num_examples"] == 4
  assert not math.isnan(result["all"]["auc"])
  assert "logloss" not in result["all"]  # rules: scores are not logits


def test_bad_inputs_give_clear_errors():
  a = hand_made()
  cases = [
      (lambda: slice_masks({**a, "session_start": np.full(8, 2, np.int32)}), "'session_start': expected values 0 or 1"),
      (lambda: slice_masks({**a, "hist_len": np.ones(8, np.float32)}), r"'hist_len': expected an integer array"),
      (lambda: slice_masks({**a, "hist_len": np.ones(7, np.int32)}), r"'hist_len': .*shape \(8,\)"),
      (lambda: slice_masks({**a, "cats": a["cats"][:, :1]}), "items and cats: expected equal shapes"),
      (lambda: slice_masks({}), "no per-row key"),
      (lambda: slice_metrics(a, np.zeros(7), task="ctr"), r"outputs: expected shape \(8,\)"),
      (lambda: slice_metrics({k: v for k, v in a.items() if k != "user"}, np.zeros(8), task="ctr"),
       "needs key 'user'"),
      (lambda: slice_metrics(a, np.zeros(8), task="rank"), "task: expected one of"),
      (lambda: slice_metrics(a, np.zeros(8), task="ctr", masks={"x": np.ones(8, np.int32)}), r"masks\['x'\]"),
      (lambda: slice_metrics(a, np.zeros(8, np.int64), task="next"), "ranks: expected 1-based ranks"),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match=message):
      call()


# --- eval.py end to end (one tiny 2-step run, shared by the tests below) ----------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  from mos_jax import config as config_lib  # noqa: PLC0415
  from mos_jax.training.loop import train  # noqa: PLC0415

  root = tmp_path_factory.mktemp("evalslices")
  cfg = config_lib.Config(workdir=str(root / "run"), seed=0)
  cfg.data.cache_dir = str(root / "cache")
  cfg.data.synthetic.num_users = 40
  cfg.data.num_sessions, cfg.data.session_len = 4, 4
  cfg.model.embed_dim = cfg.model.hidden_dim = 8
  cfg.model.num_themes = 2
  t = cfg.train
  t.batch_size, t.eval_batch_size, t.num_steps, t.warmup_steps, t.eval_every, t.progress_bar = 8, 64, 2, 1, 0, False
  assert train(cfg).status == "finished"
  return pathlib.Path(cfg.workdir)


def _fake_rules(dataset, split, task, arrays=None):
  """Stands in for mos_jax.evaluation.rules: a perfect rule and a constant one, on the rows it is given."""
  assert task == "ctr" and split == "valid" and dataset.meta["num_items"] > 0
  return {"oracle": np.asarray(arrays["label"], np.float64), "constant": np.zeros(len(arrays["label"]))}


def test_eval_script_writes_slices_and_rules(tiny_run, monkeypatch, capsys):
  import types  # noqa: PLC0415

  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  import eval as eval_script  # noqa: PLC0415  (the repo-root eval.py)

  assert eval_script.main([f"--workdir={tiny_run}", "--split=valid"]) == 0
  report = json.loads((tiny_run / "eval_valid.json").read_text())
  assert set(report) == {"split", "checkpoint", "step", "model", "dataset", "task", "metrics", "slices"}
  assert report["slices"]["all"] == report["metrics"] and report["step"] == 2
  n = report["metrics"]["num_examples"]
  assert sum(m["num_examples"] for k, m in report["slices"].items() if k.startswith("cats:")) == n
  out = capsys.readouterr().out
  assert "per slice (valid split)" in out and "\nall " in out

  monkeypatch.setitem(sys.modules, "mos_jax.evaluation.rules", types.SimpleNamespace(rule_outputs=_fake_rules))
  assert eval_script.main([f"--workdir={tiny_run}", "--split=valid", "--rules"]) == 0
  with_rules = json.loads((tiny_run / "eval_valid.json").read_text())
  assert with_rules["slices"] == report["slices"]  # the model's numbers do not change
  assert list(with_rules["rules"]) == ["oracle", "constant"]
  for name, m in with_rules["rules"]["oracle"].items():
    assert set(m) == {"auc", "gauc", "num_examples"}, name  # a rule's score is not a logit: no logloss
    assert m["num_examples"] == report["slices"][name]["num_examples"]
    assert m["auc"] == 1.0 or math.isnan(m["auc"])
  assert with_rules["rules"]["constant"]["all"]["auc"] == 0.5
  table = capsys.readouterr().out.split("model vs trivial rules")[1]
  assert "rule: oracle   | 1.0000*" in table and "rule: constant | 0.5000 " in table
  assert not list(tiny_run.glob("*.tmp"))
