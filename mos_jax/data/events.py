"""The event table: interactions sorted by (user, time) with dense ids, after filtering.

Dense ids start at 1 (0 = padding / unknown). ``*_ids[d]`` holds the original id (a string) of dense id ``d``, so
predictions map back with ``item_ids[pred]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from mos_jax.data.readers import DataError


@dataclasses.dataclass
class EventTable:
  user: np.ndarray  # int32 [E] dense user id, rows sorted by (user, time), ties kept in input order
  item: np.ndarray  # int32 [E]
  cat: np.ndarray  # int32 [E], 0 = unknown
  time: np.ndarray  # int64 [E] unix seconds
  behavior: np.ndarray  # int8 [E] index into behavior_names
  theme: np.ndarray  # int32 [E] true theme of the event's generating session (synthetic), -1 = unknown
  candidate: np.ndarray  # bool [E] event may serve as a target
  item_cat: np.ndarray  # int32 [num_items + 1] category of each item (its last event's), 0 = unknown
  item_group: np.ndarray  # int32 [num_items + 1] hard-negative group (theme + 1 or category), 0 = none
  user_ids: np.ndarray  # str [num_users + 1]
  item_ids: np.ndarray  # str [num_items + 1]
  cat_ids: np.ndarray  # str [num_cats + 1]
  behavior_names: list[str]

  @property
  def user_start(self) -> np.ndarray:
    """int64 [num_users + 1]: first event of each dense user (rows of user u are user_start[u-1]:user_start[u])."""
    return np.searchsorted(self.user, np.arange(1, len(self.user_ids) + 1)).astype(np.int64)


def kcore_mask(user: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
  """Rows kept by iterative k-core filtering (every kept user and item has >= k kept rows)."""
  keep = np.ones(len(user), bool)
  while True:
    _, uinv, ucnt = np.unique(user[keep], return_inverse=True, return_counts=True)
    _, iinv, icnt = np.unique(item[keep], return_inverse=True, return_counts=True)
    ok = (ucnt[uinv] >= k) & (icnt[iinv] >= k)
    if ok.all():
      return keep
    keep[np.flatnonzero(keep)[~ok]] = False


def _dense(values: np.ndarray, unknown: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Sorted dense remap from 1; ``unknown`` maps to 0. Returns (dense ids, original id per dense id)."""
  uniq, inv = np.unique(values, return_inverse=True)
  dense = inv.astype(np.int32) + 1
  if unknown is not None and len(uniq) and uniq[0] == unknown:  # "" sorts first
    uniq, dense = uniq[1:], dense - 1
  return dense, np.concatenate([np.array([""], dtype=str), uniq.astype(str)])


def build_events(df: pd.DataFrame, *, min_user_events: int, kcore: int, source: str) -> tuple[EventTable, dict]:
  """Sort, filter (k-core, then users with too few events) and remap a reader's table."""
  stats = {"raw_rows": len(df), "raw_users": int(df["user"].nunique()), "raw_items": int(df["item"].nunique()),
           "raw_cats": int(df.loc[df["cat"] != "", "cat"].nunique())}
  beh = df.loc[df["behavior"] != "", "behavior"].value_counts()
  if len(beh):
    stats["raw_behaviors"] = {str(k): int(v) for k, v in beh.items()}
  user = df["user"].to_numpy(dtype=str)
  item = df["item"].to_numpy(dtype=str)
  time = df["time"].to_numpy(dtype=np.int64)
  # Out-of-order rows (earlier than the previous row of the same user) are sorted, not rejected: counted here.
  ucode = pd.factorize(user)[0]
  by_user = np.argsort(ucode, kind="stable")
  same = ucode[by_user][1:] == ucode[by_user][:-1]
  stats["rows_out_of_order"] = int((same & (np.diff(time[by_user]) < 0)).sum())
  keep = np.ones(len(df), bool)
  if kcore > 0:
    keep = kcore_mask(user, item, kcore)
  stats["dropped_rows_kcore"] = int((~keep).sum())
  ucnt = pd.Series(user[keep]).value_counts()
  few = set(ucnt.index[ucnt.to_numpy() < min_user_events])
  few_mask = keep & np.isin(user, list(few)) if few else np.zeros(len(df), bool)
  stats["dropped_users_few_events"] = len(few)
  stats["dropped_rows_few_events"] = int(few_mask.sum())
  keep &= ~few_mask
  if not keep.any():
    raise DataError(f"{source}: no user has at least {min_user_events} events after filtering "
                    f"(raw users {stats['raw_users']}); lower min_user_events or kcore")
  sub = df[keep]
  uid, user_ids = _dense(sub["user"].to_numpy(dtype=str))
  iid, item_ids = _dense(sub["item"].to_numpy(dtype=str))
  cid, cat_ids = _dense(sub["cat"].to_numpy(dtype=str), unknown="")
  bnames, bcode = np.unique(sub["behavior"].to_numpy(dtype=str), return_inverse=True)
  t = sub["time"].to_numpy(dtype=np.int64)
  order = np.lexsort((t, uid))  # stable: equal timestamps keep input order
  uid, iid, cid, t, bcode = uid[order], iid[order], cid[order], t[order], bcode[order]
  item_cat = np.zeros(len(item_ids), np.int32)
  last = len(iid) - 1 - np.unique(iid[::-1], return_index=True)[1]  # each item's latest event
  item_cat[iid[last]] = cid[last]  # the item's latest category
  events = EventTable(user=uid, item=iid, cat=cid, time=t, behavior=bcode.astype(np.int8),
                      theme=np.full(len(uid), -1, np.int32), candidate=np.ones(len(uid), bool),
                      item_cat=item_cat, item_group=item_cat.copy(), user_ids=user_ids, item_ids=item_ids,
                      cat_ids=cat_ids, behavior_names=[str(b) for b in bnames])
  return events, stats
