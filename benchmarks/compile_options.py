"""Compile time and step time of a config's real train step under XLA compiler options, side by side in one process.

  python benchmarks/compile_options.py                                   # the default run's step, a few CPU options
  python benchmarks/compile_options.py --options='{"O1": {"xla_backend_optimization_level": 1}}' --rounds=3
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/compile_options.py --options='{}'

The train step is the one ``train.py`` runs (``training.parallel.Executor`` on the config's prepared data): it is
lowered once, compiled under each option set (``Lowered.compile(compiler_options=...)``, the persistent compilation
cache off so every compile is real), then the executables are timed in turns, ``--rounds`` rounds of ``--steps``
steps each on the same stream of batches, so slow drifts of a shared machine hit every option alike. Options that
exist only as process-wide ``XLA_FLAGS`` need one invocation each (the last example); compare those across
invocations only on a quiet machine. Prints a table and writes ``--json`` (default
benchmarks/results/compile_options.json) with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from mos_jax.runtime import start_jax  # noqa: E402

DEFAULT_OPTIONS = {
    "default": {},
    "no_fusion_emitters": {"xla_cpu_use_fusion_emitters": False},
    "O1": {"xla_backend_optimization_level": 1},
    "O0_no_fusion_emitters": {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False},
}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/default.py")
  p.add_argument("--options", default="", help="JSON {name: {option: value}} (default: a few XLA:CPU options; "
                                               "'default' = no options is always measured first)")
  p.add_argument("--steps", type=int, default=50, help="timed steps per option and round (5 more run untimed)")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "compile_options.json"))
  a = p.parse_args(argv)
  try:
    given = json.loads(a.options) if a.options else DEFAULT_OPTIONS
  except json.JSONDecodeError as e:
    p.error(f"--options: expected a JSON object of option sets, {e}")
  if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
    p.error(f"--options: expected a JSON object {{name: {{option: value}}}}, got {a.options!r}")
  a.options = {"default": {}, **given}
  if a.steps < 1 or a.rounds < 1:
    p.error("--steps and --rounds: expected >= 1")
  return a


def main(argv=None) -> int:
  a = parse_args(argv)
  jax = start_jax()
  jax.config.update("jax_enable_compilation_cache", False)  # every compile below is a real one
  from mos_jax import data as data_lib  # noqa: PLC0415
  from mos_jax.config import load_config_file  # noqa: PLC0415
  from mos_jax.experiments.sweep import write_text_atomic  # noqa: PLC0415
  from mos_jax.training.parallel import Executor  # noqa: PLC0415
  from mos_jax.training.setup import build_run  # noqa: PLC0415

  run = build_run(load_config_file(pathlib.Path(a.config)))
  t = run.cfg.train
  ex = Executor(t, run.graphdef, run.tx, run.schedule, run.cfg.data.task, run.state)
  batches = data_lib.make_iterator(run.dataset.split("train", run.cfg.data.task, seed=0), batch_size=t.batch_size,
                                   seed=0, shuffle=True, drop_remainder=True)
  state = ex.state
  lowered = ex._step.lower(state, ex._put(next(batches)))
  compiled, rows = {}, {}
  for name, opts in a.options.items():
    c0, t0 = time.process_time(), time.perf_counter()
    try:
      compiled[name] = lowered.compile(compiler_options=opts or None)
    except Exception as e:  # noqa: BLE001  (an option this jaxlib does not know: report it, measure the rest)
      rows[name] = {"options": opts, "error": str(e).splitlines()[0]}
      continue
    rows[name] = {"options": opts, "compile_cpu_s": time.process_time() - c0,
                  "compile_wall_s": time.perf_counter() - t0, "step_ms": []}
  for _ in range(a.rounds):
    for name, fn in compiled.items():
      feed = [ex._put(next(batches)) for _ in range(a.steps + 5)]
      for b in feed[:5]:
        state, m = fn(state, b)
      jax.block_until_ready(m)
      t0 = time.perf_counter()
      for b in feed[5:]:
        state, m = fn(state, b)
      jax.block_until_ready(m)
      rows[name]["step_ms"].append((time.perf_counter() - t0) / a.steps * 1e3)
  base = rows["default"]
  lines = [f"compile options, {a.config} train step ({a.rounds} rounds x {a.steps} steps, "
           f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})", "",
           "| options | compile CPU s | vs default | step ms (median of rounds) | vs default |",
           "|---|---:|---:|---:|---:|"]
  for name, r in rows.items():
    if "error" in r:
      lines.append(f"| {name} | error: {r['error']} | | | |")
      continue
    r["step_ms_median"] = statistics.median(r["step_ms"])
    lines.append(f"| {name} | {r['compile_cpu_s']:.1f} | {r['compile_cpu_s'] / base['compile_cpu_s']:.2f}x | "
                 f"{r['step_ms_median']:.1f} | {r['step_ms_median'] / base['step_ms_median']:.2f}x |")
  print("\n".join(lines))
  report = {"command": " ".join(["python", "benchmarks/compile_options.py", *(argv or sys.argv[1:])]),
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
            "versions": {"jax": jax.__version__, "python": platform.python_version()},
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": rows}
  out = pathlib.Path(a.json)
  out.parent.mkdir(parents=True, exist_ok=True)
  write_text_atomic(out, json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
