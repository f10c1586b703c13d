"""A cost model you can check: predicted step time and per-device memory, next to measurements where possible.

  python benchmarks/cost_model.py                 # CPU points (1 core each), then the full-scale Taobao predictions
  python benchmarks/cost_model.py --quick         # tiny shapes everywhere: a smoke run (tests/test_cost_model.py)

Prediction for one train step (forward + backward + AdamW, ``bench_model.train_step_fn``) on one device of a mesh:

* compute  = FLOPs / (peak FLOP/s x compute efficiency); FLOPs = 3 x ``count_flops(cfg)['executed']`` x local batch
  (train = 3 x forward, the usual convention);
* memory   = bytes moved / (HBM bandwidth x memory efficiency); bytes = XLA's cost analysis ("bytes accessed") of the
  compiled step. Full-scale configurations are compiled here shape-only (``nnx.eval_shape``, nothing allocated) at
  each per-device batch they need; the fixed part of the bytes (the optimizer update, from a linear fit over those
  batches) is scaled by the share of the parameters a device holds;
* collectives = bytes each device sends / (link bandwidth x link efficiency): the data-parallel all-reduce of the
  replicated parameters' gradients (ring: 2 (n-1)/n x bytes), the expert-axis all-to-all of the dispatched buffers
  ``[B, K, C, T, D]`` (forward and backward: 2 (n-1)/n x bytes) and the collectives XLA inserts for a row-sharded
  table lookup (read from the HLO of a sharded gather: the indices are all-gathered, each device gathers the rows it
  holds for the *whole* group's batch, the ``[B_group, L, D]`` result is all-reduced (2 (n-1)/n), and the backward
  all-gathers its cotangent ((n-1)/n): 3 (n-1)/n x B_group x lookups x D x 4 bytes per table);
* step = max(compute, memory) + collectives (all exposed: no overlap assumed, an upper bound).

Per-device memory = parameters + AdamW moments (2) + gradients, split into the embedding tables and the rest with the
mesh's sharding (``training.sharding`` rules: expert stacks over ``expert``, tables over ``data`` or ``model``), plus
activations (XLA's memory analysis: temp bytes minus gradients), plus on CPU the runtime (Python, JAX, the
compiled program), calibrated as below.

Devices: peak FLOP/s and HBM bandwidth from ``compare_torch.PEAKS`` (H100 SXM, H200, TPU v5e; sources there) plus
link bandwidth and memory from ``LINKS`` (sources there); the CPU's peak and bandwidth from ``compare_torch.cpu_peak``
(cores x GHz x FMA width; bandwidth measured by a numpy copy). Efficiency factors: accelerators use the stated
``ACCEL_EFFICIENCY`` (assumptions, not calibrated: no accelerator was measured); the CPU's single factor is calibrated
on ONE configuration (``CALIBRATION``, not among the checked points; run first and again last, as the machine's load
drifts): efficiency = roofline floor / mean measured step, and the runtime memory = measured peak RSS - XLA's bytes.
Every checked point is then predicted from these two numbers.

CPU points: each in its own subprocess pinned to one core (``--core``), float32, bench_model's train step compiled
once, ``--warmup`` calls excluded, median of ``--steps`` calls; peak memory = the child's VmHWM (/proc/self/status)
over the training steps (reset after compiling: on an accelerator compilation uses no device memory).
Writes JSON (temp file, then rename) and prints the tables.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import math
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_large_vocab import status_kib  # noqa: E402  (VmHWM / VmRSS of this process)
from compare_torch import PEAKS, cpu_peak  # noqa: E402  (one device peak table, not a copy)

F32 = 4
# What compare_torch.PEAKS does not hold: per-device interconnect bandwidth (each direction) and memory.
LINKS: dict[str, dict[str, Any]] = {
    "h100-sxm": dict(link_bandwidth=450e9, memory_bytes=80e9,
                     source="NVIDIA H100 datasheet (SXM5): NVLink 900 GB/s per GPU, both directions (450 GB/s each "
                            "way), 80 GB HBM3"),
    "h200": dict(link_bandwidth=450e9, memory_bytes=141e9,
                 source="NVIDIA H200 datasheet (SXM): NVLink 900 GB/s per GPU (450 GB/s each way), 141 GB HBM3e"),
    "tpu-v5e": dict(link_bandwidth=200e9, memory_bytes=16e9,
                    source="Google Cloud TPU v5e documentation: inter-chip interconnect 1,600 Gbps (200 GB/s) per "
                           "chip, 16 GB HBM2 per chip, slices up to 256 chips (16 x 16)"),
}
# Stated, not calibrated (no accelerator measured here): achieved / peak for matmul work at D = 64 (half the width of
# a 128-wide MXU / tensor-core tile is idle in the K = 64 contractions), for streaming memory traffic, and for
# large-message collectives.
ACCEL_EFFICIENCY = dict(compute=0.35, memory=0.7, link=0.7)


@dataclasses.dataclass(frozen=True)
class Device:
  """One device of a mesh: peaks, bandwidths and the efficiency factors the prediction divides by."""

  name: str
  peak_flops: float  # FLOP/s for the run's dtype
  hbm_bandwidth: float  # bytes/s
  link_bandwidth: float  # bytes/s each direction, for collectives
  memory_bytes: float
  compute_efficiency: float
  memory_efficiency: float
  link_efficiency: float
  source: str


def accelerator(key: str, dtype: str = "bfloat16") -> Device:
  """H100 SXM, H200 or TPU v5e from compare_torch.PEAKS + LINKS, with ACCEL_EFFICIENCY."""
  if key not in LINKS:
    raise ValueError(f"accelerator: {key!r} has no entry; expected one of {tuple(LINKS)}")
  peak, link = PEAKS[key], LINKS[key]
  return Device(name=key, peak_flops=peak[dtype], hbm_bandwidth=peak["bandwidth"],
                link_bandwidth=link["link_bandwidth"], memory_bytes=link["memory_bytes"],
                compute_efficiency=ACCEL_EFFICIENCY["compute"], memory_efficiency=ACCEL_EFFICIENCY["memory"],
                link_efficiency=ACCEL_EFFICIENCY["link"], source=f"{peak['source']}; {link['source']}")


# ----------------------------------------------------------------------------------------------- formulas


def allreduce_bytes(nbytes: float, n: int) -> float:
  """Bytes one device sends in a ring all-reduce of ``nbytes`` over ``n`` devices: 2 (n-1)/n x nbytes."""
  return 2.0 * (n - 1) / n * nbytes if n > 1 else 0.0


def allgather_bytes(nbytes: float, n: int) -> float:
  """Bytes one device receives in an all-gather (or sends in an all-to-all) of ``nbytes`` in all: (n-1)/n x nbytes."""
  return (n - 1) / n * nbytes if n > 1 else 0.0


def step_time(flops: float, bytes_moved: float, collective_bytes: float, dev: Device) -> dict[str, float]:
  """Roofline step time of one device: max(compute, memory) + collectives (all exposed)."""
  compute = flops / (dev.peak_flops * dev.compute_efficiency)
  memory = bytes_moved / (dev.hbm_bandwidth * dev.memory_efficiency)
  comm = collective_bytes / (dev.link_bandwidth * dev.link_efficiency) if collective_bytes else 0.0
  parts = {"compute": compute, "memory": memory, "collectives": comm}
  return dict(compute_s=compute, memory_s=memory, collectives_s=comm, step_s=max(compute, memory) + comm,
              dominant=max(parts, key=parts.get))


@dataclasses.dataclass(frozen=True)
class Mesh:
  """(data, expert, model) sizes and where the embedding tables' rows go (``train.embedding_sharding``)."""

  data: int = 1
  expert: int = 1
  model: int = 1
  embedding: str = "none"  # none | data | model

  def __post_init__(self):
    if self.embedding not in ("none", "data", "model"):
      raise ValueError(f"Mesh.embedding={self.embedding!r}: expected none, data or model")
    if min(self.data, self.expert, self.model) < 1:
      raise ValueError(f"Mesh sizes (data, expert, model) = {(self.data, self.expert, self.model)}: expected >= 1")

  @property
  def devices(self) -> int:
    return self.data * self.expert * self.model

  @property
  def rows_split(self) -> int:
    return {"none": 1, "data": self.data, "model": self.model}[self.embedding]


