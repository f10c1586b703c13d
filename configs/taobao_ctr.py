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
  cfg.train.learning_rate = 1e-3
  cfg.train.warmup_steps = 100
  cfg.train.eval_every = 200
  cfg.train.checkpoint_every = 200
  cfg.train.early_stop_metric = "auc"
  return cfg
