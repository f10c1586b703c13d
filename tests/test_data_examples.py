"""Targets, temporal splits, leakage and negative sampling."""

import dataclasses
import json

import numpy as np
import pytest

from mos_jax.data import DataConfig, SyntheticConfig, load_prepared, make_iterator, prepare_dataset
from mos_jax.data import examples
from mos_jax.data.examples import split_targets


def test_split_targets_exact():
  # user 1: 5 events, user 2: 3 events, user 3: 1 event (no history -> no target); event 3 is not a candidate.
  user = np.array([1, 1, 1, 1, 1, 2, 2, 2, 3])
  cand = np.ones(9, bool)
  cand[3] = False
  start = np.searchsorted(user, np.arange(1, 5))
  out = split_targets(user, cand, start, max_train=1)
  np.testing.assert_array_equal(out["test"], [4, 7])
  np.testing.assert_array_equal(out["valid"], [2, 6])
  np.testing.assert_array_equal(out["train"], [1])  # event 0 has no history; max_train=1 keeps the latest
  user = np.ones(6, int)  # one user, targets 1..5: test 5, valid 4, train 1..3
  start = np.array([0, 6])
  np.testing.assert_array_equal(split_targets(user, np.ones(6, bool), start, max_train=2)["train"], [2, 3])
  np.testing.assert_array_equal(split_targets(user, np.ones(6, bool), start, max_train=0)["train"], [1, 2, 3])


def test_split_targets_k_per_user_exact():
  # one user, events 0..9: event 0 has no history, event 4 is no candidate -> targets 1 2 3 5 6 7 8 9
  user = np.ones(10, int)
  cand = np.ones(10, bool)
  cand[4] = False
  start = np.array([0, 10])
  out = split_targets(user, cand, start, max_train=0, eval_per_user=3)
  np.testing.assert_array_equal(out["test"], [7, 8, 9])
  np.testing.assert_array_equal(out["valid"], [3, 5, 6])  # the last k *targets* before the test ones: 4 is skipped
  np.testing.assert_array_equal(out["train"], [1, 2])
  np.testing.assert_array_equal(split_targets(user, cand, start, max_train=1, eval_per_user=3)["train"], [2])
  # k = 1 is leave-one-out (the default); every target in exactly one split, in time order per split
  one = split_targets(user, cand, start, max_train=0)
  assert one["test"].tolist() == [9] and one["valid"].tolist() == [8] and one["train"].tolist() == [1, 2, 3, 5, 6, 7]
  # short users fill test first, then valid: 2 targets with k=3 -> both test; 4 targets -> 3 test, 1 valid
  user = np.array([1, 1, 1, 2, 2, 2, 2, 2])
  start = np.array([0, 3, 8])
  out = split_targets(user, np.ones(8, bool), start, max_train=0, eval_per_user=3)
  assert out["test"].tolist() == [1, 2, 5, 6, 7] and out["valid"].tolist() == [4] and out["train"].tolist() == []
  with pytest.raises(ValueError, match="eval_per_user: expected an integer >= 1"):
    split_targets(user, np.ones(8, bool), start, max_train=0, eval_per_user=0)


def test_split_targets_by_time_exact():
  # user 1 at times 0 10 20 30 40, user 2 at 5 15 25 35 45; first events have no history -> 8 targets 10..45
  user = np.repeat([1, 2], 5)
  time = np.array([0, 10, 20, 30, 40, 5, 15, 25, 35, 45])
  start = np.array([0, 5, 10])
  out, cut = examples.split_targets_by_time(user, time, np.ones(10, bool), start, max_train=0, fraction=0.25)
  assert cut == (30, 40)  # the last 2 targets are test, the 2 before valid
  assert out["test"].tolist() == [4, 9] and out["valid"].tolist() == [3, 8] and out["train"].tolist() == [1, 2, 6, 7]
  out, _ = examples.split_targets_by_time(user, time, np.ones(10, bool), start, max_train=1, fraction=0.25)
  assert out["train"].tolist() == [2, 7]  # per user the most recent train target
  time[8] = 40  # a tie at the test cutoff: both sides of the tie go to test
  out, cut = examples.split_targets_by_time(user, time, np.ones(10, bool), start, max_train=0, fraction=0.25)
  assert cut == (30, 40) and out["test"].tolist() == [4, 8, 9] and out["valid"].tolist() == [3]
  # train popularity: events before each user's first evaluation target and before the valid cutoff
  counts = examples.train_item_counts(user, np.arange(1, 11), start, np.array([3, 4, 8, 9]), 10, time=time,
                                      end_time=30)
  assert np.flatnonzero(counts).tolist() == [1, 2, 3, 6, 7, 8]


