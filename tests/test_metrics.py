"""Metric functions against sklearn, hand-written reference loops and hand-made cases."""

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from mos_jax.evaluation import metrics


def _gauc_reference(y, s, u):
  """FuxiCTR's gAUC written out: per-user roc_auc_score weighted by the user's sample count."""
  num, den = 0.0, 0.0
  for user in np.unique(u):
    yu, su = y[u == user], s[u == user]
    if 0 < yu.sum() < len(yu):
      num += roc_auc_score(yu, su) * len(yu)
      den += len(yu)
  return num / den


# --- AUC -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_auc_matches_sklearn_on_random_cases(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(2, 400))
  y = rng.integers(0, 2, n)
  y[:2] = [0, 1]  # both classes present
  continuous = rng.normal(size=n) + y
  tied = rng.integers(0, 4, n).astype(np.float32)  # many ties: each tied pos/neg pair counts 1/2
  for s in (continuous, tied):
    assert metrics.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_hand_made_and_invariant_to_monotone_transform():
  y = np.array([0, 0, 1, 1])
  s = np.array([0.1, 0.4, 0.35, 0.8])  # pairs: (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
  assert metrics.auc(y, s) == 0.75
  assert metrics.auc(y, np.log(s / (1 - s))) == 0.75  # logits give the same AUC as probabilities
  assert metrics.auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied


def test_auc_single_class_is_nan():
  assert math.isnan(metrics.auc([1, 1, 1], [0.1, 0.2, 0.3]))


# --- logloss ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_logloss_matches_sklearn_with_fuxictr_clipping(seed):
  rng = np.random.default_rng(100 + seed)
  n = int(rng.integers(1, 300))
  y = rng.integers(0, 2, n)
  p = rng.random(n)
  p[: n // 5] = rng.choice([0.0, 1.0, 1e-9, 1 - 1e-9], n // 5)  # values the 1e-7 clipping changes
  expected = log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])
  assert metrics.logloss(y, p) == pytest.approx(expected, rel=1e-12)


def test_logloss_hand_made_and_clip():
  assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2, rel=1e-12)
  # A confident wrong prediction costs -log(eps), not infinity.
  assert metrics.logloss([1], [0.0]) == pytest.approx(-math.log(1e-7), rel=1e-9)
  assert metrics.logloss([1], [0.0], eps=1e-3) == pytest.approx(-math.log(1e-3), rel=1e-9)


def test_sigmoid_is_stable_and_exact():
  z = np.array([-1000.0, -2.0, 0.0, 3.0, 1000.0])
  with np.errstate(over="raise", divide="raise", invalid="raise"):  # no overflow in exp
    p = metrics.sigmoid(z)
  np.testing.assert_allclose(p, [0.0, 1 / (1 + math.e**2), 0.5, 1 / (1 + math.e**-3), 1.0], rtol=1e-15, atol=0)


# --- GAUC ------------------------------------------------------------------------------------------------------