@dataclasses.dataclass(frozen=True)
class ParamCounts:
  """Parameter counts by sharding class: replicated dense, stacked experts, and each embedding table (rows x D)."""

  dense: int
  expert: int
  tables: dict[str, tuple[int, int]]  # name -> (rows, D)

  @property
  def table_params(self) -> int:
    return sum(r * d for r, d in self.tables.values())

  @property
  def total(self) -> int:
    return self.dense + self.expert + self.table_params


def local_params(p: ParamCounts, mesh: Mesh) -> dict[str, float]:
  """Parameters one device holds: dense replicated, experts / expert axis, tables / the axis their rows split over."""
  return dict(dense=float(p.dense), expert=p.expert / mesh.expert, tables=p.table_params / mesh.rows_split)


def memory_per_device(p: ParamCounts, mesh: Mesh, activations: float, runtime: float = 0.0) -> dict[str, float]:
  """Bytes per device: float32 parameters, 2 AdamW moments and gradients, tables apart; + activations + runtime."""
  loc = local_params(p, mesh)
  model = loc["dense"] + loc["expert"]
  out = dict(params=F32 * model, optimizer=2 * F32 * model, gradients=F32 * model,
             embeddings=4 * F32 * loc["tables"],  # table + 2 moments + its (dense) gradient
             activations=float(activations), runtime=float(runtime))
  out["total"] = sum(out.values())
  return out


