"""Times the jitted forward pass and train step of every model, side by side, on the current machine.

Not a test: a script for comparing MoS with the plain backbone and the MoE baselines at one stated size.

  python benchmarks/bench_model.py                                   # small CPU size, all models
  python benchmarks/bench_model.py --models=backbone --variant mos_k8=num_themes=8,target_routing=true
  python benchmarks/bench_model.py --batch=1024 --sessions=32 --session_len=16 --dim=128 --themes=8 \
      --dtype=bfloat16 --steps=20 --json=/tmp/bench.json             # accelerator size

For each model: parameter count, compile time of each function, median wall time per call over ``--steps`` timed
calls (after one warm-up call), examples/s, forward FLOPs per example from ``mos_jax.models.flops.count_flops``
when that module exists, and the device's peak memory when it reports one (GPUs do, CPUs do not). The train step
is forward + backward + AdamW update with the state donated, as in training. Inputs are random batches with the
layout of docs/interfaces.md (left-padded sessions, right-padded items), drawn from ``--seed``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from mos_jax.experiments.sweep import write_text_atomic  # noqa: E402
from mos_jax.models import build_model  # noqa: E402
from mos_jax.models.config import ModelConfig  # noqa: E402
from mos_jax.runtime import tune_host_allocator  # noqa: E402

MODELS = ("mos", "backbone", "gshard", "expert_choice", "dselect_k")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
  p.add_argument("--task", default="ctr", choices=("ctr", "next"))
  p.add_argument("--backbone", default="sasrec")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--sessions", type=int, default=8, help="S")
  p.add_argument("--session_len", type=int, default=8, help="T")
  p.add_argument("--dim", type=int, default=32, help="embedding and hidden size D = H")
  p.add_argument("--layers", type=int, default=1)
  p.add_argument("--heads", type=int, default=2)
  p.add_argument("--themes", type=int, default=4, help="K: MoS themes and MoE experts")
  p.add_argument("--num_items", type=int, default=2000)
  p.add_argument("--num_cats", type=int, default=50)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--steps", type=int, default=5, help="timed calls per function")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default="", help="write the results here (written to a temp file, then renamed)")
  p.add_argument("--variant", action="append", default=[],
                 help="extra row NAME=FIELD=VALUE[,FIELD=VALUE...] of ModelConfig overrides on top of the model "
                      "named by its 'name' field (default mos), e.g. mos_k8=num_themes=8,target_routing=true")
  return p.parse_args(argv)


def _value(text: str) -> Any:
  """A config value from the command line: bool, int, float, else the string itself."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
  """``NAME=FIELD=VALUE,FIELD=VALUE`` -> (NAME, {FIELD: VALUE}); fields must be ModelConfig fields."""
  name, sep, rest = text.partition("=")
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  overrides = {}
  for item in filter(None, rest.split(",")):
    key, eq, val = item.partition("=")
    if not eq or key not in fields:
      raise SystemExit(f"--variant {text!r}: {item!r} is not FIELD=VALUE with FIELD a ModelConfig field")
    overrides[key] = _value(val)
  if not sep or not name:
    raise SystemExit(f"--variant {text!r}: expected NAME=FIELD=VALUE[,FIELD=VALUE...]")
  return name, overrides


def model_config(name: str, a: argparse.Namespace) -> ModelConfig:
  cfg = ModelConfig(name=name, backbone=a.backbone, task=a.task, num_items=a.num_items, num_cats=a.num_cats,
                    num_sessions=a.sessions, session_len=a.session_len, embed_dim=a.dim, hidden_dim=a.dim,
                    num_layers=a.layers, num_heads=a.heads, dtype=a.dtype, num_themes=a.themes)
  cfg.moe = dataclasses.replace(cfg.moe, num_experts=a.themes)
  return cfg


