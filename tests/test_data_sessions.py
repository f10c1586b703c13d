"""Sessionization and [S, T] packing: exact small cases and a reference loop."""

import numpy as np
import pytest

from mos_jax.data import sessions


def test_parse_gap_units():
  assert [sessions.parse_gap(g) for g in ("30m", "1h", "1d", "45s", "90", 120)] == [1800, 3600, 86400, 45, 90, 120]
  with pytest.raises(ValueError, match="expected a number with an optional unit"):
    sessions.parse_gap("30 minutes")


def test_gap_boundaries_and_equal_timestamps():
  # user 1: gaps 0 (equal), 1800 (== gap: same session), 1801 (> gap: new), 5; user 2 starts a new session.
  user = np.array([1, 1, 1, 1, 1, 2, 2])
  time = np.array([100, 100, 1900, 3701, 3706, 3706, 3706])
  sid = sessions.session_ids(user, time, mode="gap", gap_s=1800)
  np.testing.assert_array_equal(sid, [0, 0, 0, 1, 1, 2, 2])


def test_chunk_mode_counts_from_each_users_first_event():
  user = np.array([1, 1, 1, 1, 1, 2, 2, 2])
  time = np.zeros(8, np.int64)
  np.testing.assert_array_equal(sessions.session_ids(user, time, mode="chunk", chunk_len=2), [0, 0, 1, 1, 2, 3, 3, 4])
  with pytest.raises(ValueError, match="session_mode"):
    sessions.session_ids(user, time, mode="daily")


def _pack(sid, user_first, target, S, T, item, time, theme):
  sess = sessions.Sessions.from_ids(np.asarray(sid))
  return sessions.pack(sess, np.asarray(user_first), np.asarray(target), S, T, {"items": np.asarray(item)},
                       np.asarray(time), np.asarray(theme))


def test_pack_keeps_most_recent_sessions_and_items():
  # One user, sessions [1,2,3] [4] [5,6,7,8] [9 (target)]; S=2, T=3.
  sid = [0, 0, 0, 1, 2, 2, 2, 2, 3]
  item = np.arange(1, 10)
  time = np.arange(9) * 10
  theme = [5, 5, 5, 6, 7, 7, 7, 7, 8]
  out = _pack(sid, [0], [8], 2, 3, item, time, theme)
  # Most recent 2 sessions: [4] (padded right) and [5,6,7,8] cut to its last 3 items.
  np.testing.assert_array_equal(out["items"][0], [[4, 0, 0], [6, 7, 8]])
  np.testing.assert_array_equal(out["times"][0], [[50, 0, 0], [30, 20, 10]])
  np.testing.assert_array_equal(out["session_theme"][0], [6, 7])


def test_pack_pads_sessions_at_front_and_cuts_target_session():
  # Target is the 3rd event of the first session: history is only the 2 events before it, in one session.
  sid = [0, 0, 0, 0]
  out = _pack(sid, [0], [2], 3, 4, [11, 12, 13, 14], [0, 1, 2, 3], [1, 1, 1, 1])
  np.testing.assert_array_equal(out["items"][0], [[0, 0, 0, 0], [0, 0, 0, 0], [11, 12, 0, 0]])
  np.testing.assert_array_equal(out["session_theme"][0], [-1, -1, 1])


def _reference_grid(sid, user, time, item, g, S, T):
  """Plain loop: history = the user's events before g, grouped by session, last S sessions, last T items each."""
  hist = [e for e in range(g) if user[e] == user[g]]
  groups = {}
  for e in hist:
    groups.setdefault(sid[e], []).append(e)
  kept = [groups[k][-T:] for k in sorted(groups)][-S:]
  grid = np.zeros((S, T), np.int64)
  times = np.zeros((S, T), np.int64)
  for r, evs in enumerate(kept):
    row = S - len(kept) + r
    grid[row, :len(evs)] = item[evs]
    times[row, :len(evs)] = time[g] - time[evs]
  return grid, times, len(hist) - sum(len(k) for k in kept)


@pytest.mark.parametrize("mode", ["gap", "chunk"])
def test_pack_matches_reference_loop(mode):
  rng = np.random.default_rng(0)
  user = np.sort(rng.integers(1, 5, size=60))
  time = np.concatenate([np.sort(rng.integers(0, 20, size=(user == u).sum())) for u in range(1, 5)])
  item = rng.integers(1, 50, size=60)
  sid = sessions.session_ids(user, time, mode=mode, gap_s=3, chunk_len=3)
  sess = sessions.Sessions.from_ids(sid)
  first = np.searchsorted(user, user)
  targets = np.array([e for e in range(60) if first[e] < e])
  S, T = 3, 2
  out = sessions.pack(sess, first[targets], targets, S, T, {"items": item}, time, np.zeros(60, np.int32))
  kept = sessions.kept_counts(sess, first[targets], targets, S, T)
  for n, g in enumerate(targets):
    grid, times, truncated = _reference_grid(sid, user, time, item, g, S, T)
    np.testing.assert_array_equal(out["items"][n], grid, err_msg=f"target {g}")
    np.testing.assert_array_equal(out["times"][n], times, err_msg=f"target {g}")
    assert kept[n] == (g - first[g]) - truncated
