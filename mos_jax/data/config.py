"""Configuration of the data layer (owned by ``mos_jax.data``)."""

from __future__ import annotations

import dataclasses

NEGATIVES = ("uniform", "popularity", "in_category", "history_matched", "matched")
TARGET_POSITIONS = ("all", "session_start")
FORMATS = ("numpy", "array_record")  # DataConfig.format
SYNTHETIC_PRESETS = ("hopping", "realistic")
SESSION_MODES = ("gap", "chunk")  # DataConfig.session_mode
SPLIT_MODES = ("per_user", "time_cutoff")  # DataConfig.split_mode


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
  # Which generative process (docs/data.md, "Synthetic presets"): hopping (above; the tests' and the default run's
  # data) | realistic (every event a target, Zipf popularity inside a theme, themes over shared categories, 2-5
  # interests per user with uneven weights, geometric session lengths, noise). configs/realistic.py sets its sizes.
  preset: str = "hopping"
  hopping: bool = True  # False = the no-hopping control: every user draws all sessions from one theme
  # realistic only:
  interests: tuple[int, int] = (2, 5)  # themes per user, inclusive range (weights ~ Dirichlet(1))
  zipf_exponent: float = 1.0  # item popularity inside a theme ~ rank ** -zipf_exponent
  chain_prob: float = 0.5  # an in-theme item continues the user's chain in that theme, else a popular item
  mean_session_len: float = 4.0  # geometric session lengths with this mean, clipped to session_len

  def validate(self) -> None:
    """Raises ValueError naming the field (``SyntheticConfig.FIELD=VALUE: expected ...``)."""

    def bad(field, expected):
      raise ValueError(f"SyntheticConfig.{field}={getattr(self, field)!r}: expected {expected}")

    if self.preset not in SYNTHETIC_PRESETS:
      bad("preset", f"one of {SYNTHETIC_PRESETS}")
    if self.num_themes < 1:
      bad("num_themes", "an integer >= 1")
    if self.items_per_theme < 2:
      bad("items_per_theme", "an integer >= 2")
    if self.cats_per_theme < 1 or (self.preset == "realistic" and self.cats_per_theme < 2):
      bad("cats_per_theme", "an integer >= 1 (>= 2 for the realistic preset, whose neighbouring themes share one)")
    if not 1 <= self.favourite_themes <= self.num_themes:
      bad("favourite_themes", f"an integer in [1, num_themes={self.num_themes}]")
    for field, lo in (("sessions_per_user", 1), ("session_len", 1), ("interests", 1)):
      a, b = getattr(self, field)
      if not lo <= a <= b:
        bad(field, f"an inclusive range (a, b) with {lo} <= a <= b")
    if self.preset == "realistic" and self.interests[1] > self.num_themes:
      bad("interests", f"a range within [1, num_themes={self.num_themes}]")
    for field in ("repeat_prob", "noise", "chain_prob"):
      if not 0 <= getattr(self, field) <= 1:
        bad(field, "a probability in [0, 1]")
    if self.zipf_exponent < 0:
      bad("zipf_exponent", ">= 0")
    if self.mean_session_len < 1:
      bad("mean_session_len", ">= 1")


