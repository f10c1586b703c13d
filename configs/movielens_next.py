"""MoS-SASRec on MovieLens-100k, next-item task (full ranking; HR@K, NDCG@K, MRR).

The same data, sizes and training as ``movielens_ctr.py``; the data folder is the same one flag.
"""

import pathlib

from mos_jax.config import Config, load_config_file


def get_config() -> Config:
  cfg = load_config_file(pathlib.Path(__file__).with_name("movielens_ctr.py"))
  cfg.workdir = "runs/movielens_next"
  cfg.data.task = "next"
  cfg.train.early_stop_metric = "ndcg@10"
  return cfg
