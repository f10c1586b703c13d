"""MoS-SASRec on MovieLens-100k, CTR task (rated vs sampled negatives; AUC, GAUC, logloss).

The data folder is one flag: ``--config.data.data_dir=/path/to/ml-100k`` (default: ../shared/data/ml-100k beside the
repo root). Sizes and training as ``taobao_ctr.py``; sessions are cut at 1 h gaps (many users rated in one sitting).
"""

import pathlib

from mos_jax.config import Config, load_config_file

DATA_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"


def get_config() -> Config:
  cfg = load_config_file(pathlib.Path(__file__).with_name("taobao_ctr.py"))
  cfg.workdir = "runs/movielens_ctr"
  cfg.data.dataset = "ml-100k"
  cfg.data.data_dir = str(DATA_DIR)
  cfg.data.session_gap = "1h"
  return cfg
