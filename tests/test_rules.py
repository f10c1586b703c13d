"""Rule baselines: exact CTR scores, next-item ranks against a brute-force full ranking, and the shortcut checks
that the negative kinds are built for (synthetic matched, Taobao uniform vs history_matched)."""

import json

import numpy as np
import pytest

from mos_jax.data import DataConfig, SyntheticConfig, load_prepared, prepare_dataset
from mos_jax.data.synthetic import rule_scores
from mos_jax.evaluation import metrics, rules

SMALL = SyntheticConfig(num_users=300, num_themes=4, items_per_theme=20, cats_per_theme=2, sessions_per_user=(8, 14))


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
  d = tmp_path_factory.mktemp("rules")
  return load_prepared(prepare_dataset(DataConfig(cache_dir=str(d), num_sessions=5, session_len=4, synthetic=SMALL)))


class _Fake:
  """The two attributes rules read, for hand-made arrays."""

  def __init__(self, counts, item_cat):
    self.meta = {"dataset": "csv"}
    self.events = {"item_counts": np.asarray(counts), "item_cat": np.asarray(item_cat)}


def test_ctr_scores_exact():
  # items 1..6, categories: 1,2 -> cat 1; 3,4 -> cat 2; 5 -> cat 0 (unknown); 6 -> cat 3
  ds = _Fake(counts=[0, 5, 1, 0, 2, 7, 3], item_cat=[0, 1, 1, 2, 2, 0, 3])
  items = np.array([[[1, 2, 0], [3, 1, 0]],  # sessions oldest first; target 1 last seen with 0 events after it
                    [[1, 0, 0], [3, 4, 5]],  # target 1 seen, 3 events after it; 2 shares its category
                    [[0, 0, 0], [5, 5, 0]],  # target 5 (unknown category) in the last session
                    [[0, 0, 0], [0, 0, 0]]])  # empty history
  a = {"items": items, "target_item": np.array([1, 2, 5, 6]), "label": np.ones(4), "user": np.arange(4)}
  out = rules.rule_outputs(ds, "test", "ctr", a)
  assert list(out) == list(rules.RULE_NAMES) + [f"inv_{n}" for n in rules.RULE_NAMES]
  for n in rules.RULE_NAMES:
    np.testing.assert_array_equal(out[f"inv_{n}"], -out[n])
  np.testing.assert_array_equal(out["popularity"], [5, 1, 7, 3])
  np.testing.assert_array_equal(out["in_history"], [1, 0, 1, 0])
  np.testing.assert_array_equal(out["in_last_session"], [1, 0, 1, 0])
  np.testing.assert_array_equal(out["category_in_history"], [3, 1, 0, 0])
  np.testing.assert_allclose(out["recency"], [1.0, 0.0, 1.0, 0.0])
  a["target_item"] = np.array([2, 1, 3, 6])
  out = rules.rule_outputs(ds, "test", "ctr", a)
  np.testing.assert_allclose(out["recency"], [1 / 3, 1 / 4, 0.0, 0.0])
  assert all(v.dtype == np.float64 for v in out.values())


class _FakeSynthetic(_Fake):
  """Two generator themes of three items: theme 0 = items 1-3 with chain 3 -> 1 -> 2 -> 3, theme 1 = items 4-6 with
  chain 4 -> 5 -> 6 -> 4. Train counts 5, 1, 0, 2, 6, 3, so the tie order (count desc, id asc) is 5, 1, 6, 4, 2, 3."""

  def __init__(self):
    super().__init__(counts=[0, 5, 1, 0, 2, 6, 3], item_cat=[0, 1, 1, 2, 2, 3, 3])
    self.meta = {"dataset": "synthetic"}
    self.events.update(item_theme=np.array([-1, 0, 0, 0, 1, 1, 1]), chain=np.array([[3, 1, 2], [4, 5, 6]]))


def _oracle_rows():
  # S = 2, T = 3, L = 6. Row A: theme 0 three times (last: 3, successor 1), theme 1 once (last: 4, successor 5).
  # Row B: theme 1 twice (last: 6, successor 4). Row C: empty history.
  a_hist, b_hist, c_hist = [[1, 2, 0], [4, 3, 0]], [[0, 0, 0], [6, 6, 0]], [[0, 0, 0], [0, 0, 0]]
  items = np.array([a_hist, a_hist, b_hist, b_hist, c_hist])
  return {"items": items, "target_item": np.array([1, 2, 4, 6, 4]), "label": np.ones(5), "user": np.arange(5)}


