"""The synthetic session-hopping generator: determinism, theme structure, and what its targets require."""

import dataclasses

import numpy as np
import pytest

from mos_jax.data import DataConfig, SyntheticConfig, load_prepared, prepare_dataset
from mos_jax.data.synthetic import auc, generate, rule_scores

SMALL = SyntheticConfig(num_users=150, num_themes=4, items_per_theme=12, cats_per_theme=2, sessions_per_user=(8, 12))


def test_deterministic_from_seed():
  a, _ = generate(SMALL)
  b, _ = generate(SMALL)
  c, _ = generate(dataclasses.replace(SMALL, seed=1))
  for f in ("user", "item", "time", "theme", "candidate"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
  assert not np.array_equal(a.item[:200], c.item[:200])


def test_themes_own_disjoint_items_and_categories():
  ev, facts = generate(SMALL)
  it = facts["item_theme"]
  np.testing.assert_array_equal(it[1:], np.repeat(np.arange(4), 12))
  assert np.all((ev.item_cat[1:] - 1) // SMALL.cats_per_theme == it[1:])  # category blocks follow theme blocks
  np.testing.assert_array_equal(np.sort(facts["chain"], 1), np.arange(1, 49).reshape(4, 12))


def test_targets_continue_the_users_chain_in_their_theme():
  ev, facts = generate(dataclasses.replace(SMALL, noise=0.0))
  chain = facts["chain"]
  succ = {int(c[j]): int(c[(j + 1) % len(c)]) for c in chain for j in range(len(c))}
  cand = np.flatnonzero(ev.candidate)
  assert len(cand) > 500
  for g in cand[:400]:
    prev = np.flatnonzero((ev.user[:g] == ev.user[g]) & (ev.theme[:g] == ev.theme[g]))
    assert len(prev) and succ[int(ev.item[prev[-1]])] == ev.item[g]
  hop = np.mean([ev.theme[g - 1] != ev.theme[g] for g in cand])
  assert hop > 0.8  # with repeat_prob=0.1 the previous session almost never has the target's theme


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  d = tmp_path_factory.mktemp("syn")
  cfg = DataConfig(cache_dir=str(d), num_sessions=6, session_len=4, synthetic=SMALL)
  return load_prepared(prepare_dataset(cfg))


def test_prepared_meta_and_session_themes(prepared):
  m = prepared.meta
  assert (m["num_users"], m["num_items"], m["num_cats"], m["num_themes"]) == (150, 48, 8, 4)
  assert (m["num_sessions"], m["session_len"]) == (6, 4)
  assert prepared.stats["session_theme_purity"] == 1.0  # the 30 min gap recovers the true sessions
  a = prepared.split("train", "next")
  th = a["session_theme"]
  assert ((th == -1) == (a["items"][:, :, 0] == 0)).all()  # -1 exactly on padding sessions
  it = prepared.events["item_theme"]
  # without noise every item's theme would equal its session's theme; with 5% noise nearly all do
  match = it[a["items"]][a["items"] > 0] == np.broadcast_to(th[:, :, None], a["items"].shape)[a["items"] > 0]
  assert 0.9 < match.mean() < 1.0


def test_theme_recall_is_needed_to_score_targets(prepared):
  a = prepared.split("test", "ctr")
  sc = rule_scores(a, prepared.events["item_theme"], prepared.events["chain"])
  aucs = {k: auc(a["label"], v) for k, v in sc.items()}
  assert aucs["theme_recall"] > 0.9
  assert aucs["last_session"] < 0.65 and aucs["theme_member"] < 0.8


def test_auc_matches_pairwise_definition():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 50).astype(np.float32)
  s = rng.integers(0, 5, 50).astype(np.float64)
  pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p in s[y == 1] for q in s[y == 0]]
  assert abs(auc(y, s) - np.mean(pairs)) < 1e-12


REAL = dataclasses.replace(SMALL, preset="realistic", num_users=200, num_themes=6, items_per_theme=20, cats_per_theme=3,
                           session_len=(1, 12), noise=0.1)


def _user_themes(ev):
  return [np.unique(ev.theme[ev.user == u]) for u in np.unique(ev.user)]


def test_realistic_preset_structure():
  """Every event a target; 2-5 interests per user; neighbouring themes share a category; a popular head per theme;
  session lengths within the clip; noise items come from other themes; deterministic."""
  ev, facts = generate(REAL)
  again, _ = generate(REAL)
  np.testing.assert_array_equal(ev.item, again.item)
  assert ev.candidate.all()
  n_int = np.array([len(t) for t in _user_themes(ev)])
  assert n_int.min() >= 2 and n_int.max() <= 5 and len(np.unique(n_int)) >= 3
  it = facts["item_theme"]
  cat_themes = {c: set(it[1:][ev.item_cat[1:] == c]) for c in np.unique(ev.item_cat[1:])}
  assert len(cat_themes) == 6 * 2  # K * (C - 1) categories
  assert max(len(t) for t in cat_themes.values()) == 2  # a category spans two neighbouring themes at most
  assert sum(len(t) == 2 for t in cat_themes.values()) >= 4
  foreign = it[ev.item] != ev.theme
  assert 0.06 < foreign.mean() < 0.14  # noise = 0.1
  in_theme = ev.item[~foreign & (it[ev.item] == 0)]
  counts = np.sort(np.bincount(in_theme, minlength=21)[1:])[::-1]
  assert counts[:4].sum() > counts[-10:].sum()  # Zipf head
  new = np.concatenate([[True], (ev.user[1:] != ev.user[:-1]) | (ev.time[1:] - ev.time[:-1] > 3000)])
  lengths = np.diff(np.append(np.flatnonzero(new), len(ev.item)))
  assert lengths.min() >= 1 and lengths.max() <= 12 and (lengths == 1).any()


def test_no_hopping_control_gives_one_theme_per_user():
  for cfg in (SMALL, REAL):
    ev, _ = generate(dataclasses.replace(cfg, hopping=False))
    assert all(len(t) == 1 for t in _user_themes(ev))


@pytest.mark.parametrize("field, value, expected", [
  ("preset", "nope", "one of"), ("interests", (3, 9), "within"), ("chain_prob", 1.5, "probability"),
  ("cats_per_theme", 1, ">= 2 for the realistic"), ("session_len", (5, 2), "inclusive range")])
def test_synthetic_config_errors_name_the_field(field, value, expected):
  with pytest.raises(ValueError, match=f"SyntheticConfig.{field}=.*{expected}"):
    generate(dataclasses.replace(REAL, **{field: value}))
