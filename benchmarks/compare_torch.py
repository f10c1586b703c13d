"""JAX vs PyTorch, side by side on one device: train step and inference examples/s, FLOPs, MFU, roofline, latency.

  python benchmarks/compare_torch.py --device=cpu --quick          # tiny shapes, a smoke run (minutes on 2 cores)
  python benchmarks/compare_torch.py --device=gpu --out=$OUT/bench  # the issue's shapes (issue 9, part 4)

Cases (CTR task, SASRec layers = 2, heads = 2, 10,000 items, 100 categories): plain SASRec at (L = 200, D = 64,
B = 1024) and (L = 1024, D = 128, B = 256); MoS-SASRec at (S x T = 64 x 16, D = 128, K = 8, B = 1024). ``--quick``
keeps the cases and shrinks every size (the table states the sizes used); ``--batch=N`` keeps the shapes and sets every
case's batch to N (a 2-core CPU cannot hold the B = 1024 MoS case), ``--latency_batches`` the latency batch sizes.

Modes: JAX ``jit`` float32 and bfloat16 (``ModelConfig.dtype``: bf16 compute, float32 parameters) against PyTorch
eager float32, eager + AMP bf16 (``torch.autocast``: bf16 matmuls, float32 parameters: the same dtype policy) and
``torch.compile`` + AMP bf16. On GPUs float32 matmuls use TF32 on both sides (JAX's default precision; PyTorch set to
``torch.set_float32_matmul_precision('high')`` to match). The PyTorch models are the reference models of
``mos_jax.reference.torch``; when that import fails the torch rows are skipped with the reason in the table.

Protocol: one process per (framework, case, mode), so frameworks never share a process and peak memory is per row;
the same random batch (``bench_model.random_batch``, same seed) on both sides, moved to the device before timing;
``--warmup`` calls (compilation included) excluded; the median of ``--steps`` (>= 20) timed calls, each ended by a
device synchronisation. Train step = forward + backward + global-norm clipping + AdamW (JAX: the training package's
own step and optimizer; PyTorch: ``loss.backward()``, ``clip_grad_norm_``, ``torch.optim.AdamW`` with the same
weight-decay groups). Latency: batch 1 and 64 inference, p50 / p99 over ``--latency_calls`` (>= 200) calls, inputs
already on the device, for the L = 1024 cases.

Derived columns: analytic FLOPs (``mos_jax.models.flops.count_flops``: forward "total" model FLOPs per example x B;
train = 3 x forward), achieved TFLOP/s, MFU against the peak of ``PEAKS`` for the device and dtype, the roofline floor
``max(FLOPs / peak, bytes / bandwidth)`` with bytes from XLA's cost analysis of the compiled JAX function of the same
case and dtype (used for the PyTorch rows too: the floor is the work's, not the framework's), time / floor, and peak
memory (device allocator peak on GPUs; the process's peak RSS on CPUs, compilation included). Writes
``OUT/compare_torch.json`` and ``OUT/compare_torch.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time
import types
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

CASES: dict[str, dict[str, Any]] = {
    "sasrec_L200": dict(model="backbone", S=25, T=8, D=64, B=1024, K=1, latency=False),
    "sasrec_L1024": dict(model="backbone", S=64, T=16, D=128, B=256, K=1, latency=True),
    "mos_sasrec_L1024": dict(model="mos", S=64, T=16, D=128, B=1024, K=8, latency=True),
}
QUICK_CASES: dict[str, dict[str, Any]] = {
    "sasrec_L200": dict(model="backbone", S=5, T=4, D=16, B=32, K=1, latency=False),
    "sasrec_L1024": dict(model="backbone", S=8, T=4, D=16, B=16, K=1, latency=True),
    "mos_sasrec_L1024": dict(model="mos", S=8, T=4, D=16, B=32, K=2, latency=True),
}
COMMON = dict(num_items=10_000, num_cats=100, num_layers=2, num_heads=2, task="ctr")
QUICK_COMMON = dict(num_items=500, num_cats=20, num_layers=2, num_heads=2, task="ctr")
MODES: dict[str, dict[str, str]] = {
    "jax-jit-f32": dict(framework="jax", dtype="float32"),
    "jax-jit-bf16": dict(framework="jax", dtype="bfloat16"),
    "torch-eager-f32": dict(framework="torch", dtype="float32"),
    "torch-eager-amp-bf16": dict(framework="torch", dtype="bfloat16"),
    "torch-compile-bf16": dict(framework="torch", dtype="bfloat16"),
}
LATENCY_BATCHES = (1, 64)

# Dense peaks (no structured sparsity) per dtype, and memory bandwidth. "float32" is what a float32 matmul runs at by
# default: TF32 tensor cores on NVIDIA (JAX's default precision; PyTorch set to match), bf16 MXU passes on TPU.
PEAKS: dict[str, dict[str, Any]] = {
    "h100-sxm": dict(float32=494.7e12, bfloat16=989.4e12, bandwidth=3.35e12,
                     source="NVIDIA H100 Tensor Core GPU datasheet, SXM5: TF32 989 and BF16 1,979 TFLOPS are with "
                            "sparsity, dense = half; HBM3 3.35 TB/s"),
    "h100-pcie": dict(float32=378.0e12, bfloat16=756.0e12, bandwidth=2.0e12,
                      source="NVIDIA H100 Tensor Core GPU datasheet, PCIe: TF32 756 / BF16 1,513 TFLOPS with sparsity, "
                             "dense = half; HBM2e 2.0 TB/s"),
    "h200": dict(float32=494.7e12, bfloat16=989.4e12, bandwidth=4.8e12,
                 source="NVIDIA H200 Tensor Core GPU datasheet, SXM: TF32 989 / BF16 1,979 TFLOPS with sparsity, "
                        "dense = half; HBM3e 4.8 TB/s"),
    "tpu-v5e": dict(float32=197e12, bfloat16=197e12, bandwidth=819e9,
                    source="Google Cloud TPU v5e documentation: 197 TFLOP/s bf16 per chip, HBM2 819 GB/s (float32 "
                           "matmuls run as bf16 MXU passes: the bf16 peak is the ceiling)"),
}


# ----------------------------------------------------------------------------------------------- device peaks


def cpu_peak(cores: int | None = None) -> dict[str, Any]:
  """Estimated CPU peak from /proc/cpuinfo: cores x nominal GHz x FLOPs/cycle/core of the widest FMA units listed
  (AVX-512: 2 FMA ports x 16 float32 lanes x 2 = 64; AVX2: 32; AMX-BF16 tiles: 1024 bf16 FLOPs/cycle), and the memory
  bandwidth measured here by a 256 MiB numpy copy (read + write bytes / best of 3)."""
  text = pathlib.Path("/proc/cpuinfo").read_text() if pathlib.Path("/proc/cpuinfo").exists() else ""
  flags = set(re.findall(r"^flags\s*:\s*(.*)$", text, re.M)[0].split()) if "flags" in text else set()
  mhz = [float(x) for x in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)]
  ghz = (max(mhz) / 1e3) if mhz else 2.0
  cores = cores or len(os.sched_getaffinity(0))
  f32_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
  bf16_cycle = 1024 if "amx_bf16" in flags else 2 * f32_cycle if "avx512_bf16" in flags else f32_cycle
  src = np.ones(32 * 2**20, np.float64)
  dst = np.empty_like(src)
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - t0)
  isa = "AMX-BF16" if "amx_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
  return dict(float32=cores * ghz * 1e9 * f32_cycle, bfloat16=cores * ghz * 1e9 * bf16_cycle,
              bandwidth=2 * src.nbytes / best,
              source=f"estimate: {cores} cores x {ghz:.2f} GHz (cpuinfo) x {f32_cycle} f32 / {bf16_cycle} bf16 "
                     f"FLOPs/cycle/core ({isa}); bandwidth measured by a 256 MiB numpy copy. XLA:CPU and PyTorch "
                     f"may not use AMX for bf16, so bf16 MFU here is a lower bound on efficiency")


def peak_key(device_kind: str, backend: str) -> str:
  k = device_kind.lower()
  if backend == "cpu":
    return "cpu"
  if "h200" in k:
    return "h200"
  if "h100" in k:
    return "h100-pcie" if "pcie" in k else "h100-sxm"
  if "v5 lite" in k or "v5e" in k or "v5litepod" in k:
    return "tpu-v5e"
  return "unknown"


# ----------------------------------------------------------------------------------------------- shared helpers


def model_config(case: dict[str, Any], common: dict[str, Any], dtype: str):
  from mos_jax.models.config import ModelConfig  # noqa: PLC0415

  cfg = ModelConfig(name=case["model"], backbone="sasrec", num_sessions=case["S"], session_len=case["T"],
                    embed_dim=case["D"], hidden_dim=case["D"], num_themes=max(case["K"], 1), dtype=dtype,
                    dropout=0.0, **common)
  cfg.moe = dataclasses.replace(cfg.moe, num_experts=max(case["K"], 1))
  cfg.validate()
  return cfg


def make_batch(case: dict[str, Any], common: dict[str, Any], batch_size: int, seed: int) -> dict[str, np.ndarray]:
  sys.path.insert(0, str(ROOT / "benchmarks"))
  from bench_model import random_batch  # noqa: PLC0415

  a = types.SimpleNamespace(batch=batch_size, sessions=case["S"], session_len=case["T"], num_items=common["num_items"],
                            num_cats=common["num_cats"], themes=max(case["K"], 1), task=common["task"])
  return random_batch(a, np.random.default_rng(seed))


def _time_calls(fn, warmup: int, calls: int) -> list[float]:
  """Seconds of each of ``calls`` calls after ``warmup`` untimed ones; ``fn()`` must block until done."""
  for _ in range(warmup):
    fn()
  out = []
  for _ in range(calls):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def _summary(times: list[float], batch_size: int) -> dict[str, Any]:
  med = statistics.median(times)
  return dict(median_s=med, examples_per_s=batch_size / med, calls=len(times))


def _latency(times: list[float]) -> dict[str, Any]:
  ms = 1e3 * np.asarray(times)
  return dict(p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)), calls=len(times))


def _host_peak_rss() -> int:
  import resource  # noqa: PLC0415

  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# ----------------------------------------------------------------------------------------------- JAX worker


def _cost(compiled) -> dict[str, float | None]:
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else (ca or {})
  return dict(flops=ca.get("flops"), bytes=ca.get("bytes accessed"))


def run_jax(spec: dict[str, Any]) -> dict[str, Any]:
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from mos_jax.models import build_model  # noqa: PLC0415
  from mos_jax.training import optimizer as opt_lib  # noqa: PLC0415
  from mos_jax.training import step as step_lib  # noqa: PLC0415
  from mos_jax.training.config import TrainConfig  # noqa: PLC0415

  case, common = spec["case"], spec["common"]
  cfg = model_config(case, common, MODES[spec["mode"]]["dtype"])
  model = build_model(cfg, rngs=nnx.Rngs(spec["seed"]))
  tcfg = TrainConfig()
  tx = opt_lib.make_optimizer(tcfg, 10_000)
  graphdef, state = step_lib.init_state(model, tx)
  batch = jax.device_put(make_batch(case, common, case["B"], spec["seed"]))
  out: dict[str, Any] = dict(device_kind=jax.devices()[0].device_kind, backend=jax.default_backend(),
                             versions={"jax": jax.__version__})

  def predict(params, rest, b):
    return nnx.merge(graphdef, params, rest)(b, deterministic=True).logits

  infer = jax.jit(predict).lower(state.params, state.rest, batch).compile()
  out["infer_xla"] = _cost(infer)
  times = _time_calls(lambda: infer(state.params, state.rest, batch).block_until_ready(), spec["warmup"], spec["steps"])
  out["infer"] = _summary(times, case["B"])

  body = step_lib.make_train_step(graphdef, tx, opt_lib.learning_rate_schedule(tcfg, 10_000), cfg.task)
  train = jax.jit(body, donate_argnums=0).lower(state, batch).compile()
  out["train_xla"] = _cost(train)
  holder = [jax.tree.map(lambda x: x.copy(), state)]  # the step donates its input state

  def step():
    holder[0], metrics = train(holder[0], batch)
    metrics["loss"].block_until_ready()

  out["train"] = _summary(_time_calls(step, spec["warmup"], spec["steps"]), case["B"])
  if case.get("latency"):
    lat = {}
    for n in spec.get("latency_batches", LATENCY_BATCHES):
      small = jax.device_put(make_batch(case, common, n, spec["seed"] + n))
      fn = jax.jit(predict).lower(state.params, state.rest, small).compile()
      lat[f"b{n}"] = _latency(_time_calls(lambda: fn(state.params, state.rest, small).block_until_ready(),
                                          spec["warmup"], spec["latency_calls"]))
    out["latency"] = lat
  stats = jax.devices()[0].memory_stats() or {}
  if stats.get("peak_bytes_in_use"):
    out["peak_memory"] = dict(bytes=int(stats["peak_bytes_in_use"]), kind="device")
  else:
    out["peak_memory"] = dict(bytes=_host_peak_rss(), kind="host RSS")
  return out


# ----------------------------------------------------------------------------------------------- PyTorch worker


def run_torch(spec: dict[str, Any]) -> dict[str, Any]:
  try:
    import torch  # noqa: PLC0415
  except ImportError as e:
    return dict(skipped=f"PyTorch not installed ({e})")
  try:
    import mos_jax.reference.torch as ref  # noqa: PLC0415
  except ImportError as e:
    return dict(skipped=f"mos_jax.reference.torch not importable ({type(e).__name__}: {e})",
                versions={"torch": torch.__version__})
  case, common, mode = spec["case"], spec["common"], spec["mode"]
  dev = torch.device("cuda" if spec["device"] == "gpu" else "cpu")
  if dev.type == "cuda":
    torch.set_float32_matmul_precision("high")  # TF32, as JAX's default float32 matmul precision on GPUs
  torch.manual_seed(spec["seed"])
  if dev.type == "cpu" and spec.get("cpu_threads", 0) > 0:
    torch.set_num_threads(spec["cpu_threads"])
  cfg = model_config(case, common, "float32")  # parameters float32; bf16 modes autocast
  model = ref.build_model(cfg).to(dev)
  amp = MODES[mode]["dtype"] == "bfloat16"
  compiled = mode.startswith("torch-compile")
  kind = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
  out: dict[str, Any] = dict(device_kind=kind,
                             backend=dev.type, versions={"torch": torch.__version__})
  fwd = model
  if compiled:
    if not hasattr(torch, "compile"):
      return dict(out, skipped="torch.compile not available in this PyTorch")
    fwd = torch.compile(model)

  def to_dev(b):
    return {k: torch.as_tensor(v).to(dev) for k, v in b.items()}

  def sync():
    if dev.type == "cuda":
      torch.cuda.synchronize(dev)

  def autocast():
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp)

  batch = to_dev(make_batch(case, common, case["B"], spec["seed"]))
  if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats(dev)

  def infer_call(b):
    with torch.inference_mode(), autocast():
      fwd(b).logits.float()
    sync()

  model.eval()
  try:
    out["infer"] = _summary(_time_calls(lambda: infer_call(batch), spec["warmup"], spec["steps"]), case["B"])
  except Exception as e:  # noqa: BLE001  (torch.compile may fail on this machine: a skipped row, not a crash)
    if compiled:
      return dict(out, skipped=f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    raise
  tcfg = _train_config()
  try:
    from mos_jax.reference.torch.training import decays  # noqa: PLC0415

    flags = decays(model, tuple(tcfg.no_decay))
  except ImportError:
    flags = {n: p.ndim > 1 for n, p in model.named_parameters()}
  named = dict(model.named_parameters())
  groups = [{"params": [p for n, p in named.items() if flags[n]], "weight_decay": tcfg.weight_decay},
            {"params": [p for n, p in named.items() if not flags[n]], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=tcfg.learning_rate, betas=(tcfg.b1, tcfg.b2), eps=tcfg.eps,
                          **({"fused": True} if dev.type == "cuda" else {}))
  model.train()

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast():
      o = fwd(batch)
      loss, _ = ref.total_loss(o.logits.float(), o.aux_loss.float(), batch, cfg.task)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip_norm)
    opt.step()
    sync()

  out["train"] = _summary(_time_calls(step, spec["warmup"], spec["steps"]), case["B"])
  if case.get("latency"):
    model.eval()
    lat = {}
    for n in spec.get("latency_batches", LATENCY_BATCHES):
      small = to_dev(make_batch(case, common, n, spec["seed"] + n))
      lat[f"b{n}"] = _latency(_time_calls(lambda: infer_call(small), spec["warmup"], spec["latency_calls"]))
    out["latency"] = lat
  if dev.type == "cuda":
    out["peak_memory"] = dict(bytes=int(torch.cuda.max_memory_allocated(dev)), kind="device")
  else:
    out["peak_memory"] = dict(bytes=_host_peak_rss(), kind="host RSS")
  return out


def _train_config():
  from mos_jax.training.config import TrainConfig  # noqa: PLC0415

  return TrainConfig()


def worker_main(spec_path: str, result_path: str) -> int:
  spec = json.loads(pathlib.Path(spec_path).read_text())
  if spec["device"] == "cpu" and spec.get("cpu_threads", 0) > 0:  # before jax / torch start their thread pools
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:spec["cpu_threads"]]))
  from mos_jax.runtime import tune_host_allocator  # noqa: PLC0415

  # The same glibc settings for both frameworks' processes: what train.py runs with (MOS_JAX_MALLOC=default: none).
  allocator = "tuned" if tune_host_allocator() else "default"
  try:
    res = run_jax(spec) if MODES[spec["mode"]]["framework"] == "jax" else run_torch(spec)
    res["host_allocator"] = allocator
  except Exception as e:  # noqa: BLE001  (reported in the row, the other rows go on)
    res = dict(error=f"{type(e).__name__}: {str(e)[:400]}")
  pathlib.Path(result_path).write_text(json.dumps(res, default=str))
  return 0


# ----------------------------------------------------------------------------------------------- parent


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "tpu"))
  p.add_argument("--quick", action="store_true", help="tiny shapes (a smoke run); same cases, modes and protocol")
  p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
  p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
  p.add_argument("--steps", type=int, default=20, help="timed calls per measurement (>= 20)")
  p.add_argument("--warmup", type=int, default=3, help="untimed calls first (compilation included)")
  p.add_argument("--latency_calls", type=int, default=200, help="calls per latency measurement (>= 200)")
  p.add_argument("--latency_batches", default=",".join(map(str, LATENCY_BATCHES)),
                 help="comma-separated inference batch sizes for the latency rows of the L = 1024 cases")
  p.add_argument("--batch", type=int, default=0,
                 help="train / inference batch of every case (0 = the case's own: the issue's shapes). On a 2-core "
                      "CPU the issue's B = 1024 MoS case needs far more than 24 GiB; the CPU table states the B used")
  p.add_argument("--torch_compile", default="auto", choices=("auto", "on", "off"),
                 help="auto: on, except on CPU with --quick (inductor's C++ build takes minutes on 2 cores)")
  p.add_argument("--cpu_threads", type=int, default=0,
                 help="CPU only: pin every row process to this many cores (affinity, OMP_NUM_THREADS, "
                      "torch.set_num_threads); 0 = each framework's default. On a shared machine, 1 avoids "
                      "PyTorch's OpenMP spin-waiting against other processes")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--timeout", type=int, default=900, help="seconds per row process")
  p.add_argument("--out", default="", help="output folder (default benchmarks/results/compare_torch_<device>[_quick])")
  p.add_argument("--worker", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.worker is None:
    if a.steps < 20:
      p.error(f"--steps={a.steps}: expected >= 20 (the median of at least 20 timed steps)")
    if a.latency_calls < 200:
      p.error(f"--latency_calls={a.latency_calls}: expected >= 200")
    try:
      a.latency_batches = tuple(int(b) for b in a.latency_batches.split(",") if b)
    except ValueError:
      p.error(f"--latency_batches={a.latency_batches!r}: expected comma-separated integers")
    if a.batch < 0 or any(b < 1 for b in a.latency_batches):
      p.error("--batch and --latency_batches: expected positive batch sizes (--batch 0 = the case's own)")
    for field, names, known in (("--cases", a.cases, CASES), ("--modes", a.modes, MODES)):
      bad = [n for n in names.split(",") if n and n not in known]
      if bad:
        p.error(f"{field}: unknown {bad}; expected a subset of {list(known)}")
  return a


def _worker_env(device: str, cpu_threads: int = 0) -> dict[str, str]:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
  env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # the allocator peak then is what the row used
  if device == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""
    if cpu_threads > 0:
      env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(cpu_threads)
  env.pop("XLA_FLAGS", None)  # one device, whatever the caller's test setup forced
  return env


def run_row(a: argparse.Namespace, case_name: str, case: dict, common: dict, mode: str, tmp: pathlib.Path) -> dict:
  spec = dict(case=case, common=common, mode=mode, device=a.device, cpu_threads=a.cpu_threads, seed=a.seed,
              steps=a.steps, warmup=a.warmup, latency_calls=a.latency_calls,
              latency_batches=list(a.latency_batches))
  spec_path, res_path = tmp / f"{case_name}.{mode}.spec.json", tmp / f"{case_name}.{mode}.result.json"
  spec_path.write_text(json.dumps(spec))
  t0 = time.perf_counter()
  try:
    proc = subprocess.run([sys.executable, __file__, "--worker", str(spec_path), str(res_path)],
                          env=_worker_env(a.device, a.cpu_threads), capture_output=True, text=True, timeout=a.timeout)
    res = json.loads(res_path.read_text()) if res_path.exists() else dict(
        error=f"worker exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}")
  except subprocess.TimeoutExpired:
    res = dict(error=f"timed out after {a.timeout} s")
  res.update(case=case_name, mode=mode, framework=MODES[mode]["framework"], dtype=MODES[mode]["dtype"],
             wall_s=time.perf_counter() - t0)
  return res


def derive(rows: list[dict], cases: dict, common: dict, peaks: dict[str, Any]) -> None:
  """Adds FLOPs, TFLOP/s, MFU and the roofline floor to every measured row (in place)."""
  from mos_jax.models.flops import count_flops  # noqa: PLC0415

  xla = {(r["case"], r["dtype"]): r for r in rows if r["framework"] == "jax" and "train_xla" in r}
  for r in rows:
    case = cases[r["case"]]
    cfg = model_config(case, common, r["dtype"])
    fl = count_flops(cfg, batch_size=case["B"])
    r["flops_fwd_per_example"] = fl["total"]
    r["flops_executed_per_example"] = fl["executed"]
    peak = peaks.get(r["dtype"])
    for phase, mult in (("infer", 1), ("train", 3)):
      m = r.get(phase)
      if not m:
        continue
      flops = mult * fl["total"] * case["B"]
      m["flops"] = flops
      m["tflops_per_s"] = flops / m["median_s"] / 1e12
      m["mfu"] = flops / m["median_s"] / peak if peak else None
      x = xla.get((r["case"], r["dtype"]), {}).get(f"{phase}_xla") or {}
      if peak and x.get("bytes") and peaks.get("bandwidth"):
        floor = max(flops / peak, x["bytes"] / peaks["bandwidth"])
        m.update(xla_bytes=x["bytes"], xla_flops=x.get("flops"), roofline_floor_s=floor,
                 floor_ratio=m["median_s"] / floor)


def speedups(rows: list[dict]) -> list[dict]:
  """JAX examples/s over PyTorch's, per case and phase, at the same dtype."""
  by = {(r["case"], r["mode"]): r for r in rows}
  pairs = (("jax-jit-f32", "torch-eager-f32"), ("jax-jit-bf16", "torch-eager-amp-bf16"),
           ("jax-jit-bf16", "torch-compile-bf16"), ("jax-jit-f32", "torch-eager-amp-bf16"))
  out = []
  for case in dict.fromkeys(r["case"] for r in rows):
    for j, t in pairs:
      rj, rt = by.get((case, j), {}), by.get((case, t), {})
      for phase in ("train", "infer"):
        if rj.get(phase) and rt.get(phase):
          out.append(dict(case=case, phase=phase, jax=j, torch=t,
                          ratio=rj[phase]["examples_per_s"] / rt[phase]["examples_per_s"]))
  return out


