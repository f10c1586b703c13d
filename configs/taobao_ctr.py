"""MoS-SASRec on the Taobao UserBehavior head, CTR task (next interaction of any behaviour — pv, cart, fav,
buy — vs sampled negatives; AUC, GAUC, logloss).

The data folder is one flag: ``--config.data.data_dir=/path/to/taobao-userbehavior-head`` (default: ../shared/data/taobao-userbehavior-head beside the
repo root).
"""

import pathlib

from mos_jax.config import Config

DATA_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "taobao-userbehavior-head"


def get_config() -> Config:
  cfg = Config(workdir="runs/taobao_ctr", seed=0)
  cfg.data.dataset = "taobao"
  cfg.data.data_dir = str(DATA_DIR)
  cfg.data.task = "ctr"
  cfg.data.num_sessions = 16  # S
  cfg.data.session_len = 8  # T
  cfg.data.session_mode = "gap"
  cfg.data.session_gap = "30m"
  cfg.data.min_user_events = 5
  cfg.model.name = "mos"
  cfg.model.backbone = "sasrec"
  cfg.model.embed_dim = 32
  cfg.model.hidden_dim = 32
  cfg.model.num_layers = 1
  cfg.model.num_heads = 2
  cfg.model.dropout = 0.1
  cfg.model.num_themes = 4
  cfg.train.batch_size = 128
  cfg.train.num_epochs = 4.0
  cfg.train.learning_rate = 1e-3
  cfg.train.warmup_steps = 100
  cfg.train.eval_every = 200
  cfg.train.checkpoint_every = 200
  cfg.train.log_every = 20
  cfg.train.patience = 3
  cfg.train.early_stop_metric = "auc"
  return cfg
