"""A sequence-level MoE baseline (GShard top-2 over backbone experts) on the default's data and sizes.

Other baselines: ``--config.model.name=expert_choice`` or ``--config.model.name=dselect_k``.
"""

import pathlib

from mos_jax.config import Config, load_config_file


def get_config() -> Config:
  cfg = load_config_file(pathlib.Path(__file__).with_name("default.py"))
  cfg.workdir = "runs/gshard"
  cfg.model.name = "gshard"
  cfg.model.moe.num_experts = 4
  cfg.model.moe.top_k = 2
  return cfg
