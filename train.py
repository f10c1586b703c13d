"""Trains a model: ``python train.py [--config=configs/default.py] [--config.FIELD=VALUE ...] [--workdir=DIR]``.

A thin wrapper around ``mos_jax.cli.train`` (also installed as ``mos-train``); see there and docs/training.md.
"""

import sys

from mos_jax.cli.train import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
