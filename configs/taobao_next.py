"""MoS-SASRec on the Taobao UserBehavior head, next-item task (full ranking; HR@K, NDCG@K, MRR).

The same data, sizes and training as ``taobao_ctr.py``; the data folder is the same one flag.
"""

import pathlib

from mos_jax.config import Config, load_config_file


def get_config() -> Config:
  cfg = load_config_file(pathlib.Path(__file__).with_name("taobao_ctr.py"))
  # taobao_ctr.py's real-data recipe was chosen on the Taobao head's CTR task; this config keeps the settings from
  # before it until its own recipe is chosen on valid (issue 21).
  cfg.data.max_train_targets_per_user, cfg.data.eval_targets_per_user = 10, 1
  cfg.model.history_match = False
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.checkpoint_every = 0, 200, 200  # 4 epochs (default.py)
  cfg.workdir = "runs/taobao_next"
  cfg.data.task = "next"
  cfg.train.early_stop_metric = "ndcg@10"
  return cfg