def test_theme_count_oracle_rules_ctr_exact():
  ds = _FakeSynthetic()
  out = rules.rule_outputs(ds, "test", "ctr", _oracle_rows())
  assert list(out) == list(rules.RULE_NAMES) + [f"inv_{n}" for n in rules.RULE_NAMES] + list(rules.SYNTHETIC_RULES)
  np.testing.assert_array_equal(out["theme_count"], [3, 3, 2, 2, 0])
  np.testing.assert_allclose(out["theme_count_popularity"],
                             [3 * np.log(6), 3 * np.log(2), 2 * np.log(3), 2 * np.log(4), 0.0], rtol=1e-12)
  # theme count + (L + 1) * [target is the chain successor of the last history item of its theme], L = 6
  np.testing.assert_array_equal(out["theme_count_successor"], [3 + 7, 3, 2 + 7, 2, 0])
  np.testing.assert_array_equal(out["generator"], [1.5, 0.5, 1.5, 0.5, 0.0])
  assert all(out[n].dtype == np.float64 for n in rules.SYNTHETIC_RULES)
  # A padding row (target 0, weight 0) scores 0 under every theme rule.
  pad = {k: v[-1:] for k, v in _oracle_rows().items()}
  pad["target_item"] = np.array([0])
  out = rules.rule_outputs(ds, "test", "ctr", pad)
  assert [float(out[n][0]) for n in rules.SYNTHETIC_RULES[1:]] == [0.0, 0.0, 0.0]


def test_theme_count_oracle_rules_next_exact():
  # Ranks among items 1-6, ties broken by the order 5, 1, 6, 4, 2, 3 (worked out by hand from the scores above).
  out = rules.rule_outputs(_FakeSynthetic(), "test", "next", _oracle_rows())
  assert list(out) == list(rules.RULE_NAMES) + list(rules.SYNTHETIC_RULES)
  np.testing.assert_array_equal(out["theme_count"], [1, 2, 3, 2, 4])
  np.testing.assert_array_equal(out["theme_count_popularity"], [1, 2, 3, 2, 4])
  np.testing.assert_array_equal(out["theme_count_successor"], [1, 3, 1, 3, 4])
  np.testing.assert_array_equal(out["generator"], [2, 5, 1, 3, 4])


def test_synthetic_rules_are_oracles():
  assert set(rules.SYNTHETIC_RULES) == {"generator", "theme_count", "theme_count_popularity", "theme_count_successor"}
  assert set(rules.ORACLE_RULES) >= set(rules.SYNTHETIC_RULES)
  assert not set(rules.ORACLE_RULES) & set(rules.RULE_NAMES)
  assert rules.rule_names(_FakeSynthetic()) == rules.RULE_NAMES + rules.SYNTHETIC_RULES
  assert rules.rule_names(_Fake([0, 1], [0, 1])) == rules.RULE_NAMES


def _brute_ranks(ds, a):
  """Dense scores of every item 1..M per rule, ranked with ties broken by (count desc, id asc)."""
  ev = ds.events
  counts, item_cat, item_theme = ev["item_counts"], ev["item_cat"], ev["item_theme"]
  m = len(counts) - 1
  order = sorted(range(1, m + 1), key=lambda i: (-counts[i], i))
  tb = np.zeros(m + 1, int)
  tb[order] = np.arange(m)
  succ = {int(c[j]): int(c[(j + 1) % len(c)]) for c in ev["chain"] for j in range(len(c))}
  lpop = np.log1p(np.asarray(counts, np.float64))  # the rule's own log values (no last-bit dependence on the libm)
  slots = a["items"][0].size
  out = {k: [] for k in rules.rule_names(ds)}
  for items, t in zip(a["items"], a["target_item"]):
    flat = [int(x) for x in items.ravel() if x > 0]
    last = [int(x) for x in items[-1] if x > 0]
    rec = {x: 1 / (len(flat) - p) for p, x in enumerate(flat)}  # the last occurrence wins
    themes = {int(item_theme[x]) for x in flat}
    last_in = {int(item_theme[x]): x for x in flat}
    n_theme = {i: sum(int(item_theme[x] == item_theme[i]) for x in flat) for i in range(1, m + 1)}
    is_succ = {i: float(item_theme[i] in last_in and succ[last_in[item_theme[i]]] == i) for i in range(1, m + 1)}
    scores = {
        "popularity": {i: counts[i] for i in range(1, m + 1)},
        "in_history": {i: float(i in flat) for i in range(1, m + 1)},
        "in_last_session": {i: float(i in last) for i in range(1, m + 1)},
        "category_in_history": {i: sum(item_cat[x] == item_cat[i] > 0 for x in flat) for i in range(1, m + 1)},
        "recency": {i: rec.get(i, 0.0) for i in range(1, m + 1)},
        "generator": {i: 0.5 * (item_theme[i] in themes) + (succ[last_in[item_theme[i]]] == i
                                                          if item_theme[i] in last_in else 0)
                      for i in range(1, m + 1)},
        "theme_count": n_theme,
        "theme_count_popularity": {i: n_theme[i] * lpop[i] for i in range(1, m + 1)},
        "theme_count_successor": {i: n_theme[i] + (slots + 1) * is_succ[i] for i in range(1, m + 1)}}
    for name, s in scores.items():
      st = s[int(t)]
      out[name].append(1 + sum(1 for i in range(1, m + 1) if i != t and (s[i] > st or (s[i] == st and tb[i] < tb[t]))))
  return {k: np.array(v) for k, v in out.items()}


