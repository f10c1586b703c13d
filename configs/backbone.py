"""The plain backbone (one SASRec over the whole sequence) on the default's data and sizes, for comparison with MoS."""

import pathlib

from mos_jax.config import Config, load_config_file


def get_config() -> Config:
  cfg = load_config_file(pathlib.Path(__file__).with_name("default.py"))
  cfg.workdir = "runs/backbone"
  cfg.model.name = "backbone"
  return cfg
