"""One training process for tests/test_multiprocess.py (a plain script, not a test).

``python tests/mp_worker.py --devices=D --workdir=W --cache=C [--stop_at=K1,K2,...] [--num_processes=P
--process_id=I --port=PORT]`` forces D CPU devices, joins a P-process JAX cluster on 127.0.0.1:PORT when P > 1 (as
train.py does, through ``train.distributed='explicit'``) and trains ``tiny_config`` in W, resuming from W's latest
checkpoint. ``--stop_at`` stops after step K1 the way a preemption does (SIGTERM to itself: the loop saves and returns),
then resumes in the same processes and stops after K2, and so on; without it (or after the last K) it trains to the
end. Process 0 writes ``W/result_<step>.json`` (status, step, number of processes and devices) after each segment.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 7  # the whole run; segments stop earlier with --stop_at


def tiny_config(workdir: str, cache: str):
  """MoS-SASRec on 4 synthetic users: 80 training rows, so the 7 global batches of 16 cross an epoch boundary (after
  step 5). No dropout: the same global batch then gives the same update whatever its row order (which depends on the
  number of processes)."""
  from mos_jax import config as config_lib  # noqa: PLC0415

  cfg = config_lib.Config(workdir=workdir, seed=0)
  cfg.data.cache_dir = cache
  cfg.data.synthetic.num_users = 4
  cfg.data.num_sessions, cfg.data.session_len = 4, 4
  m = cfg.model
  m.embed_dim = m.hidden_dim = 8
  m.num_themes, m.dropout = 2, 0.0
  t = cfg.train
  t.batch_size, t.eval_batch_size, t.num_steps, t.warmup_steps = 16, 4, STEPS, 2
  t.eps = 1e-3  # Adam would otherwise turn float noise in near-zero gradients into full-size updates
  t.eval_every, t.checkpoint_every, t.log_every, t.keep = 2, 3, 1, 4
  t.async_checkpoints, t.progress_bar = False, False
  return cfg


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--devices", type=int, required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--cache", required=True)
  p.add_argument("--stop_at", default="", help="comma-separated steps")
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  args = p.parse_args(argv)

  os.environ["JAX_PLATFORMS"] = "cpu"
  # Test speed: processes other than 0 never hit the persistent compilation cache on CPU (docs/training.md), so they
  # compile every function; LLVM's -O0 cuts the train step's compile by ~40% (results agree to float rounding).
  # The caller's other flags (e.g. --xla_cpu_max_isa) stay; the device count is set below.
  inherited = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
  os.environ["XLA_FLAGS"] = " ".join(inherited + ["--xla_backend_optimization_level=0"])
  sys.path.insert(0, str(REPO))
  import jax  # noqa: PLC0415

  jax.config.update("jax_num_cpu_devices", args.devices)  # before the backend starts (and before initialize)
  cache = os.environ.get("MOS_JAX_COMPILATION_CACHE", str(pathlib.Path.home() / ".cache" / "mos_jax" / "jax_cache"))
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

  from mos_jax.training import distributed  # noqa: PLC0415
  from mos_jax.training.loop import train  # noqa: PLC0415

  cfg = tiny_config(args.workdir, args.cache)
  if args.num_processes > 1:
    t = cfg.train
    t.distributed, t.coordinator_address = "explicit", f"127.0.0.1:{args.port}"
    t.num_processes, t.process_id = args.num_processes, args.process_id
  distributed.initialize(cfg.train)  # what train.py does first

  for stop_at in [int(k) for k in args.stop_at.split(",") if k] or [0]:

    def on_step(step: int, stop_at: int = stop_at) -> None:
      if step == stop_at:
        os.kill(os.getpid(), signal.SIGTERM)  # a preemption: the loop saves at this (logging) step and returns

    result = train(cfg, on_step=on_step)
    if distributed.is_primary():
      out = {"status": result.status, "step": result.step, "processes": jax.process_count(),
             "devices": jax.device_count()}
      (pathlib.Path(args.workdir) / f"result_{result.step}.json").write_text(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
