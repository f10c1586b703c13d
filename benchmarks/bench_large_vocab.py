"""Next-item training and evaluation at a large catalogue (default 1M items, batch 1024) on the host: time and memory.

  python benchmarks/bench_large_vocab.py                                      # sampled, in_batch, blocked eval
  python benchmarks/bench_large_vocab.py --runs=sampled,full --max_rss_gib=12  # add the full softmax (needs RAM)

Rows (``--runs``, each in a fresh subprocess so its peak memory is its own):

* ``sampled`` / ``in_batch`` / ``full``: the real train step (``training.step.make_train_step``: forward, the
  ``train.next_loss`` loss, backward, clipping + AdamW, state donated) of MoS-SASRec on a random batch. The step runs
  ``--steps`` + 1 times; the first call includes compilation, the rest are timed (median).
* ``eval``: full-ranking evaluation of one ``--eval_batch`` batch over every item in blocks of ``--item_block``
  (``Executor.predict_fn(query_only=True)`` + ``evaluation.target_ranks_blocked``), timed like the steps.

Peak memory is the child's ``VmHWM`` (peak resident set, /proc/self/status) at the end: parameters, AdamW moments,
XLA's buffers and the Python / JAX runtime (``tracemalloc`` would miss XLA's allocations). A watchdog stops a child
whose resident memory passes ``--max_rss_gib`` (the machine may be shared). Prints a table and writes JSON (temp
file, then rename).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNS = ("sampled", "in_batch", "full", "eval")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--runs", default="sampled,in_batch,eval", help=f"comma-separated, from {RUNS}")
  p.add_argument("--num_items", type=int, default=1_000_000)
  p.add_argument("--num_cats", type=int, default=1000)
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--num_sampled", type=int, default=8192, help="negatives of the sampled softmax (uniform proposal)")
  p.add_argument("--sessions", type=int, default=8, help="S")
  p.add_argument("--session_len", type=int, default=8, help="T")
  p.add_argument("--dim", type=int, default=32, help="D = H")
  p.add_argument("--themes", type=int, default=4, help="K")
  p.add_argument("--eval_batch", type=int, default=256)
  p.add_argument("--item_block", type=int, default=65536)
  p.add_argument("--steps", type=int, default=3, help="timed steps after the compiling one")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max_rss_gib", type=float, default=12.0, help="watchdog: a child above this is stopped")
  p.add_argument("--timeout_s", type=float, default=600.0, help="per child")
  p.add_argument("--json", default="benchmarks/results/large_vocab.json")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: the run of this subprocess
  return p.parse_args(argv)


def status_kib(field: str) -> int:
  """A ``kB`` field of /proc/self/status (VmHWM = peak resident set, VmRSS = current)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"/proc/self/status has no {field}")


def _watchdog(limit_kib: float) -> None:
  while True:
    if status_kib("VmRSS") > limit_kib:
      print(json.dumps({"error": f"resident memory above --max_rss_gib ({limit_kib / 2**20:.1f} GiB): stopped"}),
            flush=True)
      os._exit(3)
    time.sleep(0.05)