def test_next_ranks_equal_a_brute_force_full_ranking(syn):
  a = syn.split("test", "next")
  a = {k: v[:60] for k, v in a.items()}
  got = rules.rule_outputs(syn, "test", "next", a)
  want = _brute_ranks(syn, a)
  assert list(got) == list(rules.RULE_NAMES) + list(rules.SYNTHETIC_RULES)
  for name in got:
    assert got[name].dtype == np.int64
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_ctr_generator_is_theme_recall_and_metrics_match(syn):
  a = syn.split("valid", "ctr")
  out = rules.rule_outputs(syn, "valid", "ctr", a)
  np.testing.assert_array_equal(out["generator"], rule_scores(a, syn.events["item_theme"], syn.events["chain"])
                                ["theme_recall"])
  res = rules.evaluate_rules(syn, "valid", "ctr", a)
  assert res["inv_in_history"]["auc"] == pytest.approx(1 - res["in_history"]["auc"])
  assert res["inv_in_history"]["gauc"] == pytest.approx(1 - res["in_history"]["gauc"])
  assert res["in_history"] == {"auc": metrics.auc(a["label"], out["in_history"]),
                               "gauc": metrics.gauc(a["label"], out["in_history"], a["user"]),
                               "num_examples": len(a["label"])}
  nxt = rules.evaluate_rules(syn, "valid", "next")
  assert set(nxt["recency"]) == {*(f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (5, 10, 20, 50)), "mrr",
                                 "num_examples"}


def test_matched_negatives_leave_only_the_generator_rule(syn):
  assert syn.meta["negatives"] == "matched"
  for split in ("valid", "test"):
    res = rules.evaluate_rules(syn, split, "ctr")
    assert res["generator"]["auc"] > 0.85  # 0.97 with the default S=12, T=8 (docs/data.md); S=5, T=4 here
    for name in rules.RULE_NAMES:
      assert 0.42 < res[name]["auc"] < 0.58, (split, name, res[name])
    a = syn.split(split, "ctr")
    member = rule_scores(a, syn.events["item_theme"], syn.events["chain"])["theme_member"]
    assert metrics.auc(a["label"], member) == 0.5  # always the positive's theme


def test_cli_prints_and_writes_json(syn, tmp_path, capsys):
  out = tmp_path / "r" / "rules.json"
  assert rules.main(["--data-dir", str(syn.path), "--split", "test", "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "| generator |" in printed and "| rule | auc | gauc |" in printed
  saved = json.loads(out.read_text())
  assert saved["split"] == "test" and set(saved["rules"]) == set(rules.RULE_NAMES) | set(rules.SYNTHETIC_RULES) | {
      f"inv_{n}" for n in rules.RULE_NAMES}
  assert rules.main(["--data-dir", str(tmp_path), "--split", "test"]) == 2


def test_taobao_in_history_shortcut_and_history_matched(shared_data, tmp_path):
  src = shared_data / "taobao-userbehavior-head"
  if not src.is_dir():
    pytest.skip("taobao head not found")
  base = DataConfig(dataset="taobao", data_dir=str(src), cache_dir=str(tmp_path), num_sessions=16, session_len=8)
  uni = load_prepared(prepare_dataset(base))
  assert uni.meta["negatives"] == "uniform"
  assert 0.6 < rules.evaluate_rules(uni, "test", "ctr")["in_history"]["auc"] < 0.67
  hm = load_prepared(prepare_dataset(DataConfig(**{**base.__dict__, "negatives": "history_matched"})))
  res = rules.evaluate_rules(hm, "test", "ctr")
  assert 0.45 < res["in_history"]["auc"] < 0.55