def collective_volume(p: ParamCounts, mesh: Mesh, global_batch: int, lookups: int, dispatched: float = 0.0,
                      act_bytes: int = F32) -> dict[str, float]:
  """Bytes one device sends per train step.

  ``lookups``: table rows looked up per example and table (history + target); ``dispatched``: elements of the
  dispatched expert buffers per example (K x C x T x D for MoS); ``act_bytes``: their element size.
  """
  b_data = global_batch / mesh.data  # the batch of one data shard (replicated over expert and model)
  # Gradients of what is replicated over `data` are all-reduced over it: dense, expert shards, and tables unless
  # their rows are split over `data` itself (then the sharded lookup below carries the gradient).
  replicated = p.dense + p.expert / mesh.expert + (0 if mesh.embedding == "data" else p.table_params / mesh.rows_split)
  grads = allreduce_bytes(F32 * replicated, mesh.data)
  expert = 2 * allgather_bytes(act_bytes * dispatched * b_data, mesh.expert)
  emb = 0.0
  if mesh.embedding != "none":
    group_batch = global_batch if mesh.embedding == "data" else b_data
    for _, d in p.tables.values():
      result = F32 * group_batch * lookups * d  # the gathered rows, float32 like the table
      emb += allreduce_bytes(result, mesh.rows_split) + allgather_bytes(result, mesh.rows_split)
  return dict(gradient_allreduce=grads, expert_all_to_all=expert, embedding_rows=emb, total=grads + expert + emb)


def train_flops(cfg, batch: int) -> float:
  """3 x forward executed FLOPs (count_flops) x batch."""
  from mos_jax.models.flops import count_flops  # noqa: PLC0415

  return 3.0 * count_flops(cfg, batch_size=batch)["executed"] * batch


def linear_fit(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float]:
  """(fixed, per-unit) of the line through two points."""
  per = (y1 - y0) / (x1 - x0)
  return y0 - per * x0, per


# ----------------------------------------------------------------------------------------------- configurations

# CPU points: model, batch, S, T, D = H, layers, K (MoS themes = MoE experts). Each step < 2 s on one core.
POINTS: dict[str, dict[str, Any]] = {
    "backbone_L64_D32": dict(model="backbone", B=64, S=8, T=8, D=32, layers=1, K=4),
    "backbone_L256_D64": dict(model="backbone", B=32, S=16, T=16, D=64, layers=2, K=4),
    "mos_L64_D32": dict(model="mos", B=64, S=8, T=8, D=32, layers=1, K=4),
    "mos_L256_D64": dict(model="mos", B=32, S=16, T=16, D=64, layers=2, K=4),
    "gshard_L64_D32": dict(model="gshard", B=64, S=8, T=8, D=32, layers=1, K=4),
    "gshard_L128_D64": dict(model="gshard", B=32, S=16, T=8, D=64, layers=1, K=4),
}
CALIBRATION = ("calibration_backbone_L128_D48", dict(model="backbone", B=48, S=16, T=8, D=48, layers=1, K=4))
QUICK_POINTS = {"backbone_tiny": dict(model="backbone", B=8, S=2, T=4, D=8, layers=1, K=2)}
QUICK_CALIBRATION = ("calibration_tiny", dict(model="backbone", B=8, S=4, T=2, D=8, layers=1, K=2))
POINT_COMMON = dict(num_items=2000, num_cats=50, heads=2, task="ctr", dtype="float32", seed=0)

