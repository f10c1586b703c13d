"""MoS-SASRec at L = S x T = 64 x 16 = 1024 on a long-history synthetic variant (docs/model.md, "Long sequences").

The session-hopping generator with 200-260 sessions of 4-16 items per user (about 2,300 events each), few users so
that generation and preparation stay at seconds; K = 8 themes. Switches that matter at this length:
``--config.model.remat=dots`` (or ``full``) recomputes each encoder block's activations in the backward pass,
``--config.model.dtype=bfloat16`` halves activation memory, ``model.mamba4rec.scan_chunk`` (set to 32 here) keeps
Mamba4Rec's selective-scan memory at O(L/c + c) steps, ``--config.model.attention=cudnn`` picks cuDNN flash
attention on a GPU (bf16). Smoke test: ``python train.py --config=configs/long_1024.py --config.train.num_steps=2``.
"""

import pathlib

from mos_jax.config import Config, load_config_file


def get_config() -> Config:
  cfg = load_config_file(pathlib.Path(__file__).with_name("default.py"))
  cfg.workdir = "runs/long_1024"
  cfg.data.num_sessions = 64  # S
  cfg.data.session_len = 16  # T
  syn = cfg.data.synthetic
  syn.num_users = 300
  syn.sessions_per_user = (200, 260)
  syn.session_len = (4, 16)
  cfg.model.num_themes = 8  # K
  cfg.model.mamba4rec.scan_chunk = 32  # with backbone=mamba4rec: the scan's residuals for 32 + L/32 steps, not L
  cfg.train.batch_size = 64
  cfg.train.eval_batch_size = 64  # attention scores are [B, heads, L, L] float32: 512 MiB per block here
  cfg.train.num_epochs = 2.0
  cfg.train.warmup_steps = 20
  cfg.train.eval_every = 100
  cfg.train.checkpoint_every = 100
  cfg.train.log_every = 10
  return cfg