def _timed(fn, n: int) -> tuple[float, float]:
  """(first call incl. compilation, median of the next n) in seconds; fn() must block until done."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def child(a: argparse.Namespace) -> dict[str, Any]:
  """One row; runs inside the subprocess."""
  threading.Thread(target=_watchdog, args=(a.max_rss_gib * 2**20,), daemon=True).start()
  sys.path.insert(0, str(ROOT))
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  import bench_model  # noqa: PLC0415
  from mos_jax.evaluation import predict_rows  # noqa: PLC0415
  from mos_jax.models import build_model  # noqa: PLC0415
  from mos_jax.training import losses  # noqa: PLC0415
  from mos_jax.training import optimizer as optimizer_lib  # noqa: PLC0415
  from mos_jax.training import step as step_lib  # noqa: PLC0415
  from mos_jax.training.config import TrainConfig  # noqa: PLC0415
  from mos_jax.training.parallel import Executor  # noqa: PLC0415

  run = a.child
  ns = argparse.Namespace(**{**vars(a), "backbone": "sasrec", "task": "next", "layers": 1, "heads": 2,
                             "dtype": "float32"})
  cfg = bench_model.model_config("mos", ns)
  cfg.dropout = 0.0
  cfg.validate()
  t = TrainConfig(batch_size=a.batch, eval_batch_size=a.eval_batch, next_loss="full" if run == "eval" else run,
                  num_sampled=a.num_sampled, warmup_steps=0)
  model = build_model(cfg, rngs=nnx.Rngs(a.seed))
  tx = optimizer_lib.make_optimizer(t, 100)
  graphdef, state = step_lib.init_state(model, tx)
  del model
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  rng = np.random.default_rng(a.seed)
  row: dict[str, Any] = {"run": run, "num_items": a.num_items, "params": n_params}
  if run == "eval":
    ns.batch = a.eval_batch
    batch = bench_model.random_batch(ns, rng)
    ex = Executor(t, graphdef, tx, optimizer_lib.learning_rate_schedule(t, 100), "next", state,
                  devices=jax.devices()[:1])
    del state
    predict = ex.predict_fn(query_only=True)
    first, med = _timed(lambda: predict_rows(predict, [batch], task="next", item_block=a.item_block), a.steps)
    row.update(batch=a.eval_batch, item_block=a.item_block, loss=None)
  else:
    next_loss = losses.make_next_loss(t)
    step = jax.jit(step_lib.make_train_step(graphdef, tx, optimizer_lib.learning_rate_schedule(t, 100), "next",
                                            next_loss), donate_argnums=0)
    batch = jax.device_put(bench_model.random_batch(ns, rng))
    holder = {"state": state}
    del state
    out: dict[str, Any] = {}

    def one():
      holder["state"], out["m"] = step(holder["state"], batch)
      out["m"]["loss"].block_until_ready()

    first, med = _timed(one, a.steps)
    row.update(batch=a.batch, num_sampled=a.num_sampled if run == "sampled" else None,
               loss=float(out["m"]["loss"]))
  row.update(compile_and_first_s=round(first, 2), step_s=round(med, 3), examples_per_s=round(row["batch"] / med, 1),
             peak_rss_bytes=status_kib("VmHWM") * 1024)
  return row


def run_child(run: str, argv: list[str], timeout: float) -> dict[str, Any]:
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), *argv, f"--child={run}"]
  t0 = time.perf_counter()
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
  except subprocess.TimeoutExpired:
    return {"run": run, "error": f"timed out after {timeout:.0f} s"}
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  row = json.loads(lines[-1]) if lines else {}
  if proc.returncode != 0 or "error" in row or not row:
    tail = (proc.stderr or "").strip().splitlines()[-3:]
    return {"run": run, "error": row.get("error") or f"exit {proc.returncode}: {' | '.join(tail)}"}
  row["wall_s"] = round(time.perf_counter() - t0, 1)
  return row


def print_table(rows: list[dict[str, Any]]) -> None:
  print(f"{'run':>9} {'items':>9} {'batch':>6} {'negatives':>9} {'params':>11} {'peak RSS GiB':>12} {'step s':>8} "
        f"{'ex/s':>8} {'compile+1st s':>13}")
  for r in rows:
    if "error" in r:
      print(f"{r['run']:>9}  FAILED: {r['error']}")
      continue
    neg = {"sampled": str(r.get("num_sampled")), "in_batch": str(r["batch"] - 1), "full": "all",
           "eval": f"blk {r.get('item_block')}"}[r["run"]]
    print(f"{r['run']:>9} {r['num_items']:>9,} {r['batch']:>6} {neg:>9} {r['params']:>11,} "
          f"{r['peak_rss_bytes'] / 2**30:>12.2f} {r['step_s']:>8.3f} {r['examples_per_s']:>8.1f} "
          f"{r['compile_and_first_s']:>13.1f}")


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  a = parse_args(argv)
  if a.child:
    print(json.dumps(child(a)), flush=True)
    return
  runs = [r for r in a.runs.split(",") if r]
  bad = [r for r in runs if r not in RUNS]
  if bad:
    raise SystemExit(f"--runs: unknown {bad}; expected some of {RUNS}")
  import jax  # noqa: PLC0415  (versions only; the parent runs nothing)

  machine = {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
             "python": platform.python_version(), "jax": jax.__version__}
  print(f"V={a.num_items:,} B={a.batch} S={a.sessions} T={a.session_len} D={a.dim} K={a.themes}; {machine}",
        flush=True)
  child_argv = [x for x in argv if not x.startswith("--json")]
  rows = []
  for run in runs:
    rows.append(run_child(run, child_argv, a.timeout_s))
    print(json.dumps(rows[-1]), flush=True)
  print_table(rows)
  out = {"args": vars(a), "machine": machine, "command": "python benchmarks/bench_large_vocab.py " + " ".join(argv),
         "rows": rows}
  path = pathlib.Path(a.json)
  path.parent.mkdir(parents=True, exist_ok=True)
  sys.path.insert(0, str(ROOT))
  from mos_jax.experiments.sweep import write_text_atomic  # noqa: PLC0415  (no jax: the parent runs nothing)

  write_text_atomic(path, json.dumps(out, indent=1))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