# Taobao UserBehavior at full scale (the public release's stated totals).
TAOBAO = dict(users=987_994, items=4_162_024, cats=9_439, events=100_150_807)
# One epoch: every event with an earlier one is a target (max_train_targets_per_user=0), the last two per user are
# valid / test, and CTR adds neg_ratio = 1 sampled negative per positive.
FULL_MODEL = dict(S=64, T=16, D=64, layers=2, heads=2, K=8, dtype="bfloat16")
QUICK_FULL_MODEL = dict(S=4, T=4, D=16, layers=1, heads=2, K=2, dtype="bfloat16")
TARGETS = {  # name: (device key, devices, global batch)
    "v5e-256": ("tpu-v5e", 256, 16_384),
    "8xH100": ("h100-sxm", 8, 4_096),
}


def epoch_examples(neg_ratio: int = 1) -> int:
  positives = TAOBAO["events"] - 3 * TAOBAO["users"]  # first event (no history), valid and test targets
  return positives * (1 + neg_ratio)


def layouts(devices: int) -> dict[str, Mesh]:
  """The meshes compared at full scale: tables replicated, rows over data, rows over an 8-wide model axis."""
  out = {"tables replicated": Mesh(data=devices), "rows over data": Mesh(data=devices, embedding="data")}
  if devices % 8 == 0 and devices > 8:
    out["rows over model=8"] = Mesh(data=devices // 8, model=8, embedding="model")
  return out


def model_config(spec: dict[str, Any], common: dict[str, Any]):
  from mos_jax.models.config import ModelConfig  # noqa: PLC0415

  cfg = ModelConfig(name=spec["model"], backbone="sasrec", task=common["task"], num_items=common["num_items"],
                    num_cats=common["num_cats"], num_sessions=spec["S"], session_len=spec["T"], embed_dim=spec["D"],
                    hidden_dim=spec["D"], num_layers=spec["layers"], num_heads=common["heads"],
                    num_themes=spec["K"], dtype=common["dtype"])
  cfg.moe = dataclasses.replace(cfg.moe, num_experts=spec["K"])
  return cfg.validate()


def batch_namespace(spec: dict[str, Any], common: dict[str, Any], batch: int) -> argparse.Namespace:
  return argparse.Namespace(batch=batch, sessions=spec["S"], session_len=spec["T"], num_items=common["num_items"],
                            num_cats=common["num_cats"], themes=spec["K"], task=common["task"])


def param_counts(cfg) -> ParamCounts:
  """Parameter counts of ``cfg``'s model by sharding class, from shapes only (nothing allocated)."""
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from mos_jax.models import build_model  # noqa: PLC0415
  from mos_jax.training.sharding import embedding_table, is_expert_path  # noqa: PLC0415

  model = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
  _, params, _ = nnx.split(model, nnx.Param, ...)
  dense = expert = 0
  tables = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]:
    n = math.prod(leaf.shape)
    table = embedding_table(path)
    if table is not None:
      tables[table] = tuple(leaf.shape)
    elif is_expert_path(path):
      expert += n
    else:
      dense += n
  return ParamCounts(dense=dense, expert=expert, tables=tables)


def dispatched_elements(cfg) -> float:
  """Elements of MoS's dispatched theme buffers per example, K x C x T x D (0 for models without them)."""
  if cfg.name != "mos" or not cfg.use_theme_experts:
    return 0.0
  from mos_jax.models import routing  # noqa: PLC0415

  top_k = cfg.top_k if cfg.route_by == "router" else 1
  c = routing.capacity(cfg.num_sessions, cfg.num_themes, top_k, cfg.capacity_factor, cfg.capacity_multiple)
  return float(cfg.num_themes * c * cfg.session_len * cfg.embed_dim)