def _sampler(kind, num_items=40, k=3, counts=None, **kw):
  group = np.concatenate([[0], np.repeat([1, 2, 3, 4], 10)]).astype(np.int32)
  group[40] = 0  # an item without group: its in_category negatives fall back to uniform
  cat = np.concatenate([[0], np.repeat(np.arange(1, 9), 5)]).astype(np.int32)  # 2 categories per group
  counts = np.ones(num_items + 1, np.int64) if counts is None else counts
  return examples.NegativeSampler(kind=kind, num_items=num_items, neg_ratio=k, item_group=group, item_cat=cat,
                                  counts=counts, **kw)


@pytest.mark.parametrize("kind", ["uniform", "popularity", "in_category", "history_matched", "matched"])
def test_negatives_never_positive_and_reproducible(kind):
  rng = np.random.default_rng(1)
  pos = rng.integers(1, 41, size=2000)
  hist = rng.integers(0, 41, size=(2000, 12))
  s = _sampler(kind)
  a = s.draw(pos, hist, np.random.default_rng(7))
  np.testing.assert_array_equal(a, s.draw(pos, hist, np.random.default_rng(7)))
  assert not np.array_equal(a, s.draw(pos, hist, np.random.default_rng(8)))
  assert a.shape == (2000, 3) and a.dtype == np.int32 and a.min() >= 1 and a.max() <= 40
  assert not (a == pos[:, None]).any()


def test_in_category_share():
  s = _sampler("in_category", hard_frac=0.5)
  pos = np.random.default_rng(1).integers(1, 41, size=4000)
  a = s.draw(pos, np.zeros((4000, 1), np.int64), np.random.default_rng(7))
  same = s.item_group[a] == s.item_group[pos][:, None]
  has_group = s.item_group[pos] > 0
  # hard share 0.5 + uniform draws landing in the group by chance (9/39 of the other half)
  assert abs(same[has_group].mean() - (0.5 + 0.5 * 9 / 39)) < 0.03
  all_hard = _sampler("in_category", k=2, hard_frac=1.0).draw(pos, np.zeros((4000, 1)), np.random.default_rng(0))
  assert (s.item_group[all_hard] == s.item_group[pos][:, None])[has_group].all()


def test_popularity_follows_counts_to_the_alpha():
  counts = np.zeros(41, np.int64)
  counts[1:5] = [1, 4, 9, 16]  # ** 0.5 -> weights 1, 2, 3, 4; unseen items are never drawn
  s = _sampler("popularity", k=4, counts=counts, alpha=0.5)
  pos = np.full(20000, 40)
  a = s.draw(pos, np.zeros((20000, 1)), np.random.default_rng(0))
  freq = np.bincount(a.ravel(), minlength=41)[1:5] / a.size
  np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.01)
  b = s.draw(np.full(20000, 4), np.zeros((20000, 1)), np.random.default_rng(0))  # the positive is skipped
  np.testing.assert_allclose(np.bincount(b.ravel(), minlength=41)[1:4] / b.size, [1 / 6, 2 / 6, 3 / 6], atol=0.01)


