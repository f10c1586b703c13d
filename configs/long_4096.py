"""MoS-SASRec at L = S x T = 256 x 16 = 4096 on a long-history synthetic variant (docs/model.md, "Long sequences").

configs/long_1024.py with 256 sessions per grid: 260-320 sessions of 4-16 items per user (about 2,900 events each).
Attention memory grows with L^2 (the global expert's scores are [B, heads, L, L] float32: 128 MiB per example),
so this config turns on per-block remat (``model.remat='dots'``) and keeps batches at 16 for a CPU host. Smoke test: ``python train.py --config=configs/long_4096.py --config.train.num_steps=2``.
"""

import pathlib

from mos_jax.config import Config, load_config_file


def get_config() -> Config:
  cfg = load_config_file(pathlib.Path(__file__).with_name("long_1024.py"))
  cfg.workdir = "runs/long_4096"
  cfg.data.num_sessions = 256  # S
  cfg.data.synthetic.sessions_per_user = (260, 320)
  cfg.model.remat = "dots"
  cfg.train.batch_size = 16
  cfg.train.eval_batch_size = 16
  return cfg
