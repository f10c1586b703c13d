"""MoS-SASRec on the synthetic session-hopping data, CTR task: what ``python train.py`` runs with no flags.

Sizes are chosen so that the whole run (data generation, training, validation, test) fits in a few minutes on two CPU
cores; see docs/training.md for the measured time and AUC.
"""

from mos_jax.config import Config


def get_config() -> Config:
  cfg = Config(workdir="runs/default", seed=0)
  # Data: the embedded session-hopping generator.
  cfg.data.dataset = "synthetic"
  cfg.data.task = "ctr"
  cfg.data.num_sessions = 12  # S
  cfg.data.session_len = 8  # T
  cfg.data.session_mode = "gap"
  # Model: MoS with SASRec experts.
  cfg.model.name = "mos"
  cfg.model.backbone = "sasrec"
  cfg.model.embed_dim = 32
  cfg.model.hidden_dim = 32
  cfg.model.num_layers = 1
  cfg.model.num_heads = 2
  cfg.model.dropout = 0.1
  cfg.model.num_themes = 4
  # Training.
  cfg.train.batch_size = 128
  cfg.train.num_epochs = 4.0  # a compute budget: validation AUC still rises at the end (docs/results.md)
  cfg.train.learning_rate = 2e-3
  cfg.train.warmup_steps = 50
  cfg.train.eval_every = 400
  cfg.train.checkpoint_every = 400
  cfg.train.log_every = 20
  cfg.train.patience = 3
  return cfg