def random_batch(a: argparse.Namespace, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A batch with the interfaces.md layout: padding sessions in front, padding items at the end of a session."""
  b, s, t = a.batch, a.sessions, a.session_len
  real_sessions = rng.integers(1, s + 1, b)  # [B]
  session_real = np.arange(s)[None, :] >= (s - real_sessions)[:, None]  # [B, S]
  lengths = rng.integers(1, t + 1, (b, s))  # [B, S]
  mask = session_real[:, :, None] & (np.arange(t)[None, None, :] < lengths[:, :, None])  # [B, S, T]
  items = np.where(mask, rng.integers(1, a.num_items + 1, (b, s, t)), 0).astype(np.int32)
  cats = np.where(mask, rng.integers(1, a.num_cats + 1, (b, s, t)), 0).astype(np.int32)
  times = np.where(mask, rng.integers(0, 10**6, (b, s, t)), 0).astype(np.int32)
  theme = np.where(session_real, rng.integers(0, a.themes, (b, s)), -1).astype(np.int32)
  return {
      "items": items, "cats": cats, "times": times, "session_theme": theme,
      "target_item": rng.integers(1, a.num_items + 1, b).astype(np.int32),
      "target_cat": rng.integers(1, a.num_cats + 1, b).astype(np.int32),
      "label": (rng.random(b) < 0.5).astype(np.float32) if a.task == "ctr" else np.ones(b, np.float32),
      "user": rng.integers(0, 1000, b).astype(np.int32),
      "weight": np.ones(b, np.float32),
  }


def task_loss(logits: jax.Array, batch: dict[str, jax.Array], task: str) -> jax.Array:
  logits = logits.astype(jnp.float32)
  if task == "ctr":
    per = optax.sigmoid_binary_cross_entropy(logits, batch["label"])
  else:
    per = optax.softmax_cross_entropy_with_integer_labels(logits, batch["target_item"])
  return jnp.sum(per * batch["weight"]) / jnp.maximum(jnp.sum(batch["weight"]), 1.0)


def make_functions(model: nnx.Module, task: str):
  """(forward, train_step, params, rest, opt_state): pure jitted functions on split NNX state."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(1e-3, weight_decay=1e-4)
  opt_state = tx.init(params)

  @jax.jit
  def forward(params, rest, batch):
    return nnx.merge(graphdef, params, rest)(batch, deterministic=True).logits

  return forward, train_step_fn(graphdef, tx, task), params, rest, opt_state


def train_step_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, task: str):
  """The jitted train step (params, opt_state, rest, batch) -> (params, opt_state, rest, loss), state donated.

  Separate from ``make_functions`` so that benchmarks/cost_model.py can lower it on abstract (shape-only) state.
  """

  def objective(params, rest, batch):
    # copy=True: fresh Variables at this (grad) trace level, so dropout may advance its RNG count here.
    m = nnx.merge(graphdef, params, rest, copy=True)
    out = m(batch, deterministic=False)
    _, _, new_rest = nnx.split(m, nnx.Param, ...)  # advanced dropout RNG state
    return task_loss(out.logits, batch, task) + out.aux_loss.astype(jnp.float32), new_rest

  def train_step(params, opt_state, rest, batch):
    (loss, rest), grads = jax.value_and_grad(objective, has_aux=True)(params, rest, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, rest, loss

  return jax.jit(train_step, donate_argnums=(0, 1, 2))


def _median_seconds(fn, steps: int) -> tuple[float, float]:
  """(compile + first call seconds, median seconds of the next `steps` calls); fn() must block."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  fn()  # warm-up
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def _peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def bench_one(name: str, a: argparse.Namespace, batch: dict[str, jax.Array],
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  overrides = dict(overrides or {})
  cfg = dataclasses.replace(model_config(overrides.pop("name", "mos" if overrides else name), a), **overrides)
  model = build_model(cfg, rngs=nnx.Rngs(a.seed))
  forward, train_step, params, rest, opt_state = make_functions(model, a.task)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  fwd_first, fwd_s = _median_seconds(lambda: forward(params, rest, batch).block_until_ready(), a.steps)
  state = [params, opt_state, rest]

  def step():
    *new_state, loss = train_step(*state, batch)
    state[:] = new_state
    loss.block_until_ready()

  train_first, train_s = _median_seconds(step, a.steps)
  row = {
      "model": name, "params": n_params,
      "forward_ms": 1e3 * fwd_s, "train_step_ms": 1e3 * train_s,
      "forward_examples_per_s": a.batch / fwd_s, "train_examples_per_s": a.batch / train_s,
      "forward_compile_s": fwd_first, "train_compile_s": train_first,
      "peak_bytes": _peak_bytes(),
  }
  try:
    from mos_jax.models.flops import count_flops  # noqa: PLC0415  (optional module)
  except ImportError:
    count_flops = None
  if count_flops is not None:
    try:
      row["flops"] = count_flops(cfg, batch_size=a.batch)  # the MoE routing group is the batch
    except TypeError:
      row["flops"] = count_flops(cfg)
  return row


def print_table(rows: list[dict[str, Any]]) -> None:
  cols = [("model", "{}"), ("params", "{:,}"), ("forward_ms", "{:.2f}"), ("train_step_ms", "{:.2f}"),
          ("forward_examples_per_s", "{:,.0f}"), ("train_examples_per_s", "{:,.0f}"),
          ("train_compile_s", "{:.1f}")]
  head = ["model", "params", "fwd ms", "train ms", "fwd ex/s", "train ex/s", "compile s"]
  if any(r.get("peak_bytes") for r in rows):
    cols.append(("peak_bytes", "{:,}"))
    head.append("peak bytes")
  if any("flops" in r for r in rows):
    cols.append(("flops_fwd", "{:,.0f}"))
    head.append("fwd FLOPs/ex")
  lines = []
  for r in rows:
    if "error" not in r:
      r = dict(r, flops_fwd=_flops_total(r.get("flops")))
      lines.append([fmt.format(r[c]) if r.get(c) is not None else "-" for c, fmt in cols])
  widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(head)]
  print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
  for line in lines:
    print("  ".join(v.rjust(w) for v, w in zip(line, widths)))
  for r in rows:
    if "error" in r:
      print(f"{r['model']}: FAILED {r['error']}")


def _flops_total(flops: Any) -> float | None:
  # count_flops returns a dict; prefer an explicit total, else the sum of its numbers.
  if not isinstance(flops, dict):
    return None
  for key in ("total", "forward", "forward_flops"):
    if isinstance(flops.get(key), (int, float)):
      return float(flops[key])
  nums = [v for v in flops.values() if isinstance(v, (int, float))]
  return float(sum(nums)) if nums else None


def main(argv=None) -> None:
  a = parse_args(argv)
  allocator = "tuned" if tune_host_allocator() else "default"  # as train.py (MOS_JAX_MALLOC=default: glibc's own)
  names = [n for n in a.models.split(",") if n]
  unknown = set(names) - set(MODELS)
  if unknown:
    raise SystemExit(f"--models: unknown {sorted(unknown)}; expected a subset of {MODELS}")
  batch = jax.device_put(random_batch(a, np.random.default_rng(a.seed)))
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)); jax "
        f"{jax.__version__}; B={a.batch} S={a.sessions} T={a.session_len} D={a.dim} K={a.themes} "
        f"task={a.task} dtype={a.dtype}; host allocator {allocator}")
  rows = []
  for name, overrides in [(n, None) for n in names] + [parse_variant(v) for v in a.variant]:
    try:
      rows.append(dict(bench_one(name, a, batch, overrides), model=name))
    except Exception as e:  # noqa: BLE001  (one broken model must not hide the others' numbers)
      rows.append({"model": name, "error": f"{type(e).__name__}: {e}"[:300]})
  print_table(rows)
  if a.json:
    out = {"args": vars(a), "host_allocator": allocator, "device": device.device_kind, "backend": jax.default_backend(),
           "jax": jax.__version__, "python": platform.python_version(), "rows": rows}
    path = pathlib.Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(out, indent=2, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
