"""MoS-SASRec on Foursquare NYC check-ins (STAN's preprocessing), CTR task (next check-in's POI vs uniform sampled
negatives; AUC, GAUC, logloss).

Long sequences: 1,083 users, 147,480 check-ins after dropping 458 exact duplicates, 136 per user (median 93, max
2,500), minute resolution on a relative clock, no categories. The data folder is one flag:
``--config.data.data_dir=/path/to/foursquare-nyc`` (default: ../shared/data/foursquare-nyc beside the repo root). The
reader and the measured numbers are in docs/data.md ("foursquare-nyc").
"""

import pathlib

from mos_jax.config import Config, load_config_file

DATA_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "foursquare-nyc"


def get_config() -> Config:
  # The default's model and batch; this log, a long grid, every train target, early stopping on valid AUC.
  cfg = load_config_file(pathlib.Path(__file__).with_name("default.py"))
  cfg.workdir = "runs/foursquare_ctr"
  cfg.data.dataset = "foursquare"
  cfg.data.data_dir = str(DATA_DIR)
  cfg.data.negatives = "uniform"  # as the other real-log configs ("auto" resolves to it too)
  # Check-ins are sparse: the median gap between a user's consecutive check-ins is ~10 h and no gap length stands
  # out. At 30 min 85% of sessions are a single check-in (1.25 per session), so sessions would just be items; 6 h
  # groups one outing or day (dinner, then a bar) and splits at the long pauses: 77 sessions per user (median 67),
  # 1.8 check-ins per session (p90 3, p99 9). 1 d would chain a daily user's check-ins into multi-day sessions (up to
  # 442 check-ins). The clock is relative, which the gap rule does not mind (it uses differences only).
  cfg.data.session_gap = "6h"
  cfg.data.num_sessions = 32  # S: S x T = 128 slots keep the last ~45 check-ins (a third of a typical history)
  cfg.data.session_len = 4  # T: 5% of sessions are longer and keep their last 4
  cfg.data.min_user_events = 5  # no user has fewer than 17
  cfg.data.max_train_targets_per_user = 0  # all training targets (~134 per user)
  cfg.train.learning_rate = 1e-3
  cfg.train.warmup_steps = 100
  # Budget: 4,000 steps x 128 = 512k CTR rows, 1.8 epochs of the 288,462 train rows. A 160-step run trained at
  # 900-1,800 (typically ~1,600) examples/s on one busy core of the 2-core dev machine: 5-9 min of training, + 4
  # cheap validations of 2,166 rows and start-up, under 10 minutes (docs/data.md, "foursquare-nyc"). S=64 keeps 60%
  # of a test history's check-ins instead of a third, at twice the cost per step.
  cfg.train.num_steps = 4000
  cfg.train.eval_every = 1000
  cfg.train.checkpoint_every = 0  # only the best (at each better validation) and the final checkpoint
  cfg.train.early_stop_metric = "auc"
  cfg.train.patience = 2
  return cfg
