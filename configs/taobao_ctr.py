"""MoS-SASRec on the Taobao UserBehavior head, CTR task (next interaction of any behaviour — pv, cart, fav,
buy — vs sampled negatives; AUC, GAUC, logloss).

The data folder is one flag: ``--config.data.data_dir=/path/to/taobao-userbehavior-head`` (default: ../shared/data/taobao-userbehavior-head beside the
repo root).
"""

import pathlib

from mos_jax.config import Config, load_config_file

DATA_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "taobao-userbehavior-head"


def get_config() -> Config:
  # The default's model and batch; real data, more sessions, a gentler learning rate and early stopping.
  cfg = load_config_file(pathlib.Path(__file__).with_name("default.py"))
  cfg.workdir = "runs/taobao_ctr"
  cfg.data.dataset = "taobao"
  cfg.data.data_dir = str(DATA_DIR)
  cfg.data.num_sessions = 16  # S
  cfg.data.session_gap = "30m"
  cfg.data.min_user_events = 5
  # The real-data recipe of issue 21, each part chosen on the valid split (docs/results.md, "Real logs"): every
  # training target (the cap of 10 per user kept a tenth of them), the last 10 targets of each user for test and the
  # 10 before for valid (16k rows each instead of 1.6k: an AUC standard error of ~0.003), and the target-to-history
  # match as two head inputs. Before issue 21: max_train_targets_per_user=10, eval_targets_per_user=1,
  # history_match=False, num_steps=0 (4 epochs), eval_every=200, checkpoint_every=200.
  cfg.data.max_train_targets_per_user = 0
  cfg.data.eval_targets_per_user = 10
  cfg.model.history_match = True
  cfg.train.num_steps = 1500
  cfg.train.learning_rate = 1e-3
  cfg.train.warmup_steps = 100
  cfg.train.eval_every = 250
  cfg.train.checkpoint_every = 0  # only the best (at each better validation) and the final checkpoint
  cfg.train.early_stop_metric = "auc"
  return cfg
