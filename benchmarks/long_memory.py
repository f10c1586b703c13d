"""Peak host memory and time of one train step at long L (default: B = 256, L = S x T = 64 x 16 = 1024, K = E = 8).

  python benchmarks/long_memory.py                                  # MoS-SASRec and MoS-TWIN first, then the rest
  python benchmarks/long_memory.py --runs=mos:sasrec,mos:twin,backbone:sasrec --remat=dots --json=/tmp/mem.json

Each (model, host) runs in a fresh subprocess, so its peak resident memory (``resource.getrusage(RUSAGE_SELF)
.ru_maxrss``) is its own: parameters, optimizer state, the batch, XLA's buffers for forward + backward + AdamW
update (bench_model.py's train step, state donated) and the Python / JAX runtime itself. The child runs the step
twice: the first call includes compilation (reported as compile s), the second is the step time. A watchdog thread
ends a child whose resident memory passes ``--max_rss_gib`` (the machine is shared; the row then says so), and a
child past ``--timeout_s`` is killed. Runs are started in the order given until ``--budget_s`` is spent.
Prints a table and writes JSON (temp file, then rename).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import threading
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_RUNS = ("mos:sasrec,mos:twin,backbone:sasrec,mos:din,mos:sdim,mos:transact,mos:gru4rec,mos:mamba4rec,"
                "gshard:sasrec")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated MODEL:HOST pairs, run in this order")
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--sessions", type=int, default=64, help="S")
  p.add_argument("--session_len", type=int, default=16, help="T")
  p.add_argument("--dim", type=int, default=32, help="D = H")
  p.add_argument("--layers", type=int, default=1)
  p.add_argument("--heads", type=int, default=2)
  p.add_argument("--themes", type=int, default=8, help="K: MoS themes and MoE experts")
  p.add_argument("--num_items", type=int, default=2000)
  p.add_argument("--num_cats", type=int, default=50)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--remat", default="none", choices=("none", "full", "dots"))
  p.add_argument("--attention", default="xla", choices=("xla", "einsum"))
  p.add_argument("--scan_chunk", type=int, default=32,
                 help="Mamba4Rec: rematerialise the selective scan in chunks of this many steps (0 = off)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max_rss_gib", type=float, default=16.0, help="watchdog: a child above this is stopped")
  p.add_argument("--timeout_s", type=float, default=240.0, help="per child")
  p.add_argument("--budget_s", type=float, default=300.0, help="no new child is started after this")
  p.add_argument("--json", default="benchmarks/results/long_memory.json")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)  # MODEL:HOST, internal
  return p.parse_args(argv)


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _watchdog(limit: float) -> None:
  while True:
    if _rss_bytes() > limit:
      print(json.dumps({"error": f"resident memory above --max_rss_gib ({limit / 2**30:.1f} GiB): stopped"}),
            flush=True)
      os._exit(3)
    time.sleep(0.05)


def child(a: argparse.Namespace) -> dict[str, Any]:
  """One (model, host): build, one train step twice, report; runs inside the subprocess."""
  threading.Thread(target=_watchdog, args=(a.max_rss_gib * 2**30,), daemon=True).start()
  sys.path.insert(0, str(ROOT))
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  import bench_model  # noqa: PLC0415
  from mos_jax.models import build_model  # noqa: PLC0415
  from mos_jax.models.flops import count_flops  # noqa: PLC0415

  name, host = a.child.split(":")
  ns = argparse.Namespace(**{**vars(a), "backbone": host, "task": "ctr"})
  cfg = bench_model.model_config(name, ns)
  cfg.attention, cfg.remat = a.attention, a.remat
  cfg.mamba4rec.scan_chunk = a.scan_chunk
  cfg.validate()
  rss0 = _rss_bytes()
  model = build_model(cfg, rngs=nnx.Rngs(a.seed))
  _, train_step, params, rest, opt_state = bench_model.make_functions(model, "ctr")
  batch = jax.device_put(bench_model.random_batch(ns, np.random.default_rng(a.seed)))
  state = [params, opt_state, rest]
  times = []
  for _ in range(2):
    t0 = time.perf_counter()
    *state, loss = train_step(*state, batch)
    loss.block_until_ready()
    times.append(time.perf_counter() - t0)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state[0]))
  return {"model": name, "host": host, "params": n_params, "loss": float(loss),
          "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          "rss_before_model_bytes": rss0, "compile_and_first_step_s": times[0], "step_s": times[1],
          "train_examples_per_s": a.batch / times[1],
          "flops_fwd_executed": count_flops(cfg, batch_size=a.batch)["executed"]}


def run_child(pair: str, argv: list[str], timeout: float) -> dict[str, Any]:
  model, _, host = pair.partition(":")
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), *argv, f"--child={pair}"]
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  except subprocess.TimeoutExpired:
    return {"model": model, "host": host, "error": f"timed out after {timeout:.0f} s"}
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  row = json.loads(lines[-1]) if lines else {}
  if proc.returncode != 0 or "error" in row or not row:
    tail = (proc.stderr or "").strip().splitlines()[-3:]
    return {"model": model, "host": host, "error": row.get("error") or f"exit {proc.returncode}: {' | '.join(tail)}"}
  row["wall_s"] = time.perf_counter() - t0
  return row


def print_table(rows: list[dict[str, Any]]) -> None:
  print(f"{'model':>14} {'host':>10} {'params':>10} {'peak RSS GiB':>12} {'step s':>8} {'ex/s':>8} "
        f"{'compile+1st s':>13} {'fwd GFLOPs/ex':>13}")
  for r in rows:
    if "error" in r:
      print(f"{r['model']:>14} {r['host']:>10}  FAILED: {r['error']}")
      continue
    print(f"{r['model']:>14} {r['host']:>10} {r['params']:>10,} {r['peak_rss_bytes'] / 2**30:>12.2f} "
          f"{r['step_s']:>8.2f} {r['train_examples_per_s']:>8.1f} {r['compile_and_first_step_s']:>13.1f} "
          f"{r['flops_fwd_executed'] / 1e9:>13.3f}")


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  a = parse_args(argv)
  if a.child:
    print(json.dumps(child(a)), flush=True)
    return
  pairs = [p for p in a.runs.split(",") if p]
  bad = [p for p in pairs if p.count(":") != 1]
  if bad:
    raise SystemExit(f"--runs: expected MODEL:HOST pairs, got {bad}")
  print(f"B={a.batch} S={a.sessions} T={a.session_len} (L={a.sessions * a.session_len}) D={a.dim} K={a.themes} "
        f"dtype={a.dtype} remat={a.remat} attention={a.attention} scan_chunk={a.scan_chunk}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs", flush=True)
  t0, rows = time.perf_counter(), []
  child_argv = [x for x in argv if not x.startswith("--json")]
  for pair in pairs:
    left = a.budget_s - (time.perf_counter() - t0)
    if left <= 0:
      rows.append({"model": pair.split(":")[0], "host": pair.split(":")[1], "error": "not run: --budget_s spent"})
      continue
    rows.append(run_child(pair, child_argv, min(a.timeout_s, max(left, 30.0))))
    print(json.dumps(rows[-1]), flush=True)
  print_table(rows)
  out = {"args": vars(a), "command": "python benchmarks/long_memory.py " + " ".join(argv), "rows": rows}
  path = pathlib.Path(a.json)
  path.parent.mkdir(parents=True, exist_ok=True)
  sys.path.insert(0, str(ROOT))
  from mos_jax.experiments.sweep import write_text_atomic  # noqa: PLC0415  (no jax: the parent runs nothing)

  write_text_atomic(path, json.dumps(out, indent=1))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
