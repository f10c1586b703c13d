"""evaluate() end to end with jitted prediction functions, against the numpy metrics and direct references."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from mos_jax.data import make_iterator
from mos_jax.evaluation import evaluate, metrics, predict_rows, row_metrics, target_ranks

B, S, T, V = 4, 2, 2, 7  # batch, sessions, items per session, num_items + 1


# The "model" reads its scores from the batch, so tests control them exactly. Module level: compiled once.
@jax.jit
def _ctr_predict(batch):
  return batch["score"].astype(jnp.float32)


@jax.jit
def _next_predict(batch):
  scores = batch["scores"].astype(jnp.float32)
  return scores.at[:, 0].set(-1e9)  # padding column, as the models emit it


def _ctr_batches(rng, num_batches, pad_last=2):
  batches = []
  for i in range(num_batches):
    w = np.ones(B, np.float32)
    if i == num_batches - 1:
      w[B - pad_last:] = 0
    batches.append({
        "score": np.round(rng.normal(size=B), 1).astype(np.float32),  # rounded: ties
        "label": rng.integers(0, 2, B).astype(np.float32),
        "user": rng.integers(0, 3, B).astype(np.int32),
        "weight": w,
    })
  # Padding rows carry garbage that must never be read: NaN scores, labels outside {0, 1}.
  last = batches[-1]
  last["score"][w == 0] = np.nan
  last["label"][w == 0] = 7.0
  return batches


def _real(batches, key):
  return np.concatenate([b[key][b["weight"] > 0] for b in batches])


def test_ctr_matches_sklearn_and_reference_on_real_rows_only():
  rng = np.random.default_rng(0)
  batches = _ctr_batches(rng, num_batches=5)
  out = evaluate(_ctr_predict, iter(batches), task="ctr")  # a one-shot iterator is enough
  s, y, u = _real(batches, "score").astype(np.float64), _real(batches, "label"), _real(batches, "user")
  assert out["num_examples"] == 5 * B - 2
  assert out["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
  assert out["logloss"] == pytest.approx(log_loss(y, np.clip(1 / (1 + np.exp(-s)), 1e-7, 1 - 1e-7)), rel=1e-9)
  num = den = 0.0
  for user in np.unique(u):
    yu, su = y[u == user], s[u == user]
    if 0 < yu.sum() < len(yu):
      num, den = num + roc_auc_score(yu, su) * len(yu), den + len(yu)
  assert out["gauc"] == pytest.approx(num / den, abs=1e-12)
  assert set(out) == {"logloss", "auc", "gauc", "num_examples"}


def test_ctr_accepts_model_output_objects():
  rng = np.random.default_rng(1)
  batches = _ctr_batches(rng, num_batches=2)
  wrapped = lambda b: types.SimpleNamespace(logits=_ctr_predict(b), aux_loss=0.0)  # noqa: E731
  assert evaluate(wrapped, batches, task="ctr") == evaluate(_ctr_predict, batches, task="ctr")


def _next_batch(scores, targets, items=None, weight=None):
  return {
      "scores": np.asarray(scores, np.float32),
      "target_item": np.asarray(targets, np.int32),
      "items": np.zeros((B, S, T), np.int32) if items is None else np.asarray(items, np.int32),
      "weight": np.ones(B, np.float32) if weight is None else np.asarray(weight, np.float32),
  }


# Row scores over items 1..6 (column 0 is overwritten with -1e9 by the predictor).
_SCORES = [
    [9, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 1: best -> rank 1
    [9, 0.6, 0.5, 0.5, 0.3, 0.2, 0.1],  # target 3 ties with item 2: pessimistic rank 3, optimistic rank 2
    [9, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 6: worst -> rank 6
    [9, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # padding row (weight 0): target 0 must not be an error
]
_TARGETS = [1, 3, 6, 0]
_WEIGHT = [1, 1, 1, 0]
_ITEMS = [
    [[0, 0], [1, 0]],  # the target itself in the history: it stays a candidate
    [[2, 1], [1, 2]],  # items 1, 2 (each twice) ranked above the target are dropped -> rank 1
    [[4, 5], [2, 6]],  # 2, 4, 5 dropped -> rank 3
    [[1, 2], [3, 4]],
]


def _expected(ranks, ks=(5, 10, 20, 50)):
  r = np.asarray(ranks, np.float64)
  out = {f"hr@{k}": float(np.mean(r <= k)) for k in ks}
  out.update({f"ndcg@{k}": float(np.mean(np.where(r <= k, 1 / np.log2(r + 1), 0))) for k in ks})
  out["mrr"] = float(np.mean(1 / r))
  out.update({f"mrr@{k}": float(np.mean(np.where(r <= k, 1 / r, 0))) for k in ks})
  out["num_examples"] = len(r)
  return out


@pytest.mark.parametrize("exclude_history, ties, ranks", [
    (False, "pessimistic", [1, 3, 6]),
    (False, "optimistic", [1, 2, 6]),
    (True, "pessimistic", [1, 1, 3]),
])
def test_next_item_hand_made_ranks(exclude_history, ties, ranks):
  batch = _next_batch(_SCORES, _TARGETS, _ITEMS, _WEIGHT)
  out = evaluate(_next_predict, [batch], task="next", exclude_history=exclude_history, ties=ties, ks=(1, 2, 5))
  expected = _expected(ranks, ks=(1, 2, 5))
  assert out.keys() == expected.keys()
  for key, value in expected.items():
    assert out[key] == pytest.approx(value, abs=1e-12), key
  if (exclude_history, ties) == (False, "pessimistic"):  # spelled out once
    assert out["hr@1"] == 1 / 3 and out["hr@5"] == 2 / 3
    assert out["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 3, abs=1e-15)
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 6) / 3, abs=1e-15)


def test_device_ranks_match_numpy_reference_on_random_ties_and_histories():
  rng = np.random.default_rng(5)
  for _ in range(3):
    scores = rng.integers(0, 3, (B, V)).astype(np.float32)  # heavy ties
    targets = rng.integers(1, V, B)
    items = rng.integers(0, V, (B, S, T))
    exclude = np.zeros((B, V), bool)
    exclude[np.arange(B)[:, None], items.reshape(B, -1)] = True
    for ex, ties in ((False, "pessimistic"), (True, "pessimistic"), (False, "optimistic")):
      rank, has_nan = target_ranks(jnp.asarray(scores), jnp.asarray(targets, jnp.int32),
                                   jnp.asarray(items, jnp.int32), exclude_history=ex, ties=ties)
      want = metrics.ranks_from_scores(scores, targets, exclude=exclude if ex else None, ties=ties)
      np.testing.assert_array_equal(np.asarray(rank), want)
      assert not np.asarray(has_nan).any()


def test_next_item_padding_rows_ignored_across_batches():
  rng = np.random.default_rng(6)
  real = _next_batch(rng.normal(size=(B, V)), rng.integers(1, V, B))
  padded = _next_batch(rng.normal(size=(B, V)), rng.integers(1, V, B), weight=[1, 0, 0, 0])
  padded["scores"][1:] = np.nan  # garbage in padding rows must not matter
  padded["target_item"][1:] = 0
  out = evaluate(_next_predict, [real, padded], task="next")
  ranks = np.concatenate([
      metrics.ranks_from_scores(real["scores"][:, :], real["target_item"]),
      metrics.ranks_from_scores(padded["scores"][:1], padded["target_item"][:1]),
  ])
  assert out == pytest.approx(_expected(ranks), abs=1e-12)


def test_bfloat16_logits_rank_like_float32():
  batch = _next_batch(_SCORES, _TARGETS, _ITEMS, _WEIGHT)
  bf16 = lambda b: _next_predict(b).astype(jnp.bfloat16)  # noqa: E731
  assert evaluate(bf16, [batch], task="next") == evaluate(_next_predict, [batch], task="next")


# --- per-row outputs --------------------------------------------------------------------------------------------


def test_ctr_predict_rows_are_the_real_rows_logits_in_order():
  rng = np.random.default_rng(8)
  batches = _ctr_batches(rng, num_batches=3)  # the last batch's 2 padding rows carry NaN scores
  rows = predict_rows(_ctr_predict, batches, task="ctr")
  np.testing.assert_array_equal(rows, _real(batches, "score").astype(np.float64))
  assert rows.dtype == np.float64
  want = row_metrics(rows, task="ctr", label=_real(batches, "label"), user=_real(batches, "user"))
  assert evaluate(_ctr_predict, batches, task="ctr") == want


def test_next_predict_rows_are_the_real_rows_ranks_in_order():
  rng = np.random.default_rng(9)
  real = _next_batch(rng.normal(size=(B, V)), rng.integers(1, V, B))
  padded = _next_batch(_SCORES, _TARGETS, _ITEMS, _WEIGHT)  # row 3 is padding with target 0
  for ex, ranks_last in ((False, [1, 3, 6]), (True, [1, 1, 3])):
    rows = predict_rows(_next_predict, [real, padded], task="next", exclude_history=ex)
    exclude = np.zeros((B, V), bool)
    exclude[np.arange(B)[:, None], real["items"].reshape(B, -1)] = True
    exclude[:, 0] = False
    first = metrics.ranks_from_scores(_next_predict(real), real["target_item"], exclude=exclude if ex else None)
    np.testing.assert_array_equal(rows, np.concatenate([first, ranks_last]))
    assert rows.dtype == np.int64
    assert evaluate(_next_predict, [real, padded], task="next", exclude_history=ex) == row_metrics(rows, task="next")


def test_predict_rows_align_with_the_rows_of_a_padded_split():
  n = 10  # batches of 4: the last one has 2 real rows and 2 padding rows (copies of row 0, weight 0)
  rng = np.random.default_rng(10)
  arrays = {"score": rng.normal(size=n).astype(np.float32), "label": rng.integers(0, 2, n).astype(np.float32),
            "user": rng.integers(0, 3, n).astype(np.int32), "weight": np.ones(n, np.float32)}
  batches = make_iterator(arrays, batch_size=B, seed=0, shuffle=False, drop_remainder=False, pad_to_full=True,
                          num_epochs=1)
  np.testing.assert_array_equal(predict_rows(_ctr_predict, batches, task="ctr"), arrays["score"])


def test_row_metrics_without_logloss_and_bad_options():
  y, s, u = np.array([0., 1, 1, 0]), np.array([0.1, 0.4, 0.35, 0.8]), np.array([1, 1, 2, 2])
  out = row_metrics(s, task="ctr", label=y, user=u, with_logloss=False)
  assert out == {"auc": 0.5, "gauc": 0.5, "num_examples": 4}
  with pytest.raises(ValueError, match="needs label and user"):
    row_metrics(s, task="ctr", label=y)
  with pytest.raises(ValueError, match="task: expected one of"):
    predict_rows(_ctr_predict, [], task="rank")
  with pytest.raises(ValueError, match="ties: expected one of"):
    predict_rows(_next_predict, [], task="next", ties="average")


def test_ctr_intervals_keys_values_and_eval_table():
  import json  # noqa: PLC0415

  from mos_jax.cli import eval as eval_cli  # noqa: PLC0415
  from mos_jax.evaluation.evaluate import ctr_intervals  # noqa: PLC0415

  rng = np.random.default_rng(0)
  u = np.repeat(np.arange(50), 4).astype(np.int32)
  y = np.tile([1.0, 0, 1, 0], 50)
  s = rng.normal(size=200) + y
  out = ctr_intervals(s, label=y, user=u, num_samples=300, seed=2)
  assert list(out) == ["auc_se", "auc_ci95", "auc_se_users", "auc_ci95_users", "gauc_se", "gauc_ci95",
                       "bootstrap_samples"]
  assert (out["auc_se"], *out["auc_ci95"]) == metrics.bootstrap_auc(y, s, num_samples=300, seed=2)
  assert (out["auc_se_users"], *out["auc_ci95_users"]) == metrics.bootstrap_auc(y, s, groups=u, num_samples=300,
                                                                                seed=2)
  assert (out["gauc_se"], *out["gauc_ci95"]) == metrics.bootstrap_gauc(y, s, u, num_samples=300, seed=2)
  assert out["bootstrap_samples"] == 300 and json.loads(json.dumps(out)) == out  # JSON as written by eval.py
  a = metrics.auc(y, s)
  assert 0 < out["auc_se"] < 0.1 and out["auc_ci95"][0] < a < out["auc_ci95"][1]
  table = eval_cli.format_table({"auc": a, **out}, "title")
  row = next(line for line in table.splitlines() if line.startswith("auc_ci95 "))
  assert row.endswith(f"| [{out['auc_ci95'][0]:.4f}, {out['auc_ci95'][1]:.4f}]")
  assert eval_cli.main(["--workdir=/nonexistent", "--bootstrap=1"]) == 2  # checked before anything is loaded


# --- bad inputs ------------------------------------------------------------------------------------------------


def _with(batch, **changes):
  return {**batch, **changes}


def test_bad_inputs_give_clear_errors():
  rng = np.random.default_rng(7)
  ctr = _ctr_batches(rng, num_batches=1, pad_last=0)[0]
  nxt = _next_batch(_SCORES, _TARGETS, _ITEMS, _WEIGHT)
  cases = [
      (lambda: evaluate(_ctr_predict, [ctr], task="rank"), "task: expected one of"),
      (lambda: evaluate(_ctr_predict, [], task="ctr"), "no batches"),
      (lambda: evaluate(_next_predict, [], task="next"), "no batches"),
      (lambda: evaluate(_ctr_predict, [_with(ctr, weight=np.zeros(B, np.float32))], task="ctr"),
       "every row had weight 0"),
      (lambda: evaluate(_next_predict, [_with(nxt, weight=np.zeros(B, np.float32))], task="next"),
       "every row had weight 0"),
      (lambda: evaluate(_ctr_predict, [{k: v for k, v in ctr.items() if k != "weight"}], task="ctr"),
       "batch 0: missing key 'weight'"),
      (lambda: evaluate(_ctr_predict, [ctr, _with(ctr, weight=np.full(B, 0.5, np.float32))], task="ctr"),
       "batch 1: 'weight' must be 1 .* or 0"),
      (lambda: evaluate(_ctr_predict, [_with(ctr, label=np.full(B, 2, np.float32))], task="ctr"),
       r"labels: expected values in \{0, 1\}"),
      (lambda: evaluate(_ctr_predict, [_with(ctr, user=np.zeros(B - 1, np.int32))], task="ctr"),
       "batch 0: 'user' has shape"),
      (lambda: evaluate(_ctr_predict, [_with(ctr, score=np.full(B, np.nan, np.float32))], task="ctr"),
       "batch 0: predict_fn returned NaN logits for 4 real row"),
      (lambda: evaluate(_next_predict, [nxt], task="ctr"), r"task='ctr' expects logits of shape \[B\]"),
      (lambda: evaluate(_ctr_predict, [ctr], task="next"), r"task='next' expects logits of shape \[B, num_items"),
      (lambda: evaluate(_next_predict, [_with(nxt, target_item=np.array([1, 7, 1, 1], np.int32))], task="next"),
       r"'target_item' must be in 1..6"),
      (lambda: evaluate(_next_predict, [_with(nxt, target_item=np.array([0, 1, 1, 1], np.int32))], task="next"),
       r"'target_item' must be in 1..6"),
      (lambda: evaluate(_next_predict, [{k: v for k, v in nxt.items() if k != "items"}], task="next",
                        exclude_history=True), "exclude_history=True needs key 'items'"),
      (lambda: evaluate(_next_predict, [_with(nxt, scores=np.full((B, V), np.nan, np.float32))], task="next"),
       "batch 0: predict_fn returned NaN scores in 3 real row"),
      (lambda: evaluate(_next_predict, [nxt], task="next", ks=(0,)), "ks"),
      (lambda: evaluate(_next_predict, [nxt], task="next", ties="average"), "ties: expected one of"),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match=message):
      call()