def test_history_matched_repeats_as_often_as_the_positives():
  rng = np.random.default_rng(2)
  hist = np.stack([rng.permutation(np.arange(1, 41))[:10] for _ in range(6000)])
  pos = np.where(rng.random(6000) < 0.3, hist[:, 0], 0)  # 30% of positives are repeats
  novel = np.array([np.setdiff1d(np.arange(1, 41), h)[0] for h in hist])
  pos = np.where(pos > 0, pos, novel)
  a = _sampler("history_matched", k=2).draw(pos, hist, np.random.default_rng(0))
  assert not (a == pos[:, None]).any()
  seen = (hist[:, None, :] == a[:, :, None]).any(-1)
  assert abs(seen.mean() - 0.3) < 0.02
  assert abs(seen[pos == novel].mean() - 0.3) < 0.03  # independent of the row's own positive


def test_matched_keeps_group_category_and_novelty():
  rng = np.random.default_rng(3)
  s = _sampler("matched", k=2)
  hist = rng.integers(0, 41, size=(3000, 4))
  pos = rng.integers(1, 41, size=3000)
  pos[:1000] = hist[:1000, 0]  # some positives repeat
  pos = np.where(pos == 40, 39, np.maximum(pos, 1))  # item 40 is alone in its (group, category)
  a = s.draw(pos, hist, np.random.default_rng(0))
  in_h = lambda x: (hist[:, None, :] == x.reshape(len(x), -1)[:, :, None]).any(-1)  # noqa: E731
  novel = ~in_h(pos)[:, 0]  # a novel positive always has novel items of its category here
  assert (s.item_cat[a] == s.item_cat[pos][:, None])[novel].all()
  assert (s.item_group[a] == s.item_group[pos][:, None]).all()
  for n in range(len(pos)):  # category and novelty whenever possible, else one of the two
    same_cat = {i for i in range(1, 41) if s.item_cat[i] == s.item_cat[pos[n]] and i != pos[n]}
    novelty = {i for i in range(1, 41) if s.item_group[i] == s.item_group[pos[n]] and i != pos[n]
               and (i in hist[n]) == (pos[n] in hist[n])}
    both = same_cat & novelty
    assert set(a[n]) <= (both or same_cat | novelty)
  # exact: item 1's category {1..5}; history holds 2, 3 -> a repeat positive 2 draws 3, a novel 1 draws 4 or 5
  b = s.draw(np.array([2, 1]), np.array([[2, 3, 0], [2, 3, 0]]), np.random.default_rng(0))
  assert (b[0] == 3).all() and set(b[1]) <= {4, 5}
  # no other novel item in the category: half keep the category {2..5}, half the novelty (group items 6..10)
  c = s.draw(np.ones(400, np.int64), np.tile([2, 3, 4, 5], (400, 1)), np.random.default_rng(0))
  assert abs(np.isin(c, [2, 3, 4, 5]).mean() - 0.5) < 0.05 and np.isin(c, np.arange(2, 11)).all()


