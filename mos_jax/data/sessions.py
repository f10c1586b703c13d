"""Sessionization and packing of a target's history into the static ``[S, T]`` grid.

A new session starts at a user's first event and wherever the gap to the previous event is strictly greater than
the threshold (``gap`` mode), or every ``chunk_len`` events counted from the user's first event (``chunk`` mode).
Packing keeps the S most recent sessions of the history and, inside a session, its T most recent items.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_gap(gap: str | int) -> int:
  """``"30m"`` -> 1800 seconds; units s, m, h, d; a bare number is seconds."""
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(gap))
  if m is None:
    raise ValueError(f"session_gap {gap!r}: expected a number with an optional unit s|m|h|d, e.g. 30m")
  return int(float(m.group(1)) * _UNITS[m.group(2) or "s"])


def session_ids(user: np.ndarray, time: np.ndarray, *, mode: str, gap_s: int = 1800, chunk_len: int = 16
                ) -> np.ndarray:
  """int64 [E] global session id per event (rows sorted by user, time); ids are contiguous and never span users."""
  n = len(user)
  new = np.ones(n, bool)
  if n > 1:
    user_change = user[1:] != user[:-1]
    if mode == "gap":
      new[1:] = user_change | (np.diff(time) > gap_s)
    elif mode == "chunk":
      first = np.flatnonzero(np.concatenate([[True], user_change]))
      pos = np.arange(n) - np.repeat(first, np.diff(np.append(first, n)))
      new = pos % chunk_len == 0
    else:
      raise ValueError(f"session_mode {mode!r}: expected 'gap' or 'chunk'")
  return np.cumsum(new) - 1


@dataclasses.dataclass
class Sessions:
  sid: np.ndarray  # int64 [E] session of each event
  start: np.ndarray  # int64 [num_sessions] first event of each session
  end: np.ndarray  # int64 [num_sessions] one past its last event

  @classmethod
  def from_ids(cls, sid: np.ndarray) -> "Sessions":
    start = np.flatnonzero(np.concatenate([[True], sid[1:] != sid[:-1]])) if len(sid) else np.zeros(0, np.int64)
    return cls(sid=sid, start=start, end=np.append(start[1:], len(sid)))


def grid_bounds(sess: Sessions, user_first: np.ndarray, target: np.ndarray, S: int, T: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Event ranges packed for each target: (lo [N,S], hi [N,S], valid [N,S]).

  The history of target event g is the user's events before g (user_first[n] .. g-1); the target's own session
  contributes only its events before g. Row s = S-1 is the most recent session; empty rows sit at the front.
  """
  last = sess.sid[target - 1]  # [N] most recent history session
  first = sess.sid[user_first]  # [N] user's first session
  sigma = last[:, None] - (S - 1) + np.arange(S)[None, :]  # [N,S]
  valid = sigma >= first[:, None]
  sig = np.where(valid, sigma, last[:, None])
  hi = np.minimum(sess.end[sig], target[:, None])
  lo = np.maximum(sess.start[sig], hi - T)
  return lo, np.where(valid, hi, lo), valid


def grid_index(sess: Sessions, user_first: np.ndarray, target: np.ndarray, S: int, T: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Event index of every grid cell: (idx [N,S,T] (0 where empty), ok [N,S,T] (cell holds an event), hi, valid)."""
  lo, hi, valid = grid_bounds(sess, user_first, target, S, T)
  idx = lo[:, :, None] + np.arange(T)[None, None, :]  # [N,S,T]
  ok = idx < hi[:, :, None]
  return np.where(ok, idx, 0), ok, hi, valid


def pack(sess: Sessions, user_first: np.ndarray, target: np.ndarray, S: int, T: int,
         fields: dict[str, np.ndarray], time: np.ndarray, theme: np.ndarray) -> dict[str, np.ndarray]:
  """History grids of the targets: each field int32 [N,S,T] (0 = padding), ``times`` = t(target) - t(event) >= 0,
  ``session_theme`` int32 [N,S] (theme of the session's last packed event, -1 for padding rows)."""
  idx, ok, hi, valid = grid_index(sess, user_first, target, S, T)
  out = {k: np.where(ok, v[idx], 0).astype(np.int32) for k, v in fields.items()}
  dt = np.clip(time[target][:, None, None] - time[idx], 0, np.iinfo(np.int32).max)
  out["times"] = np.where(ok, dt, 0).astype(np.int32)
  out["session_theme"] = np.where(valid, theme[np.maximum(hi - 1, 0)], -1).astype(np.int32)
  return out


def kept_counts(sess: Sessions, user_first: np.ndarray, target: np.ndarray, S: int, T: int) -> np.ndarray:
  """int64 [N]: history events that fit in the grid (history length minus this = events truncated away)."""
  lo, hi, _ = grid_bounds(sess, user_first, target, S, T)
  return (hi - lo).sum(1)


def grid_items(sess: Sessions, user_start: np.ndarray, user: np.ndarray, item: np.ndarray, target: np.ndarray,
               S: int, T: int) -> np.ndarray:
  """int32 [N, S*T]: the packed history items of the targets (chunked; 0 = padding)."""
  parts = [np.zeros((0, S * T), np.int32)]
  for a in range(0, len(target), 16384):
    g = target[a:a + 16384]
    idx, ok, _, _ = grid_index(sess, user_start[user[g] - 1], g, S, T)
    parts.append(np.where(ok, item[idx], 0).reshape(len(g), S * T).astype(np.int32))
  return np.concatenate(parts)