def test_gauc_hand_made():
  # user 7: AUC 1 over 3 samples; user 2: AUC 0 over 2 samples; user 5: only positives -> skipped.
  y = np.array([1, 0, 1, 0, 1, 1, 1])
  s = np.array([0.9, 0.1, 0.3, 0.8, 0.2, 0.5, 0.6])
  u = np.array([7, 7, 7, 2, 2, 5, 5])
  assert metrics.gauc(y, s, u) == pytest.approx((1.0 * 3 + 0.0 * 2) / 5, abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_gauc_matches_reference_loop(seed):
  rng = np.random.default_rng(200 + seed)
  n = int(rng.integers(20, 500))
  u = rng.integers(-3, 25, n)  # arbitrary (even negative) ids, unsorted, some users with one class
  y = rng.integers(0, 2, n)
  s = np.round(rng.normal(size=n), 1)  # rounded: ties inside users
  assert metrics.gauc(y, s, u) == pytest.approx(_gauc_reference(y, s, u), abs=1e-12)


def test_gauc_one_user_equals_auc_and_no_valid_user_is_nan():
  rng = np.random.default_rng(3)
  y, s = rng.integers(0, 2, 50), rng.normal(size=50)
  assert metrics.gauc(y, s, np.zeros(50, np.int64)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
  assert math.isnan(metrics.gauc([1, 0], [0.3, 0.1], [0, 1]))


# --- ranking ---------------------------------------------------------------------------------------------------


def test_ranks_from_scores_tie_rules_padding_and_exclusion():
  # Column 0 is padding: its huge score never counts. Target 1 (0.5) ties with item 3, loses to item 2.
  scores = np.array([[100.0, 0.5, 0.9, 0.5, 0.1],
                     [100.0, 0.5, 0.9, 0.5, 0.1]])
  targets = np.array([1, 4])
  np.testing.assert_array_equal(metrics.ranks_from_scores(scores, targets), [3, 4])
  np.testing.assert_array_equal(metrics.ranks_from_scores(scores, targets, ties="optimistic"), [2, 4])
  exclude = np.zeros_like(scores, bool)
  exclude[0, 2] = True  # drop item 2 for row 0
  exclude[1, 4] = True  # excluding the target itself has no effect
  np.testing.assert_array_equal(metrics.ranks_from_scores(scores, targets, exclude=exclude), [2, 4])
  # All scores equal: pessimistic puts the target last, optimistic first.
  flat = np.zeros((1, 6))
  assert metrics.ranks_from_scores(flat, [3])[0] == 5
  assert metrics.ranks_from_scores(flat, [3], ties="optimistic")[0] == 1


def test_ranking_metrics_exact_values():
  ranks = np.array([1, 2, 3, 10, 60])
  out = metrics.ranking_metrics(ranks, ks=(1, 3, 10, 50))
  assert out["hr@1"] == 1 / 5
  assert out["hr@3"] == 3 / 5
  assert out["hr@10"] == 4 / 5
  assert out["hr@50"] == 4 / 5
  assert out["ndcg@1"] == pytest.approx(1 / 5, abs=1e-15)
  assert out["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 5, abs=1e-15)
  ndcg10 = (1 + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(11)) / 5
  assert out["ndcg@10"] == pytest.approx(ndcg10, abs=1e-15)
  assert out["ndcg@50"] == pytest.approx(ndcg10, abs=1e-15)
  assert out["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 10 + 1 / 60) / 5, abs=1e-15)  # no cutoff
  assert out["mrr@3"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 5, abs=1e-15)  # RecBole's MRR@K: 0 beyond K
  assert out["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 10) / 5, abs=1e-15)
  assert out["mrr@1"] == 1 / 5 and out["mrr@50"] == out["mrr@10"]
  assert set(out) == {"hr@1", "hr@3", "hr@10", "hr@50", "ndcg@1", "ndcg@3", "ndcg@10", "ndcg@50", "mrr",
                      "mrr@1", "mrr@3", "mrr@10", "mrr@50"}


def test_ranking_metrics_match_recbole_style_topk_loop():
  """HR/NDCG from ranks equal the definition on an explicit sorted top-K list (distinct scores)."""
  rng = np.random.default_rng(9)
  scores = rng.normal(size=(30, 41))
  targets = rng.integers(1, 41, 30)
  out = metrics.ranking_metrics(metrics.ranks_from_scores(scores, targets), ks=(5, 10))
  for k in (5, 10):
    hits, dcg = [], []
    for row, t in zip(scores, targets):
      top = [j for j in np.argsort(-row) if j != 0][:k]
      hits.append(t in top)
      dcg.append(1 / math.log2(top.index(t) + 2) if t in top else 0.0)
    assert out[f"hr@{k}"] == pytest.approx(np.mean(hits), abs=1e-15)
    assert out[f"ndcg@{k}"] == pytest.approx(np.mean(dcg), abs=1e-12)


# --- bootstrap intervals ---------------------------------------------------------------------------------------


def _hanley_mcneil_se(a, n_pos, n_neg):
  q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
  return math.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg))


def test_bootstrap_auc_perfect_and_constant_rankings_have_no_spread():
  y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
  users = np.array([1, 1, 2, 2, 3, 3, 4, 4])
  for groups in (None, users):
    assert metrics.bootstrap_auc(y, 2.0 * y - 1, groups=groups, num_samples=200) == (0.0, 1.0, 1.0)
    assert metrics.bootstrap_auc(y, np.zeros(8), groups=groups, num_samples=200) == (0.0, 0.5, 0.5)
  assert metrics.bootstrap_gauc(y, 2.0 * y, users, num_samples=200) == (0.0, 1.0, 1.0)
  for out in (metrics.bootstrap_auc(np.ones(4), [0.1, 0.2, 0.3, 0.4]),  # undefined AUC / GAUC: NaNs
              metrics.bootstrap_gauc([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [1, 2, 1, 2])):
    assert all(math.isnan(x) for x in out)


def test_bootstrap_auc_replicates_take_exactly_the_resampled_values():
  # rows: negative at score 1, positives at 1 (tied) and 2. A resample with counts (c0, c1, c2), c0 >= 1 and
  # c1 + c2 >= 1, has AUC (c1 / 2 + c2) / (c1 + c2): 0.5, 0.75 (counts 1, 1, 1: probability 6/27) or 1; it is NaN
  # when c0 is 0 or 3 (probability 9/27).
  reps = metrics.auc_replicates([0, 1, 1], [1.0, 1.0, 2.0], num_samples=6000, seed=0)
  finite = reps[np.isfinite(reps)]
  assert set(np.unique(finite).tolist()) == {0.5, 0.75, 1.0}
  assert abs(np.mean(np.isnan(reps)) - 9 / 27) < 0.02 and abs(np.mean(reps == 0.75) - 6 / 27) < 0.02
  # groups: two users, so a resample is user A twice, B twice, or both once; both once gives the plain AUC.
  y = np.array([0, 1, 1, 0, 0, 1, 0, 1])
  s = np.array([3, 1, 4, 1, 5, 9, 2, 6], float)
  g = np.array([7, 7, 7, 7, 9, 9, 9, 9])
  reps = metrics.auc_replicates(y, s, groups=g, num_samples=4000, seed=1)
  want = [metrics.auc(y[g == 7], s[g == 7]), metrics.auc(y, s), metrics.auc(y[g == 9], s[g == 9])]
  assert np.isclose(reps[:, None], want, atol=1e-12).any(1).all()
  share = [np.isclose(reps, w, atol=1e-12).mean() for w in want]
  np.testing.assert_allclose(share, [0.25, 0.5, 0.25], atol=0.03)


def test_bootstrap_auc_is_seeded_and_matches_hanley_mcneil():
  rng = np.random.default_rng(0)
  y = (rng.random(4000) < 0.4).astype(int)
  s = rng.normal(size=4000) + 1.2 * y
  se, lo, hi = metrics.bootstrap_auc(y, s, num_samples=800, seed=3)
  assert (se, lo, hi) == metrics.bootstrap_auc(y, s, num_samples=800, seed=3)
  assert metrics.bootstrap_auc(y, s, num_samples=800, seed=4) != (se, lo, hi)
  a = metrics.auc(y, s)
  want = _hanley_mcneil_se(a, int(y.sum()), int((1 - y).sum()))
  assert abs(se / want - 1) < 0.15, (se, want)
  assert lo < a < hi and abs((hi - lo) / (2 * 1.96 * se) - 1) < 0.15  # near-normal here
  # one row per group: the cluster bootstrap is the row bootstrap (another stream, the same distribution)
  se_g, _, _ = metrics.bootstrap_auc(y, s, groups=np.arange(4000) * 3, num_samples=800, seed=3)
  assert abs(se_g / want - 1) < 0.15
  # groups of 10 rows whose separation varies by group (correlated rows): the cluster bootstrap sees the wider
  # spread (measured ratio 1.96)
  g = np.repeat(np.arange(400), 10)
  s_corr = s + 2.0 * y * rng.normal(size=400)[g]
  se_rows, _, _ = metrics.bootstrap_auc(y, s_corr, num_samples=400, seed=0)
  se_users, _, _ = metrics.bootstrap_auc(y, s_corr, groups=g, num_samples=400, seed=0)
  assert se_users > 1.4 * se_rows


def test_bootstrap_gauc_resamples_users():
  # users 1 (AUC 1) and 2 (AUC 0), 4 rows each; user 3 has one class (skipped, but still drawn): a resample's GAUC is
  # the share of user-1 draws among the user-1 and user-2 draws
  y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 1, 1])
  s = np.array([0, 1, 0, 1, 1, 0, 1, 0, 5, 6], float)
  u = np.array([1, 1, 1, 1, 2, 2, 2, 2, 3, 3])
  assert metrics.gauc(y, s, u) == 0.5
  reps = metrics.gauc_replicates(y, s, u, num_samples=3000, seed=0)
  finite = reps[np.isfinite(reps)]
  assert np.isclose(finite[:, None], [0.0, 1 / 3, 0.5, 2 / 3, 1.0], atol=1e-12).any(1).all()
  assert abs(np.mean(np.isnan(reps)) - 1 / 27) < 0.015  # only user 3 drawn three times
  se, lo, hi = metrics.bootstrap_gauc(y, s, u, num_samples=3000, seed=0)
  assert se == pytest.approx(np.std(finite, ddof=1)) and (lo, hi) == (0.0, 1.0)
  assert metrics.bootstrap_gauc(y, s, u, num_samples=3000, seed=0) == (se, lo, hi)


def test_bootstrap_bad_inputs():
  y, s = [0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]
  with pytest.raises(ValueError, match="num_samples: expected an integer >= 2"):
    metrics.bootstrap_auc(y, s, num_samples=1)
  with pytest.raises(ValueError, match=r"level: expected a coverage in \(0, 1\)"):
    metrics.bootstrap_auc(y, s, level=95)
  with pytest.raises(ValueError, match="labels and groups differ in length"):
    metrics.bootstrap_auc(y, s, groups=[1, 2])
  with pytest.raises(ValueError, match="users: expected integer"):
    metrics.bootstrap_gauc(y, s, [0.5, 1.0, 1.0, 2.0])


# --- bad inputs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.auc([0, 1, 1], [0.1, 0.2]), "differ in length"),
    (lambda: metrics.auc([0, 2, 1], [0.1, 0.2, 0.3]), r"labels: expected values in \{0, 1\}, got 2 at index 1"),
    (lambda: metrics.auc([[0, 1]], [[0.1, 0.2]]), "expected a 1-D array"),
    (lambda: metrics.auc([], []), "empty"),
    (lambda: metrics.auc([0, 1], [0.1, np.nan]), "1 NaN value"),
    (lambda: metrics.logloss([0, 1], [0.1, 1.5]), r"probabilities in \[0, 1\], got 1.5 at index 1"),
    (lambda: metrics.logloss([0, 1], [0.1, 0.5], eps=0.0), "eps"),
    (lambda: metrics.gauc([0, 1], [0.1, 0.2], [0]), "labels and users differ in length"),
    (lambda: metrics.gauc([0, 1], [0.1, 0.2], [0.5, 1.0]), "integer user ids"),
    (lambda: metrics.ranking_metrics([1, 0, 3]), "ranks >= 1"),
    (lambda: metrics.ranking_metrics([1.0, 2.0]), "integer ranks"),
    (lambda: metrics.ranking_metrics([1, 2], ks=(0, 5)), "positive ints"),
    (lambda: metrics.ranking_metrics([1, 2], ks=()), "positive ints"),
    (lambda: metrics.ranks_from_scores(np.zeros((2, 5)), [1, 5]), r"item ids in 1..4"),
    (lambda: metrics.ranks_from_scores(np.zeros((2, 5)), [0, 1]), r"item ids in 1..4"),
    (lambda: metrics.ranks_from_scores(np.zeros((2, 5)), [1, 2, 3]), "targets: expected shape"),
    (lambda: metrics.ranks_from_scores(np.zeros(5), [1]), r"scores: expected \[B, num_items \+ 1\]"),
    (lambda: metrics.ranks_from_scores(np.zeros((1, 5)), [1], ties="random"), "ties"),
    (lambda: metrics.ranks_from_scores(np.zeros((1, 5)), [1], exclude=np.zeros((1, 4))), "exclude"),
])
def test_bad_inputs_give_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()
