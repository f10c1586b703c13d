"""Session-hopping generator: the embedded default dataset (deterministic from ``SyntheticConfig.seed``).

- K themes own disjoint item blocks (theme k: items k*I+1 .. (k+1)*I) and category blocks.
- Inside theme k the categories are consecutive arcs of its chain, so the category tells the coarse chain position.
- Inside a theme the items form one chain (a seeded random cycle). A user's next item in theme k is the chain
  successor of the last item that user saw in theme k: a session continues the theme where the user left it.
- Each user has a few favourite themes; each session draws one of them (a different one than the previous session
  unless ``repeat_prob``), so themes recur after a few sessions and the last session rarely has the right theme.
- Targets are the first items of sessions whose theme the user visited before: predicting one needs the user's last
  item in that theme, which usually sits several sessions back.
- ``noise``: an item (not a session's first) is replaced by a random item of another theme; the chain does not move.
- Time gaps: ``within_gap_s`` between events of a session, ``between_gap_s`` between sessions (set the session gap
  between the two so time-gap sessionization recovers the true sessions).
"""

from __future__ import annotations

import numpy as np

from mos_jax.data.config import SyntheticConfig
from mos_jax.data.events import EventTable


def generate(cfg: SyntheticConfig) -> tuple[EventTable, dict]:
  """Returns the event table (dense ids, sorted by user and time) and generator facts for ``stats.json``."""
  K, I, C = cfg.num_themes, cfg.items_per_theme, cfg.cats_per_theme
  if K < 1 or I < 2 or C < 1 or not 1 <= cfg.favourite_themes <= K:
    raise ValueError(f"synthetic config: need num_themes>=1, items_per_theme>=2, cats_per_theme>=1 and "
                     f"1<=favourite_themes<=num_themes, got {cfg}")
  rng = np.random.default_rng(cfg.seed)
  chain = np.stack([rng.permutation(I) + k * I + 1 for k in range(K)])  # [K,I] item at chain position j
  num_items = K * I
  item_theme = np.concatenate([[-1], np.repeat(np.arange(K), I)]).astype(np.int32)
  # Category = arc of the chain: theme k's chain is cut into C consecutive arcs, so a category tells the coarse
  # chain position (what an embedding can learn from few examples) and the item the exact one.
  item_cat = np.zeros(num_items + 1, np.int32)
  item_cat[chain] = np.arange(K)[:, None] * C + (np.arange(I)[None, :] * C) // I + 1
  users, items, times, themes, cands = [], [], [], [], []
  for u in range(1, cfg.num_users + 1):
    fav = rng.choice(K, size=cfg.favourite_themes, replace=False)
    last_pos = {}  # theme -> chain position of the user's last real item there
    t = int(1_500_000_000 + rng.integers(0, 30 * 86400))
    n_sess = int(rng.integers(cfg.sessions_per_user[0], cfg.sessions_per_user[1] + 1))
    theme = int(rng.choice(fav))
    for s in range(n_sess):
      if s > 0 and len(fav) > 1 and rng.random() >= cfg.repeat_prob:
        theme = int(rng.choice(fav[fav != theme]))
      length = int(rng.integers(cfg.session_len[0], cfg.session_len[1] + 1))
      visited = theme in last_pos
      pos = (last_pos[theme] + 1) % I if visited else int(rng.integers(I))
      for j in range(length):
        if j > 0 and rng.random() < cfg.noise:
          other = (theme + 1 + int(rng.integers(K - 1))) % K if K > 1 else theme
          item = int(chain[other, rng.integers(I)])
        else:
          item = int(chain[theme, pos])
          last_pos[theme] = pos
          pos = (pos + 1) % I
        users.append(u)
        items.append(item)
        times.append(t)
        themes.append(theme)
        cands.append(j == 0 and visited)
        t += int(rng.integers(cfg.within_gap_s[0], cfg.within_gap_s[1] + 1))
      t += int(rng.integers(cfg.between_gap_s[0], cfg.between_gap_s[1] + 1))
  item = np.asarray(items, np.int32)
  events = EventTable(
      user=np.asarray(users, np.int32), item=item, cat=item_cat[item], time=np.asarray(times, np.int64),
      behavior=np.zeros(len(item), np.int8), theme=np.asarray(themes, np.int32), candidate=np.asarray(cands, bool),
      item_cat=item_cat, item_group=np.where(item_theme >= 0, item_theme + 1, 0).astype(np.int32),
      user_ids=np.array([""] + [str(u) for u in range(1, cfg.num_users + 1)]),
      item_ids=np.array([""] + [str(i) for i in range(1, num_items + 1)]),
      cat_ids=np.array([""] + [str(c) for c in range(1, K * C + 1)]), behavior_names=[""])
  facts = {"num_themes": K, "item_theme": item_theme, "chain": chain}
  return events, facts


def rule_scores(arrays: dict[str, np.ndarray], item_theme: np.ndarray, chain: np.ndarray) -> dict[str, np.ndarray]:
  """Hand-written CTR scores on synthetic examples, to show what a model must recall (see docs/data.md).

  - ``theme_recall``: 1 if the target is the successor of the last history item of the target's theme (+0.5 if the
    history holds that theme at all): the generator's rule, up to noise.
  - ``last_session``: the same rule restricted to the last session (what a short-term model can see).
  - ``theme_member``: whether the target's theme occurs in the history (no order information).
  """
  K, I = chain.shape
  succ = np.zeros(K * I + 1, np.int64)
  for k in range(K):
    succ[chain[k]] = np.roll(chain[k], -1)
  items, tgt = arrays["items"], arrays["target_item"]
  n = len(tgt)
  flat = items.reshape(n, -1)  # time order: sessions oldest first, items oldest first
  same = (flat > 0) & (item_theme[flat] == item_theme[tgt][:, None])
  last = flat.shape[1] - 1 - np.argmax(same[:, ::-1], 1)
  last_in_theme = np.where(same.any(1), flat[np.arange(n), last], 0)
  last_sess = items[:, -1]
  last_item = last_sess[np.arange(n), np.maximum((last_sess > 0).sum(1) - 1, 0)]
  return {"theme_recall": (succ[last_in_theme] == tgt) + 0.5 * same.any(1),
          "last_session": (succ[last_item] == tgt) + 0.5 * (item_theme[last_item] == item_theme[tgt]),
          "theme_member": same.any(1).astype(np.float64)}


def auc(label: np.ndarray, score: np.ndarray) -> float:
  """ROC AUC with ties counted half (Mann-Whitney)."""
  pos, neg = score[label > 0.5], score[label <= 0.5]
  allv = np.concatenate([pos, neg])
  _, inv, cnt = np.unique(allv, return_inverse=True, return_counts=True)
  ranks = (np.cumsum(cnt) - (cnt - 1) / 2.0)[inv]  # average 1-based ranks
  return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