def xla_costs(compiled) -> dict[str, float]:
  """Bytes accessed and the memory analysis of a compiled step."""
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else (ca or {})
  ma = compiled.memory_analysis()
  out = dict(flops=float(ca.get("flops", 0.0)), bytes=float(ca.get("bytes accessed", 0.0)))
  for key in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes"):
    out[key.replace("_size_in_bytes", "")] = float(getattr(ma, key, 0) or 0)
  # Peak of the step's own buffers: inputs + temps + outputs not written in place of a donated input.
  out["step_bytes"] = out["argument"] + out["temp"] + max(out["output"] - out["alias"], 0.0)
  return out


def abstract_step_costs(cfg, batch: int, common: dict[str, Any]) -> dict[str, float]:
  """Compiles bench_model's train step on shapes only (``nnx.eval_shape``) at ``batch``: XLA's costs, no run."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import optax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  import bench_model  # noqa: PLC0415
  from mos_jax.models import build_model  # noqa: PLC0415

  model = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(1e-3, weight_decay=1e-4)  # bench_model's optimizer
  opt_state = jax.eval_shape(tx.init, params)
  spec = dict(S=cfg.num_sessions, T=cfg.session_len, K=cfg.num_themes)
  host = bench_model.random_batch(batch_namespace(spec, common, batch), np.random.default_rng(0))
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host)
  step = bench_model.train_step_fn(graphdef, tx, cfg.task)
  return xla_costs(step.lower(params, opt_state, rest, shapes).compile())


# ----------------------------------------------------------------------------------------------- CPU measurement


def measure_child(spec: dict[str, Any], common: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
  """One CPU point, inside its subprocess: compile bench_model's step once, time it, read XLA's costs and VmHWM."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  import bench_model  # noqa: PLC0415
  from mos_jax.models import build_model  # noqa: PLC0415

  cfg = model_config(spec, common)
  model = build_model(cfg, rngs=nnx.Rngs(common["seed"]))
  _, train_step, params, rest, opt_state = bench_model.make_functions(model, cfg.task)
  batch = jax.device_put(bench_model.random_batch(batch_namespace(spec, common, spec["B"]),
                                                  np.random.default_rng(common["seed"])))
  t0 = time.perf_counter()
  compiled = train_step.lower(params, opt_state, rest, batch).compile()
  compile_s = time.perf_counter() - t0
  process_peak = 1024 * status_kib("VmHWM")  # so far: imports + compilation
  # The training-time peak is what a device holds; compilation runs on the host. Return the compiler's freed heap to
  # the OS, then restart the peak count (Linux: writing 5 to clear_refs resets VmHWM to the current RSS).
  ctypes.CDLL("libc.so.6").malloc_trim(0)
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  state = [params, opt_state, rest]
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    *state, loss = compiled(*state, batch)
    loss.block_until_ready()
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  step_peak = 1024 * status_kib("VmHWM")
  return dict(xla=xla_costs(compiled), step_s=statistics.median(times), step_times_s=times, compile_s=compile_s,
              peak_rss_bytes=step_peak, process_peak_rss_bytes=max(process_peak, step_peak), loss=float(loss),
              jax=jax.__version__)


def run_point(name: str, spec: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
  """Runs one CPU point in a fresh subprocess (its own peak RSS) pinned to ``--core``."""
  payload = json.dumps(dict(spec=spec, common=POINT_COMMON, steps=a.steps, warmup=a.warmup, core=a.core))
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", payload]
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false")
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout_s, cwd=ROOT, env=env)
  except subprocess.TimeoutExpired:
    return dict(name=name, spec=spec, error=f"timed out after {a.timeout_s:.0f} s")
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if proc.returncode != 0 or not lines:
    tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
    return dict(name=name, spec=spec, error=f"exit {proc.returncode}: {tail}"[:400])
  return dict(name=name, spec=spec, wall_s=time.perf_counter() - t0, **json.loads(lines[-1]))


def cpu_device(efficiency: float, cores: int = 1) -> Device:  # measures the bandwidth: call once
  """This machine's CPU (``cores`` pinned): compare_torch.cpu_peak's estimate with one calibrated efficiency."""
  peak = cpu_peak(cores)
  mem = pathlib.Path("/proc/meminfo").read_text() if pathlib.Path("/proc/meminfo").exists() else ""
  total = re.search(r"MemTotal:\s*(\d+)", mem)
  return Device(name="cpu", peak_flops=peak["float32"], hbm_bandwidth=peak["bandwidth"], link_bandwidth=math.inf,
                memory_bytes=1024.0 * int(total.group(1)) if total else math.nan, compute_efficiency=efficiency,
                memory_efficiency=efficiency, link_efficiency=1.0, source=peak["source"])


