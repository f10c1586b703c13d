"""Trains a model: ``python train.py [--config=configs/default.py] [--config.FIELD=VALUE ...] [--workdir=DIR]``.

``mos-train`` (installed with the package) takes the same flags.

Re-running the same command resumes from ``WORKDIR/checkpoints/latest`` and continues exactly where it stopped.
SIGTERM / Ctrl-C save a checkpoint and exit with status 128 + signal number. See docs/training.md.

Multi-process: ``--config.train.distributed=auto`` (TPU pods, GPU clusters, SLURM) or ``=explicit`` with
``--config.train.coordinator_address=HOST:PORT --config.train.num_processes=N --config.train.process_id=I``, the same
command in every process (docs/training.md, Multi-process).
"""

from __future__ import annotations

import pathlib
import signal
import sys


def default_config() -> pathlib.Path:
  """configs/default.py of the checkout; from an installed package (no configs/ beside it), the working directory's."""
  from mos_jax.config import DEFAULT_CONFIG  # noqa: PLC0415

  return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else pathlib.Path("configs") / "default.py"


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__)
    return 0
  from mos_jax.runtime import start_jax  # noqa: PLC0415  (after parsing --help)

  start_jax()

  from mos_jax.config import ConfigError, parse_command_line  # noqa: PLC0415
  from mos_jax.data import DataError  # noqa: PLC0415
  from mos_jax.training import distributed  # noqa: PLC0415
  from mos_jax.training.checkpoint import CheckpointError  # noqa: PLC0415
  from mos_jax.training.loop import train  # noqa: PLC0415

  try:
    cfg = parse_command_line(argv, default_config=default_config())
    # Before anything touches the JAX backend (jax.devices(), the first array): initialize() refuses to run later.
    # No explicit jax.distributed.shutdown(): JAX's atexit hook does it (an explicit one can hang the exit).
    distributed.initialize(cfg.train)
  except (ConfigError, distributed.DistributedError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    result = train(cfg)
  except (ConfigError, CheckpointError, DataError, distributed.DistributedError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not distributed.is_primary():
    return 128 + int(result.stop_signal or signal.SIGTERM) if result.status == "interrupted" else 0
  print(f"{result.status} at step {result.step}/{result.total_steps}; best {result.metric} = "
        f"{result.best_metric} at step {result.best_step}; workdir {cfg.workdir}")
  if result.status == "interrupted":
    return 128 + int(result.stop_signal or signal.SIGTERM)
  return 0


if __name__ == "__main__":
  sys.exit(main())