@dataclasses.dataclass
class DataConfig:
  """Where interactions come from and how they become ``[S, T]`` session grids."""

  dataset: str = "synthetic"  # synthetic | csv | a reader of data/readers.py (taobao, taobao_sslrec, foursquare, ...)
  data_dir: str = ""  # a folder or the file itself; unused for synthetic
  cache_dir: str = "~/.cache/mos_jax/prepared"  # prepared copies, keyed by a fingerprint of inputs + options
  task: str = "ctr"  # ctr | next (preparing writes both; this picks the one training reads)
  num_sessions: int = 16  # S: most recent sessions kept
  session_len: int = 8  # T: most recent items kept inside a session
  session_mode: str = "gap"  # gap: new session when the time gap > session_gap | chunk: fixed-length chunks
  session_gap: str = "30m"  # e.g. 30m, 1h, 1d (a bare number means seconds)
  chunk_len: int = 16
  neg_ratio: int = 1  # CTR negatives per positive
  # How CTR negatives are drawn (docs/data.md, "Negatives"): auto = matched for synthetic, uniform for real data |
  # uniform | popularity | in_category | history_matched | matched.
  negatives: str = "auto"
  neg_alpha: float = 0.75  # popularity negatives: train frequency ** neg_alpha
  # in_category: share of negatives drawn from the positive's theme (synthetic) or category (real data), the rest
  # uniform; None = 0.5. Only used by negatives=in_category.
  hard_neg_frac: float | None = None
  # Targets: which events may be predicted (histories always hold every event).
  target_behaviors: str = ""  # e.g. "buy,cart": only events of these behaviours are targets; "" = all
  exclude_repeat_targets: bool = False  # an event whose item the user had before is not a target
  target_position: str = "all"  # all | session_start (only events that open a session are targets)
  max_train_targets_per_user: int = 10  # most recent train targets per user; 0 = all of them
  # k: per user, the last k targets are test targets and the k before them valid targets, each with its own history
  # prefix (docs/data.md, "Targets, splits and tasks"); 1 = leave-one-out. Larger k gives evaluation sets that can
  # tell models apart (issue 21); users with fewer than 2k targets fill test first, then valid.
  eval_targets_per_user: int = 1
  # per_user: the per-user temporal leave-out above | time_cutoff: two global times split every user's targets, the
  # last eval_fraction of all targets (by time) → test, the eval_fraction before them → valid, the rest train.
  split_mode: str = "per_user"
  eval_fraction: float = 0.1  # time_cutoff only
  min_user_events: int = 5
  kcore: int = 0  # 0 = no k-core filtering
  columns: str = ""  # generic csv: "user=uid,item=iid,time=ts,category=cat,behavior=type"
  split_seed: int = 0  # valid/test negatives: the fixed evaluation sets, saved in the prepared folder
  seed: int = 0  # train negatives (redrawn every epoch) and train order; not part of the prepared folder
  # numpy: the prepared .npz folder only | array_record: also an ArrayRecord copy of every split's examples
  # (PREPARED/array_record, records.py) for data larger than RAM or many hosts. Not part of the fingerprint: both
  # formats hold the same examples.
  format: str = "numpy"
  synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)

  def negatives_kind(self) -> str:
    """The negative sampler in use: ``negatives``, with ``auto`` resolved per dataset."""
    if self.negatives == "auto":
      return "matched" if self.dataset == "synthetic" else "uniform"
    return self.negatives

  def validate(self) -> None:
    """Raises ValueError naming the field (``DataConfig.FIELD=VALUE: expected ...``) for options that cannot work."""

    def bad(field, expected):
      raise ValueError(f"DataConfig.{field}={getattr(self, field)!r}: expected {expected}")

    for field in ("num_sessions", "session_len"):
      if getattr(self, field) < 1:
        bad(field, "an integer >= 1")
    if self.session_mode not in SESSION_MODES:
      bad("session_mode", f"one of {SESSION_MODES}")
    if self.session_mode == "chunk" and self.chunk_len < 1:  # 0 would make every event its own session
      bad("chunk_len", "an integer >= 1 with session_mode='chunk'")
    if self.neg_ratio < 0:
      bad("neg_ratio", "an integer >= 0")
    if self.task == "ctr" and self.neg_ratio < 1:  # no negatives: AUC is undefined and no checkpoint is ever best
      bad("neg_ratio", "an integer >= 1 with task='ctr' (0 only for task='next')")
    if self.negatives != "auto" and self.negatives not in NEGATIVES:
      bad("negatives", f"auto or one of {NEGATIVES}")
    if self.negatives_kind() == "matched" and self.dataset != "synthetic":
      # matched needs the positive's theme and category groups, and its per-row membership tables grow with the
      # largest category: built for the synthetic data (docs/data.md).
      bad("negatives", f"a kind other than 'matched' for dataset {self.dataset!r} ('matched' is for synthetic "
                       f"data); e.g. history_matched")
    if not self.neg_alpha >= 0:
      bad("neg_alpha", ">= 0")
    if self.hard_neg_frac is not None:
      if not 0 <= self.hard_neg_frac <= 1:
        bad("hard_neg_frac", "a float in [0, 1] or None")
      if self.negatives_kind() != "in_category":
        bad("hard_neg_frac", f"None: it is only used by data.negatives=in_category (this run uses "
                             f"{self.negatives_kind()!r}); unset it or choose in_category")
    if self.format not in FORMATS:
      bad("format", f"one of {FORMATS}")
    if self.target_position not in TARGET_POSITIONS:
      bad("target_position", f"one of {TARGET_POSITIONS}")
    if self.max_train_targets_per_user < 0:
      bad("max_train_targets_per_user", "an integer >= 0 (0 = all)")
    if self.eval_targets_per_user < 1:
      bad("eval_targets_per_user", "an integer >= 1")
    if self.split_mode not in SPLIT_MODES:
      bad("split_mode", f"one of {SPLIT_MODES}")
    if self.split_mode == "time_cutoff":
      if self.eval_targets_per_user != 1:
        bad("eval_targets_per_user", "1 with split_mode='time_cutoff' (it is only used by split_mode='per_user')")
      if not 0 < self.eval_fraction < 0.5:
        bad("eval_fraction", "a fraction in (0, 0.5) with split_mode='time_cutoff'")
    if self.dataset == "synthetic":
      self.synthetic.validate()