def test_target_candidates_exact():
  user = np.array([1, 1, 1, 1, 1, 2, 2, 2])
  item = np.array([5, 6, 5, 7, 6, 5, 5, 8])
  beh = np.array([0, 1, 2, 1, 0, 2, 0, 1])  # names: pv, buy, cart
  sid = np.array([0, 0, 1, 1, 2, 3, 4, 4])
  cand = np.ones(8, bool)
  kw = dict(user=user, item=item, behavior=beh, behavior_names=["pv", "buy", "cart"], sid=sid)
  np.testing.assert_array_equal(examples.target_candidates(cand, **kw), cand)
  np.testing.assert_array_equal(examples.target_candidates(cand, target_behaviors="buy, cart", **kw),
                                [0, 1, 1, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(examples.target_candidates(cand, exclude_repeat_targets=True, **kw),
                                [1, 1, 0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(examples.target_candidates(cand, target_position="session_start", **kw),
                                [1, 0, 1, 0, 1, 1, 1, 0])
  with pytest.raises(ValueError, match=r"target_behaviors: \['fav'\] not among this dataset's behaviours"):
    examples.target_candidates(cand, target_behaviors="fav", **kw)


def test_train_item_counts_stop_at_the_first_evaluation_target():
  user = np.array([1, 1, 1, 1, 2, 2, 2, 3])
  item = np.array([1, 2, 3, 4, 1, 1, 2, 4])
  start = np.searchsorted(user, np.arange(1, 5))
  # user 1: valid at 2, test at 3 -> counts events 0, 1; user 2: valid 5, test 6 -> event 4; user 3: none -> all
  counts = examples.train_item_counts(user, item, start, np.array([2, 5, 3, 6]), 4)
  np.testing.assert_array_equal(counts, [0, 2, 1, 0, 1])


@pytest.fixture(scope="module")
def leak_dataset(tmp_path_factory):
  """Each event has its own item, named by its global time rank, so history items must rank below the target."""
  d = tmp_path_factory.mktemp("leak")
  rng = np.random.default_rng(3)
  rows = []
  for u in range(6):
    times = np.sort(rng.integers(0, 20000, size=int(rng.integers(5, 30))))
    rows += [(u, t) for t in times]
  order = sorted(range(len(rows)), key=lambda r: (rows[r][1], r))
  rank = {r: i for i, r in enumerate(order)}
  lines = ["uid,iid,ts"] + [f"u{u},{rank[r] * 10 + u},{t}" for r, (u, t) in enumerate(rows)]
  (d / "log.csv").write_text("\n".join(lines) + "\n")
  cfg = DataConfig(dataset="csv", data_dir=str(d / "log.csv"), columns="user=uid,item=iid,time=ts",
                   cache_dir=str(d / "cache"), num_sessions=3, session_len=4, session_gap="10m",
                   max_train_targets_per_user=3, neg_ratio=2)
  user_ranks = {u: sorted(rank[r] for r in range(len(rows)) if rows[r][0] == u) for u in range(6)}
  return load_prepared(prepare_dataset(cfg)), user_ranks


def test_histories_hold_only_earlier_events(leak_dataset):
  ds, user_ranks = leak_dataset
  last_per_user = {}
  for split in ("train", "valid", "test"):
    a = ds.split(split, "next")
    tgt = ds.original_ids("item", a["target_item"]).astype(int)
    hist = ds.original_ids("item", a["items"])
    for n in range(len(tgt)):
      h = np.array([int(x) for x in hist[n].ravel() if x])
      assert len(h) > 0 and (h // 10 < tgt[n] // 10).all() and (h % 10 == tgt[n] % 10).all()
      assert (a["times"][n] >= 0).all()
      last_per_user.setdefault(split, {})[tgt[n] % 10] = tgt[n] // 10
  for u in range(6):  # test = the user's last event, valid = the one before
    assert last_per_user["test"][u] == user_ranks[u][-1] and last_per_user["valid"][u] == user_ranks[u][-2]
  counts = np.bincount(ds.split("train", "next")["user"])
  assert counts.max() <= 3


def test_ctr_rows_share_history_and_eval_negatives_are_saved(leak_dataset):
  ds, _ = leak_dataset
  nxt, ctr = ds.split("valid", "next"), ds.split("valid", "ctr")
  assert len(ctr["label"]) == 3 * len(nxt["label"])
  np.testing.assert_array_equal(ctr["label"][:6], [1, 0, 0, 1, 0, 0])
  np.testing.assert_array_equal(ctr["items"][0::3], nxt["items"])
  np.testing.assert_array_equal(ctr["target_item"][0::3], nxt["target_item"])
  assert not (ctr["target_item"][1::3] == ctr["target_item"][0::3]).any()
  np.testing.assert_array_equal(ds.split("valid", "ctr")["target_item"], ctr["target_item"])  # fixed, saved
  assert ctr["items"].dtype == np.int32 and ctr["label"].dtype == np.float32 and ctr["session_theme"].shape[1] == 3


def test_session_start_and_hist_len_exact(tmp_path):
  # one user, sessions (gap 10 min): [0, 60] [5000, 5060, 5120] [20000]
  times = [0, 60, 5000, 5060, 5120, 20000]
  (tmp_path / "log.csv").write_text("u,i,t\n" + "".join(f"a,{n + 1},{t}\n" for n, t in enumerate(times)))
  cfg = DataConfig(dataset="csv", data_dir=str(tmp_path / "log.csv"), columns="user=u,item=i,time=t",
                   cache_dir=str(tmp_path / "cache"), num_sessions=2, session_len=2, session_gap="10m",
                   min_user_events=1, neg_ratio=2)
  ds = load_prepared(prepare_dataset(cfg))
  for split, start, hist_len in (("train", [0, 1, 0], [1, 2, 3]), ("valid", [0], [4]), ("test", [1], [5])):
    a = ds.split(split, "next")
    np.testing.assert_array_equal(a["session_start"], start)
    np.testing.assert_array_equal(a["hist_len"], hist_len)
    assert a["session_start"].dtype == np.int32 and a["hist_len"].dtype == np.int32
    c = ds.split(split, "ctr")
    np.testing.assert_array_equal(c["hist_len"], np.repeat(hist_len, 3))
  only_starts = dataclasses.replace(cfg, target_position="session_start")
  np.testing.assert_array_equal(load_prepared(prepare_dataset(only_starts)).split("test", "next")["hist_len"], [5])
  assert load_prepared(prepare_dataset(only_starts)).split("valid", "next")["hist_len"].tolist() == [2]


SMALL = SyntheticConfig(num_users=120, num_themes=4, items_per_theme=12, cats_per_theme=2, sessions_per_user=(8, 12))


def test_data_seed_moves_only_train_negatives_split_seed_only_eval(tmp_path):
  cfg = DataConfig(cache_dir=str(tmp_path), num_sessions=4, session_len=4, synthetic=SMALL)
  path = prepare_dataset(cfg)
  assert prepare_dataset(dataclasses.replace(cfg, seed=5)) == path  # one prepared folder for every data.seed
  ds = load_prepared(path)
  for split in ("valid", "test"):  # evaluation arrays never depend on data.seed
    a, b = ds.split(split, "ctr", seed=0), ds.split(split, "ctr", seed=5)
    assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
  t0, t5 = ds.split("train", "ctr", seed=0), ds.split("train", "ctr", seed=5)
  np.testing.assert_array_equal(t0["target_item"][0::2], t5["target_item"][0::2])  # same positives
  assert (t0["target_item"][1::2] != t5["target_item"][1::2]).mean() > 0.5
  other = load_prepared(prepare_dataset(dataclasses.replace(cfg, split_seed=1)))
  assert other.path != path
  v0, v1 = ds.split("valid", "ctr"), other.split("valid", "ctr")
  np.testing.assert_array_equal(v0["target_item"][0::2], v1["target_item"][0::2])
  assert (v0["target_item"][1::2] != v1["target_item"][1::2]).mean() > 0.5
  np.testing.assert_array_equal(ds.split("train", "ctr", seed=3)["target_item"],
                                other.split("train", "ctr", seed=3)["target_item"])  # train: data.seed only


def test_train_negatives_redrawn_per_epoch_and_restore_exactly(tmp_path):
  ds = load_prepared(prepare_dataset(DataConfig(cache_dir=str(tmp_path), num_sessions=4, session_len=4,
                                                synthetic=SMALL, neg_ratio=2)))
  arrays = ds.split("train", "ctr", seed=4)
  fields = ds.epoch_fields(arrays, seed=4)
  np.testing.assert_array_equal(fields(0)["target_item"], arrays["target_item"])  # epoch 0 = split()'s draw
  e1 = fields(1)["target_item"]
  np.testing.assert_array_equal(e1[0::3], arrays["target_item"][0::3])
  assert (e1[1::3] != arrays["target_item"][1::3]).mean() > 0.5
  for e in (0, 1, 2):
    t = fields(e)["target_item"].reshape(-1, 3)
    assert not (t[:, 1:] == t[:, :1]).any()
  np.testing.assert_array_equal(fields(1)["target_cat"], ds.events["item_cat"][e1])
  n_batches = len(arrays["label"]) // 64
  kw = dict(batch_size=64, seed=4, shuffle=True, drop_remainder=True, backend="numpy", epoch_fields=fields)
  ref = make_iterator(arrays, **kw)
  expected = [next(ref) for _ in range(2 * n_batches + 3)]
  for k in (3, n_batches, n_batches + 2):  # inside the first epoch, at its end, inside the second
    first = make_iterator(arrays, **kw)
    for _ in range(k):
      next(first)
    resumed = make_iterator(arrays, **kw)
    resumed.set_state(json.loads(json.dumps(first.get_state())))
    for want in expected[k:k + n_batches]:
      got = next(resumed)
      for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  grain = make_iterator(arrays, **{**kw, "backend": "auto"})  # Grain when installed: the same batches
  for want in expected:
    got = next(grain)
    np.testing.assert_array_equal(got["target_item"], want["target_item"])
  # the same training row sees other negatives in epoch 1 than in epoch 0 (rows are in shuffled order here)
  seen = [{}, {}]
  for e in (0, 1):
    for b in expected[e * n_batches:(e + 1) * n_batches]:
      for u, it, lab, h in zip(b["user"], b["target_item"], b["label"], b["hist_len"]):
        if lab == 0:
          seen[e].setdefault((int(u), int(h)), set()).add(int(it))
  common = seen[0].keys() & seen[1].keys()
  assert len(common) > 50 and np.mean([seen[0][r] != seen[1][r] for r in common]) > 0.5


def test_eval_targets_per_user_end_to_end(tmp_path):
  # one user, events 0..6 (items 1..7); gap 10 min: sessions [0, 60] [5000, 5060, 5120] [20000, 20060]
  times = [0, 60, 5000, 5060, 5120, 20000, 20060]
  (tmp_path / "log.csv").write_text("u,i,t\n" + "".join(f"a,{n + 1},{t}\n" for n, t in enumerate(times)))
  cfg = DataConfig(dataset="csv", data_dir=str(tmp_path / "log.csv"), columns="user=u,item=i,time=t",
                   cache_dir=str(tmp_path / "cache"), num_sessions=4, session_len=4, session_gap="10m",
                   min_user_events=1, neg_ratio=1, eval_targets_per_user=2)
  path = prepare_dataset(cfg)
  one = prepare_dataset(dataclasses.replace(cfg, eval_targets_per_user=1))
  assert path != one  # part of the fingerprint (k = 1 hashes as before the field existed)
  ds = load_prepared(path)
  assert ds.meta["config"]["eval_targets_per_user"] == 2
  assert ds.meta["num_examples"] == {"train": {"ctr": 4, "next": 2}, "valid": {"ctr": 4, "next": 2},
                                     "test": {"ctr": 4, "next": 2}}
  for split, items, hist_len in (("train", [2, 3], [1, 2]), ("valid", [4, 5], [3, 4]), ("test", [6, 7], [5, 6])):
    a = ds.split(split, "next")
    assert ds.original_ids("item", a["target_item"]).astype(int).tolist() == items
    assert a["hist_len"].tolist() == hist_len  # each target has its own history prefix
    for n, h in enumerate(a["items"]):  # only strictly earlier events
      assert sorted(ds.original_ids("item", h[h > 0]).astype(int).tolist()) == list(range(1, items[n]))
  # the valid and test targets (and everything after the first of them) are not counted as train popularity
  assert ds.events["item_counts"][ds.events["item"][3:]].sum() == 0
  # target options act first, k counts the targets they leave: session starts are events 2 and 5 (plus 0: no history)
  starts = load_prepared(prepare_dataset(dataclasses.replace(cfg, target_position="session_start")))
  assert starts.split("test", "next")["hist_len"].tolist() == [2, 5]
  assert len(starts.split("valid", "next")["label"]) == 0 == len(starts.split("valid", "ctr")["label"])  # empty split
  with pytest.raises(ValueError, match=r"^DataConfig.eval_targets_per_user=0: expected an integer >= 1$"):
    prepare_dataset(dataclasses.replace(cfg, eval_targets_per_user=0))


def test_time_cutoff_split_end_to_end(tmp_path):
  rng = np.random.default_rng(0)
  lines = ["u,i,t"] + [f"u{u},{rng.integers(1, 30)},{t}" for u in range(8)
                       for t in np.sort(rng.choice(100_000, size=int(rng.integers(3, 12)), replace=False))]
  (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
  cfg = DataConfig(dataset="csv", data_dir=str(tmp_path / "log.csv"), columns="user=u,item=i,time=t",
                   cache_dir=str(tmp_path / "cache"), num_sessions=3, session_len=4, min_user_events=1,
                   split_mode="time_cutoff", eval_fraction=0.2, max_train_targets_per_user=0)
  ds = load_prepared(prepare_dataset(cfg))
  valid_start, test_start = ds.stats["split_cutoffs"]["valid"], ds.stats["split_cutoffs"]["test"]
  t = {s: ds.events["time"][ds.targets[f"{s}_target"]] for s in ("train", "valid", "test")}
  assert (t["train"] < valid_start).all() and (t["valid"] >= valid_start).all() and (t["valid"] < test_start).all()
  assert (t["test"] >= test_start).all() and len(t["test"]) >= 0.2 * sum(len(v) for v in t.values())
  assert len(np.unique(ds.events["user"][ds.targets["test_target"]])) > 1  # a global cutoff spans users
  ev = ds.events  # no event at or after the valid cutoff is counted as train popularity
  np.testing.assert_array_equal(ev["item_counts"],
                                np.bincount(ev["item"][ev["time"] < valid_start], minlength=len(ev["item_counts"])))
  per_user = prepare_dataset(dataclasses.replace(cfg, split_mode="per_user"))
  assert per_user != ds.path
  # eval_fraction does not shape a per_user folder; eval_targets_per_user is per_user only
  assert prepare_dataset(dataclasses.replace(cfg, split_mode="per_user", eval_fraction=0.3)) == per_user
  with pytest.raises(ValueError, match=r"^DataConfig.eval_targets_per_user=2: expected 1 with split_mode='time_"):
    prepare_dataset(dataclasses.replace(cfg, eval_targets_per_user=2))
  with pytest.raises(ValueError, match=r"^DataConfig.eval_fraction=0.5: expected a fraction in \(0, 0.5\)"):
    prepare_dataset(dataclasses.replace(cfg, eval_fraction=0.5))
  with pytest.raises(ValueError, match=r"^DataConfig.split_mode='global': expected one of \('per_user', 'time_cutoff'"):
    prepare_dataset(dataclasses.replace(cfg, split_mode="global"))


def test_bad_negative_options_are_named(tmp_path):
  with pytest.raises(ValueError, match="DataConfig.negatives='hard': expected auto or one of"):
    prepare_dataset(DataConfig(cache_dir=str(tmp_path), negatives="hard"))
  with pytest.raises(ValueError, match="hard_neg_frac=0.3: expected None: it is only used by data.negatives=in_category"):
    prepare_dataset(DataConfig(cache_dir=str(tmp_path), hard_neg_frac=0.3))
  with pytest.raises(ValueError, match="DataConfig.target_position='first': expected one of"):
    prepare_dataset(DataConfig(cache_dir=str(tmp_path), target_position="first"))
  with pytest.raises(ValueError, match="target_behaviors"):
    prepare_dataset(DataConfig(cache_dir=str(tmp_path), target_behaviors="buy", synthetic=SMALL))


def test_cli_flags_and_old_format_refused(tmp_path):
  from mos_jax.data import DataError
  from mos_jax.data.prepare import main
  out = tmp_path / "p"
  assert main(["--out", str(out), "--exclude-repeat-targets", "false", "--negatives", "uniform",
               "--syn-num-users", "60", "--syn-num-themes", "3", "--syn-items-per-theme", "8"]) == 0
  meta = json.loads((out / "meta.json").read_text())
  assert meta["config"]["exclude_repeat_targets"] is False and meta["negatives"] == "uniform"
  assert "seed" not in meta["config"] and meta["config"]["split_seed"] == 0
  meta["format_version"] = 2
  (out / "meta.json").write_text(json.dumps(meta))
  with pytest.raises(DataError, match="prepared with format version 2, this code reads version 3"):
    load_prepared(out)
