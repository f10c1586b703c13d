"""MoS-SASRec on taobao-sslrec (SSLRec's "tmall": a filtered Taobao UserBehavior log, fav / cart / buy only), CTR
task (next interaction of any behaviour vs uniform sampled negatives; AUC, GAUC, logloss).

Many users with short histories: 31,882 users, 357,412 events, 11.2 per user (median 10, max 89), no categories.
The data folder is one flag: ``--config.data.data_dir=/path/to/taobao-sslrec`` (default: ../shared/data/taobao-sslrec
beside the repo root). The reader and the measured numbers are in docs/data.md ("taobao-sslrec").
"""

import pathlib

from mos_jax.config import Config, load_config_file

DATA_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "taobao-sslrec"


def get_config() -> Config:
  # The default's model and batch; this log, a small grid, every train target, early stopping on valid AUC.
  cfg = load_config_file(pathlib.Path(__file__).with_name("default.py"))
  cfg.workdir = "runs/taobao_sslrec_ctr"
  cfg.data.dataset = "taobao_sslrec"
  cfg.data.data_dir = str(DATA_DIR)
  cfg.data.negatives = "uniform"  # as the other real-log configs ("auto" resolves to it too)
  # 30 min, as taobao_ctr.py (the same Taobao UserBehavior log). Without page views a session is a purchase episode:
  # 7.3 sessions per user (median 7, p90 12), 1.5 events per session (p90 3, p99 6; same-second basket checkouts
  # stay together). S=12 x T=4 keeps 92% of a test history's events (20% of test histories lose some); longer gaps
  # barely merge sessions (1 h: 6.9 per user).
  cfg.data.session_gap = "30m"
  cfg.data.num_sessions = 12  # S
  cfg.data.session_len = 4  # T
  cfg.data.min_user_events = 3  # every user has >= 3 events (SSLRec kept >= 3 train buys): keep them all
  cfg.data.max_train_targets_per_user = 0  # all training targets (~9 per user)
  cfg.train.learning_rate = 1e-3
  cfg.train.warmup_steps = 100
  # Budget: 8,000 steps x 128 = 1.02M CTR rows, 2 epochs of the 523,532 train rows. A 200-step run trained at
  # 2,900-4,400 (typically ~4,000) examples/s on one busy core of the 2-core dev machine: 4-6 min of training, + 4
  # validations of 63,764 rows (< 17 s each) and start-up, under 10 minutes (docs/data.md, "taobao-sslrec").
  cfg.train.num_steps = 8000
  cfg.train.eval_every = 2000
  cfg.train.checkpoint_every = 0  # only the best (at each better validation) and the final checkpoint
  cfg.train.early_stop_metric = "auc"
  cfg.train.patience = 2
  return cfg
