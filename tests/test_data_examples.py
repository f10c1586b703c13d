"""Targets, temporal splits, leakage and negative sampling."""

import numpy as np
import pytest

from mos_jax.data import DataConfig, load_prepared, prepare_dataset
from mos_jax.data.examples import sample_negatives, split_targets


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
  out = split_targets(user, cand, start, max_train=0)
  assert len(out["train"]) == 0


def test_negatives_never_positive_reproducible_and_hard_share():
  num_items = 40
  group = np.concatenate([[0], np.repeat([1, 2, 3, 4], 10)]).astype(np.int32)
  group[40] = 0  # an item without group: its negatives fall back to uniform
  pos = np.random.default_rng(1).integers(1, num_items + 1, size=4000)
  a = sample_negatives(pos, group, num_items, 3, 0.5, np.random.default_rng(7))
  b = sample_negatives(pos, group, num_items, 3, 0.5, np.random.default_rng(7))
  c = sample_negatives(pos, group, num_items, 3, 0.5, np.random.default_rng(8))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.shape == (4000, 3) and a.min() >= 1 and a.max() <= num_items
  assert not (a == pos[:, None]).any()
  same = group[a] == group[pos][:, None]
  has_group = group[pos] > 0
  # hard share 0.5 + uniform draws landing in the group by chance (9/39 of the other half)
  assert abs(same[has_group].mean() - (0.5 + 0.5 * 9 / 39)) < 0.03
  all_hard = sample_negatives(pos, group, num_items, 2, 1.0, np.random.default_rng(0))
  assert (group[all_hard] == group[pos][:, None])[has_group].all()
  assert not (all_hard == pos[:, None]).any()


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