def _fmt(x, spec: str = ".3g") -> str:
  return "-" if x is None else format(x, spec)


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.3g}%"


def markdown(report: dict) -> str:
  m = report["machine"]
  lines = [f"# JAX vs PyTorch ({'quick, tiny shapes' if report['quick'] else 'full shapes'}, {report['device']})", "",
           f"Machine: {m['device_kind']} ({m['backend']}), {m['cpus']} CPU cores"
           f"{' (rows pinned to ' + str(m['cpu_threads']) + ')' if m.get('cpu_threads') else ''}, "
           f"Python {m['python']}; "
           f"{', '.join(f'{k} {v}' for k, v in report['versions'].items())}.", "",
           f"Command: `{report['command']}`", "",
           f"Peak used for MFU / roofline ({report['peak_key']}): float32 {_fmt(report['peaks'].get('float32'))} "
           f"FLOP/s, bfloat16 {_fmt(report['peaks'].get('bfloat16'))} FLOP/s, bandwidth "
           f"{_fmt(report['peaks'].get('bandwidth'))} B/s. Source: {report['peaks'].get('source', 'unknown device')}.",
           "", "| case | B | L | D | K | mode | phase | median ms | examples/s | TFLOP/s | MFU | floor ms | x floor | "
           "peak MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  cases = report["cases"]
  notes = []
  for r in report["rows"]:
    c = cases[r["case"]]
    head = f"| {r['case']} | {c['B']} | {c['S'] * c['T']} | {c['D']} | {c['K']} | {r['mode']} "
    if "error" in r or "skipped" in r:
      why = r.get("error") or r.get("skipped")
      lines.append(head + f"| - | {'error' if 'error' in r else 'skipped'} | - | - | - | - | - | - |")
      notes.append(f"- {r['case']} / {r['mode']}: {why}")
      continue
    mem = r.get("peak_memory", {})
    for phase in ("train", "infer"):
      p = r.get(phase) or {}
      lines.append(head + f"| {phase} | {_fmt(1e3 * p['median_s'], '.2f')} | {_fmt(p['examples_per_s'], ',.0f')} | "
                   f"{_fmt(p.get('tflops_per_s'), '.3g')} | {_pct(p.get('mfu'))} | "
                   f"{_fmt(1e3 * p['roofline_floor_s'] if p.get('roofline_floor_s') else None, '.3f')} | "
                   f"{_fmt(p.get('floor_ratio'), '.1f')} | {_fmt(mem.get('bytes', 0) / 2**20, '.0f')} |")
  lines += ["", "Peak MiB: " + ("device allocator peak." if report["backend"] != "cpu" else
                                "process peak RSS (host memory, compilation included; one process per row)."), ""]
  lat = [(r, b, v) for r in report["rows"] for b, v in (r.get("latency") or {}).items()]
  if lat:
    lines += ["## Inference latency (inputs on the device)", "",
              "| case | L | mode | batch | p50 ms | p99 ms | calls |",
              "|---|---|---|---|---|---|---|"]
    for r, b, v in lat:
      c = cases[r["case"]]
      lines.append(f"| {r['case']} | {c['S'] * c['T']} | {r['mode']} | {b[1:]} | {v['p50_ms']:.3f} | "
                   f"{v['p99_ms']:.3f} | {v['calls']} |")
    lines.append("")
  if report["speedups"]:
    lines += ["## JAX / PyTorch examples/s", "", "| case | phase | JAX | PyTorch | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {s['case']} | {s['phase']} | {s['jax']} | {s['torch']} | {s['ratio']:.2f}x |"
              for s in report["speedups"]]
    lines.append("")
  if notes:
    lines += ["## Rows not measured", ""] + notes + [""]
  lines += ["FLOPs: analytic model FLOPs (`count_flops(cfg)['total']` per example x B; train = 3 x forward). "
            "Floor: max(FLOPs / peak, XLA bytes accessed / bandwidth) of the JAX function of the same case and "
            "dtype; x floor = median / floor.", ""]
  return "\n".join(lines)


def _write_atomic(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def main(argv=None) -> int:
  a = parse_args(argv)
  if a.worker:
    return worker_main(*a.worker)
  import tempfile  # noqa: PLC0415

  cases_all, common = (QUICK_CASES, QUICK_COMMON) if a.quick else (CASES, COMMON)
  cases = {n: {**cases_all[n], **({"B": a.batch} if a.batch else {})} for n in a.cases.split(",") if n}
  modes = [m for m in a.modes.split(",") if m]
  use_compile = a.torch_compile == "on" or (a.torch_compile == "auto" and not (a.quick and a.device == "cpu"))
  out = pathlib.Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"compare_torch_{a.device}" \
      f"{'_quick' if a.quick else ''}"
  out.mkdir(parents=True, exist_ok=True)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for case_name, case in cases.items():
      for mode in modes:
        if mode.startswith("torch-compile") and not use_compile:
          rows.append(dict(case=case_name, mode=mode, framework="torch", dtype=MODES[mode]["dtype"],
                           skipped="torch.compile off (--torch_compile=auto skips it on CPU with --quick: inductor's "
                                   "C++ build takes minutes on 2 cores; --torch_compile=on to include it)"))
          continue
        r = run_row(a, case_name, case, common, mode, pathlib.Path(tmp))
        status = r.get("error") or r.get("skipped") or \
            f"train {r['train']['examples_per_s']:,.0f} ex/s, infer {r['infer']['examples_per_s']:,.0f} ex/s"
        print(f"{case_name:>18} {mode:<22} {r['wall_s']:6.1f}s  {status}", flush=True)
        rows.append(r)
  measured = [r for r in rows if "train" in r]
  kinds = {r["device_kind"]: r["backend"] for r in measured if r["framework"] == "jax"}
  device_kind, backend = next(iter(kinds.items())) if kinds else (platform.processor() or "cpu", a.device)
  key = peak_key(device_kind, backend)
  peaks = cpu_peak(a.cpu_threads or None) if key == "cpu" else PEAKS.get(key, {})
  if key == "cpu":
    names = re.findall(r"^model name\s*:\s*(.*)$", pathlib.Path("/proc/cpuinfo").read_text(), re.M) \
        if pathlib.Path("/proc/cpuinfo").exists() else []
    device_kind = names[0] if names else (platform.processor() or "cpu")
  derive(measured, cases, common, peaks)
  versions = {}
  for r in rows:
    versions.update(r.get("versions", {}))
  report = dict(device=a.device, quick=a.quick, command="python benchmarks/compare_torch.py " + " ".join(
                    sys.argv[1:] if argv is None else argv),
                machine=dict(device_kind=device_kind, backend=backend, cpus=os.cpu_count(),
                             cpu_threads=a.cpu_threads, python=platform.python_version(),
                             platform=platform.platform()),
                backend=backend, versions=versions, peak_key=key, peaks=peaks, cases=cases, common=common,
                protocol=dict(steps=a.steps, warmup=a.warmup, latency_calls=a.latency_calls,
                              latency_batches=list(a.latency_batches), seed=a.seed,
                              cpu_threads=a.cpu_threads),
                rows=rows, speedups=speedups(measured))
  _write_atomic(out / "compare_torch.json", json.dumps(report, indent=2, default=str) + "\n")
  md = markdown(report)
  _write_atomic(out / "compare_torch.md", md)
  print(md)
  print(f"wrote {out / 'compare_torch.json'} and {out / 'compare_torch.md'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