def cpu_prediction(row: dict[str, Any], dev: Device, runtime_bytes: float) -> dict[str, Any]:
  """Predicted step time and peak RSS of a measured CPU point, from the model's inputs only."""
  cfg = model_config(row["spec"], POINT_COMMON)
  p = param_counts(cfg)
  x = row["xla"]
  t = step_time(train_flops(cfg, row["spec"]["B"]), x["bytes"], 0.0, dev)
  # Activations: XLA's temp buffers less the gradients that live among them.
  mem = memory_per_device(p, Mesh(), activations=max(x["temp"] - F32 * p.total, 0.0), runtime=runtime_bytes)
  return dict(time=t, memory=mem, params=p.total, train_flops=train_flops(cfg, row["spec"]["B"]))


# ----------------------------------------------------------------------------------------------- full scale


def full_scale(a: argparse.Namespace) -> dict[str, Any]:
  """Per model (MoS-SASRec, its SASRec host), target and table layout: step, epoch and per-device memory."""
  spec = QUICK_FULL_MODEL if a.quick else FULL_MODEL
  common = dict(num_items=TAOBAO["items"], num_cats=TAOBAO["cats"], heads=spec["heads"], task="ctr",
                dtype=spec["dtype"])
  if a.quick:
    common.update(num_items=5000, num_cats=50)
  examples = epoch_examples()
  plan = [(target, key, n, gb, layout, mesh) for target, (key, n, gb) in TARGETS.items()
          for layout, mesh in layouts(n).items()]
  # Compiled shape-only at each per-device batch the layouts need (compile time hardly depends on the batch); two
  # batches at least, to split XLA's bytes into a per-example part and a fixed part (the optimizer update).
  batches = sorted({gb // mesh.data for *_, gb, _, mesh in plan})
  if len(batches) == 1:
    batches.insert(0, max(batches[0] // 2, 1))
  out: dict[str, Any] = dict(model=spec, common=common, epoch_examples=examples, profile_batches=batches, rows=[])
  for name in ("backbone",) if a.quick else ("mos", "backbone"):  # MoS compiles take minutes on 2 busy cores
    cfg = model_config(dict(spec, model=name), common)
    p = param_counts(cfg)
    t0 = time.perf_counter()
    costs = {b: abstract_step_costs(cfg, b, common) for b in batches}
    fixed_bytes, bytes_per_ex = linear_fit(batches[0], costs[batches[0]]["bytes"], batches[-1],
                                           costs[batches[-1]]["bytes"])
    print(f"  compiled {name} at B = {batches}: {time.perf_counter() - t0:.0f} s (bytes {bytes_per_ex / 1e6:.1f} "
          f"MB/example + {fixed_bytes / 1e9:.1f} GB fixed)", flush=True)
    out.setdefault("profiles", {})[name] = dict(
        params=dataclasses.asdict(p), fixed_bytes=fixed_bytes, bytes_per_example=bytes_per_ex,
        xla={str(b): c for b, c in costs.items()}, fwd_flops_per_example=train_flops(cfg, 1024) / 3 / 1024)
    for target, key, n, global_batch, layout, mesh in plan:
      dev = accelerator(key, spec["dtype"])
      b_loc = global_batch // mesh.data
      c = costs[b_loc]
      loc = local_params(p, mesh)
      share = (loc["dense"] + loc["expert"] + loc["tables"]) / p.total  # of the optimizer's fixed traffic
      flops = train_flops(cfg, global_batch) / global_batch * b_loc
      moved = c["bytes"] - fixed_bytes * (1 - share)
      coll = collective_volume(p, mesh, global_batch, cfg.num_sessions * cfg.session_len + 1,
                               dispatched_elements(cfg), act_bytes=2 if spec["dtype"] == "bfloat16" else F32)
      t = step_time(flops, moved, coll["total"], dev)
      # Activations: XLA's temp buffers at this batch less the (single-device, unsharded) gradients among them.
      mem = memory_per_device(p, mesh, activations=max(c["temp"] - F32 * p.total, 0.0))
      steps = math.ceil(examples / global_batch)
      out["rows"].append(dict(model=name, target=target, device=key, devices=n, layout=layout,
                              mesh=dataclasses.asdict(mesh), global_batch=global_batch, local_batch=b_loc,
                              flops=flops, bytes=moved, collectives=coll, time=t, memory=mem,
                              fits=mem["total"] <= 0.9 * dev.memory_bytes, device_memory=dev.memory_bytes,
                              steps_per_epoch=steps, epoch_s=steps * t["step_s"]))
  return out


# ----------------------------------------------------------------------------------------------- report


def cpu_table(rows: list[dict[str, Any]]) -> str:
  lines = ["| point | B | S x T | D | layers | K | step ms predicted | measured | ratio | peak RSS MiB predicted | "
           "measured | ratio | bound |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    s = r["spec"]
    head = f"| {r['name']} ({s['model']}) | {s['B']} | {s['S']} x {s['T']} | {s['D']} | {s['layers']} | {s['K']} "
    if "error" in r:
      lines.append(head + f"| failed: {r['error'][:80]} |" + " |" * 7)
      continue
    p = r["predicted"]
    lines.append(head + f"| {1e3 * p['time']['step_s']:.1f} | {1e3 * r['step_s']:.1f} | {r['time_ratio']:.2f} | "
                 f"{p['memory']['total'] / 2**20:.0f} | {r['peak_rss_bytes'] / 2**20:.0f} | "
                 f"{r['memory_ratio']:.2f} | {p['time']['dominant']} |")
  return "\n".join(lines)


def full_table(fs: dict[str, Any]) -> str:
  lines = ["| model | target | tables | global B (per device) | step ms | compute / memory / collectives ms | "
           "epoch | GiB per device: params+opt+grads / tables / activations / total | fits | dominant |",
           "|---|---|---|---|---:|---|---:|---|---|---|"]
  for r in fs["rows"]:
    t, m = r["time"], r["memory"]
    dense = m["params"] + m["optimizer"] + m["gradients"]
    lines.append(f"| {r['model']} | {r['target']} | {r['layout']} | {r['global_batch']:,} ({r['local_batch']}) | "
                 f"{1e3 * t['step_s']:.1f} | {1e3 * t['compute_s']:.1f} / {1e3 * t['memory_s']:.1f} / "
                 f"{1e3 * t['collectives_s']:.1f} | {r['epoch_s'] / 60:.1f} min | "
                 f"{dense / 2**30:.2f} / {m['embeddings'] / 2**30:.2f} / {m['activations'] / 2**30:.2f} / "
                 f"{m['total'] / 2**30:.2f} | {'yes' if r['fits'] else 'NO'} | {t['dominant']} |")
  return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="tiny shapes everywhere (a smoke run, not a measurement)")
  p.add_argument("--points", default="", help="comma-separated subset of the CPU points (default: all)")
  p.add_argument("--no-measure", dest="measure", action="store_false", help="skip the CPU points")
  p.add_argument("--no-full", dest="full", action="store_false", help="skip the full-scale predictions")
  p.add_argument("--steps", type=int, default=7, help="timed steps per CPU point (median)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  p.add_argument("--core", type=int, default=-1, help="CPU core the points are pinned to (-1: the last one)")
  p.add_argument("--timeout_s", type=float, default=180.0, help="per CPU point")
  p.add_argument("--json", default="benchmarks/results/cost_model.json")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: one CPU point, JSON spec
  a = p.parse_args(argv)
  if a.steps < 1 or a.warmup < 0:
    p.error(f"--steps={a.steps} must be >= 1 and --warmup={a.warmup} >= 0")
  return a


def main(argv=None) -> int:
  a = parse_args(argv)
  if a.child:
    job = json.loads(a.child)
    if job["core"] >= 0:
      os.sched_setaffinity(0, {job["core"]})
    print(json.dumps(measure_child(job["spec"], job["common"], job["steps"], job["warmup"])), flush=True)
    return 0
  if a.core < 0:
    a.core = max(os.sched_getaffinity(0))
  t_start = time.perf_counter()
  points = QUICK_POINTS if a.quick else POINTS
  if a.points:
    unknown = set(a.points.split(",")) - set(points)
    if unknown:
      raise SystemExit(f"--points: unknown {sorted(unknown)}; expected a subset of {tuple(points)}")
    points = {k: points[k] for k in a.points.split(",")}
  cal_name, cal_spec = QUICK_CALIBRATION if a.quick else CALIBRATION
  report: dict[str, Any] = dict(command="python benchmarks/cost_model.py " + " ".join(
      sys.argv[1:] if argv is None else argv), quick=a.quick, machine=dict(
      cpu=_cpu_name(), cpus=os.cpu_count(), pinned_core=a.core, python=platform.python_version(),
      load_average=os.getloadavg()), accelerator_efficiency=ACCEL_EFFICIENCY, links=LINKS)
  if a.measure:
    # The calibration point runs first and (unless --quick) again last: the machine is shared, so its load drifts.
    print(f"calibration point {cal_name} (pinned to core {a.core})", flush=True)
    cals = [run_point(cal_name, cal_spec, a)]
    rows = []
    for name, spec in points.items():
      rows.append(run_point(name, spec, a))
      r = rows[-1]
      msg = r.get("error") or f"step {1e3 * r['step_s']:.1f} ms, peak {r['peak_rss_bytes'] / 2**20:.0f} MiB"
      print(f"  {name}: {msg}", flush=True)
    if not a.quick:
      cals.append(run_point(cal_name, cal_spec, a))
    failed = [c["error"] for c in cals if "error" in c]
    if failed:
      raise SystemExit(f"calibration point failed: {failed[0]}")
    dev = cpu_device(1.0)  # peak and bandwidth measured once, here
    cfg = model_config(cal_spec, POINT_COMMON)
    floor = step_time(train_flops(cfg, cal_spec["B"]), cals[0]["xla"]["bytes"], 0.0, dev)["step_s"]
    measured = statistics.mean(c["step_s"] for c in cals)
    efficiency = floor / measured
    pc = param_counts(cfg)
    runtime = statistics.mean(c["peak_rss_bytes"] for c in cals) - memory_per_device(
        pc, Mesh(), max(cals[0]["xla"]["temp"] - F32 * pc.total, 0.0))["total"]
    dev = dataclasses.replace(dev, compute_efficiency=efficiency, memory_efficiency=efficiency)
    report["calibration"] = dict(points=cals, efficiency=efficiency, runtime_bytes=runtime, roofline_floor_s=floor,
                                 measured_s=measured)
    report["cpu_device"] = dataclasses.asdict(dev)
    runs = " and ".join(f"{1e3 * c['step_s']:.1f}" for c in cals)
    print(f"calibration: efficiency {efficiency:.4f} (roofline floor {1e3 * floor:.2f} ms / measured {runs} ms), "
          f"runtime memory {runtime / 2**20:.0f} MiB", flush=True)
    for r in rows:
      if "error" not in r:
        r["predicted"] = cpu_prediction(r, dev, runtime)
        r["time_ratio"] = r["predicted"]["time"]["step_s"] / r["step_s"]
        r["memory_ratio"] = r["predicted"]["memory"]["total"] / r["peak_rss_bytes"]
    report["cpu_points"] = rows
    report["machine"]["jax"] = cals[0].get("jax")
    print("\nCPU: predicted vs measured (one core, float32)\n" + cpu_table(rows), flush=True)
  if a.full:
    print("\nfull-scale Taobao UserBehavior (shape-only compiles on this CPU)", flush=True)
    fs = full_scale(a)
    report["full_scale"] = fs
    print(full_table(fs), flush=True)
  report["wall_s"] = time.perf_counter() - t_start
  from mos_jax.experiments.sweep import write_text_atomic  # noqa: PLC0415

  path = pathlib.Path(a.json)
  path.parent.mkdir(parents=True, exist_ok=True)
  write_text_atomic(path, json.dumps(report, indent=1, default=str) + "\n")
  print(f"wrote {path} ({report['wall_s']:.0f} s)")
  return 0


def _cpu_name() -> str:
  info = pathlib.Path("/proc/cpuinfo")
  names = re.findall(r"^model name\s*:\s*(.*)$", info.read_text(), re.M) if info.exists() else []
  return names[0] if names else (platform.processor() or platform.machine())


if __name__ == "__main__":
  sys.exit(main())
