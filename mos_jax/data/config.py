"""Configuration of the data layer (owned by ``mos_jax.data``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SyntheticConfig:
  """Session-hopping generator (the embedded default dataset).

  Each theme owns a disjoint block of items and categories; its items form one chain (a random cycle), and a user's
  next item in a theme is the successor of the last item that user saw in that theme, so predicting a session's
  first item needs the theme's earlier sessions, not only the last one.
  """

  num_users: int = 2000
  num_themes: int = 8
  items_per_theme: int = 40
  cats_per_theme: int = 4
  favourite_themes: int = 3  # themes a user draws sessions from
  sessions_per_user: tuple[int, int] = (14, 22)  # inclusive range
  session_len: tuple[int, int] = (2, 8)  # items per session, inclusive range
  repeat_prob: float = 0.1  # probability that a session keeps the previous session's theme
  noise: float = 0.05  # probability that an item comes from a random theme (the chain state is not advanced)
  within_gap_s: tuple[int, int] = (10, 600)  # seconds between events of one session
  between_gap_s: tuple[int, int] = (3600, 3 * 86400)  # seconds between sessions
  seed: int = 0


@dataclasses.dataclass
class DataConfig:
  """Where interactions come from and how they become ``[S, T]`` session grids."""

  dataset: str = "synthetic"  # synthetic | taobao | ml-100k | ml-latest-small | amazon-rechorus | csv
  data_dir: str = ""  # a folder or the file itself; unused for synthetic
  cache_dir: str = "~/.cache/mos_jax/prepared"  # prepared copies, keyed by a fingerprint of inputs + options
  task: str = "ctr"  # ctr | next (preparing writes both; this picks the one training reads)
  num_sessions: int = 16  # S: most recent sessions kept
  session_len: int = 8  # T: most recent items kept inside a session
  session_mode: str = "gap"  # gap: new session when the time gap > session_gap | chunk: fixed-length chunks
  session_gap: str = "30m"  # e.g. 30m, 1h, 1d (a bare number means seconds)
  chunk_len: int = 16
  neg_ratio: int = 1  # CTR negatives per positive
  # Share of CTR negatives drawn from the positive's theme (synthetic) or category (real data); the rest are uniform.
  # None = 0.5 for synthetic (recalling the right theme subsequence must matter), 0.0 for real data (the usual
  # uniform negatives, comparable with published numbers).
  hard_neg_frac: float | None = None
  max_train_targets_per_user: int = 10
  min_user_events: int = 5
  kcore: int = 0  # 0 = no k-core filtering
  columns: str = ""  # generic csv: "user=uid,item=iid,time=ts,category=cat,behavior=type"
  seed: int = 0
  synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
