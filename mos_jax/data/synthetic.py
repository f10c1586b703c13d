"""Synthetic session-hopping data: the embedded default dataset (deterministic from ``SyntheticConfig.seed``).

Two presets (``SyntheticConfig.preset``); ``hopping=False`` gives either one theme per user (the no-hopping control).

The ``hopping`` preset (default; tests and ``python train.py``):

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

The ``realistic`` preset (``_realistic_users``): every event is a target; item popularity is Zipf inside a theme;
neighbouring themes share a category; users have 2-5 interests with uneven weights; session lengths are geometric;
an in-theme item either continues the user's chain in that theme or is a popular item; noise from other themes.
"""

from __future__ import annotations

import numpy as np

from mos_jax.data.config import SyntheticConfig
from mos_jax.data.events import EventTable


def generate(cfg: SyntheticConfig) -> tuple[EventTable, dict]:
  """Returns the event table (dense ids, sorted by user and time) and generator facts for ``stats.json``."""
  cfg.validate()
  K, I, C = cfg.num_themes, cfg.items_per_theme, cfg.cats_per_theme
  rng = np.random.default_rng(cfg.seed)
  chain = np.stack([rng.permutation(I) + k * I + 1 for k in range(K)])  # [K,I] item at chain position j
  num_items = K * I
  item_theme = np.concatenate([[-1], np.repeat(np.arange(K), I)]).astype(np.int32)
  item_cat = np.zeros(num_items + 1, np.int32)
  if cfg.preset == "hopping":
    # Category = arc of the chain: theme k's chain is cut into C consecutive arcs, so a category tells the coarse
    # chain position (what an embedding can learn from few examples) and the item the exact one.
    item_cat[chain] = np.arange(K)[:, None] * C + (np.arange(I)[None, :] * C) // I + 1
    num_cats = K * C
    rows = _hopping_users(cfg, chain, rng)
  else:
    # Theme k owns categories k*(C-1) .. k*(C-1)+C-1 (mod), so neighbouring themes share one: a category does not
    # name its theme. Items pick one of their theme's categories at random.
    num_cats = K * (C - 1) if K > 1 else C
    own = (np.arange(K)[:, None] * (C - 1) + np.arange(C)[None, :]) % num_cats + 1  # [K,C]
    item_cat[chain] = own[np.arange(K)[:, None], rng.integers(C, size=(K, I))]
    rows = _realistic_users(cfg, chain, rng)
  users, items, times, themes, cands = (np.asarray(r) for r in zip(*rows)) if rows else ([],) * 5
  item = np.asarray(items, np.int32)
  events = EventTable(
      user=np.asarray(users, np.int32), item=item, cat=item_cat[item], time=np.asarray(times, np.int64),
      behavior=np.zeros(len(item), np.int8), theme=np.asarray(themes, np.int32), candidate=np.asarray(cands, bool),
      item_cat=item_cat, item_group=np.where(item_theme >= 0, item_theme + 1, 0).astype(np.int32),
      user_ids=np.array([""] + [str(u) for u in range(1, cfg.num_users + 1)]),
      item_ids=np.array([""] + [str(i) for i in range(1, num_items + 1)]),
      cat_ids=np.array([""] + [str(c) for c in range(1, num_cats + 1)]), behavior_names=[""])
  facts = {"num_themes": K, "item_theme": item_theme, "chain": chain}
  return events, facts


def _other_theme(theme: int, K: int, rng: np.random.Generator) -> int:
  return (theme + 1 + int(rng.integers(K - 1))) % K if K > 1 else theme


def _hopping_users(cfg: SyntheticConfig, chain: np.ndarray, rng: np.random.Generator) -> list[tuple]:
  """Rows (user, item, time, theme, candidate) of the hopping preset (module docstring)."""
  K, I = chain.shape
  rows = []
  for u in range(1, cfg.num_users + 1):
    fav = rng.choice(K, size=cfg.favourite_themes if cfg.hopping else 1, replace=False)
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
          item = int(chain[_other_theme(theme, K, rng), rng.integers(I)])
        else:
          item = int(chain[theme, pos])
          last_pos[theme] = pos
          pos = (pos + 1) % I
        rows.append((u, item, t, theme, j == 0 and visited))
        t += int(rng.integers(cfg.within_gap_s[0], cfg.within_gap_s[1] + 1))
      t += int(rng.integers(cfg.between_gap_s[0], cfg.between_gap_s[1] + 1))
  return rows


def _realistic_users(cfg: SyntheticConfig, chain: np.ndarray, rng: np.random.Generator) -> list[tuple]:
  """Rows (user, item, time, theme, candidate) of the realistic preset; every event is a candidate target.

  Per user: 2-5 interests (``interests``) with Dirichlet(1) weights; each session draws a theme by weight, a
  different one than the previous session's unless ``repeat_prob``, so themes recur after a few sessions. Inside a
  session: with ``chain_prob`` the item continues the user's chain in that theme (where the user left it, possibly
  sessions ago), otherwise a popular item of the theme (Zipf over a per-theme popularity order); with ``noise`` any
  item is replaced by a popular item of another theme. Session lengths are geometric (``mean_session_len``), clipped.
  """
  K, I = chain.shape
  pop = np.arange(1, I + 1, dtype=np.float64) ** -cfg.zipf_exponent
  pop /= pop.sum()
  pop_order = np.stack([rng.permutation(chain[k]) for k in range(K)])  # [K,I] item of popularity rank r
  lo, hi = cfg.session_len
  rows = []
  for u in range(1, cfg.num_users + 1):
    n_int = int(rng.integers(cfg.interests[0], cfg.interests[1] + 1)) if cfg.hopping else 1
    fav = rng.choice(K, size=n_int, replace=False)
    weight = rng.dirichlet(np.ones(n_int))
    last_pos = {}
    t = int(1_500_000_000 + rng.integers(0, 30 * 86400))
    n_sess = int(rng.integers(cfg.sessions_per_user[0], cfg.sessions_per_user[1] + 1))
    theme = int(rng.choice(fav, p=weight))
    for s in range(n_sess):
      if s > 0 and n_int > 1 and rng.random() >= cfg.repeat_prob:
        others = fav != theme
        theme = int(rng.choice(fav[others], p=weight[others] / weight[others].sum()))
      length = int(np.clip(rng.geometric(1.0 / cfg.mean_session_len), lo, hi))
      for _ in range(length):
        if rng.random() < cfg.noise:
          item = int(pop_order[_other_theme(theme, K, rng), rng.choice(I, p=pop)])
        elif theme in last_pos and rng.random() < cfg.chain_prob:
          last_pos[theme] = (last_pos[theme] + 1) % I
          item = int(chain[theme, last_pos[theme]])
        else:
          item = int(pop_order[theme, rng.choice(I, p=pop)])
          last_pos[theme] = int(np.flatnonzero(chain[theme] == item)[0])  # the chain continues from here
        rows.append((u, item, t, theme, True))
        t += int(rng.integers(cfg.within_gap_s[0], cfg.within_gap_s[1] + 1))
      t += int(rng.integers(cfg.between_gap_s[0], cfg.between_gap_s[1] + 1))
  return rows


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
