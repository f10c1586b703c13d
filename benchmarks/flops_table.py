"""Forward FLOPs per example of every host x {backbone, MoS, GShard top-2, Expert Choice, DSelect-k} at long L.

  python benchmarks/flops_table.py                      # K = E = 8, L in 128,512,1024,4096, D = H = 64, B = 256
  python benchmarks/flops_table.py --json=/tmp/flops.json --markdown=/tmp/flops.md --no-check

Analytic counts come from ``mos_jax.models.flops.count_flops`` (matrix products only, 2*M*N*K; docs/baselines.md):
``executed`` (what the code runs, capacity slack and DSelect-k's dense experts included) and ``active`` (its
``total``: the experts an example is routed to). GShard / Expert Choice capacity depends on the routing group, so the
table uses ``--batch`` (256). Every row is checked against XLA: the training-mode forward is lowered at batch
``--check_batch`` (2; lowering only, no compile, no execution, so L = 4096 is cheap) and
``count_flops(cfg, batch_size=check_batch)['executed']`` is compared with (a) the FLOPs of the ``dot`` ops of the
HLO, exact, and (b) XLA's cost analysis, which also counts element-wise work: a row is flagged when it falls outside
[0.9, 1.1] x analytic. A static count sees a ``lax.scan`` body once (GRU4Rec's recurrent matmul), so both add the
loop body's matmuls for the other trips (``flops_hlo.loop_dot_flops``: trip count from the loop condition).

Sessions are T = 16 items (S = L / 16); ``dispatch='gather'`` (the one-hot einsum dispatch of the MoE baselines costs
2*E*C*L*D per example, which grows with B; docs/baselines.md). Writes JSON and markdown (temp file, then rename).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from mos_jax.models.config import ModelConfig, MoEConfig  # noqa: E402
from mos_jax.models.flops import count_flops  # noqa: E402

HOSTS = ("sasrec", "gru4rec", "din", "transact", "sdim", "twin", "mamba4rec")
MODELS = ("backbone", "mos", "gshard", "expert_choice", "dselect_k")
TOLERANCE = 0.10
# Hosts whose XLA check needs a word (printed under the table).
LOOP_NOTE = {"gru4rec": "its lax.scan body (the recurrent matmul) is added for the other L - 1 trips to XLA's count",
             "mamba4rec": "the conv and the selective scan are element-wise, so not in the analytic count "
                          "(docs/model.md); XLA counts the scan body's element-wise work once"}


def model_config(host: str, name: str, length: int, a: argparse.Namespace, **overrides: Any) -> ModelConfig:
  if length % a.session_len:
    raise ValueError(f"--lengths: {length} is not a multiple of --session_len={a.session_len}")
  cfg = ModelConfig(name=name, backbone=host, task="ctr", num_items=1000, num_cats=50,
                    num_sessions=length // a.session_len, session_len=a.session_len, embed_dim=a.dim,
                    hidden_dim=a.dim, num_layers=a.layers, num_heads=a.heads, num_themes=a.themes, dropout=0.0,
                    dispatch=a.dispatch, moe=MoEConfig(num_experts=a.themes))
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg.validate()


def xla_check(cfg: ModelConfig, batch_size: int) -> dict[str, float]:
  """Lowers the training-mode forward at ``batch_size``: per-example HLO dot FLOPs and XLA cost-analysis FLOPs."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from mos_jax.models import build_model  # noqa: PLC0415
  from mos_jax.models.flops_hlo import hlo_dot_flops, loop_dot_flops, xla_flops  # noqa: PLC0415

  model = build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  b, s, t = batch_size, cfg.num_sessions, cfg.session_len
  rng = np.random.default_rng(0)
  batch = dict(items=rng.integers(1, cfg.num_items + 1, (b, s, t)).astype(np.int32),
               cats=rng.integers(1, cfg.num_cats + 1, (b, s, t)).astype(np.int32),
               target_item=rng.integers(1, cfg.num_items + 1, b).astype(np.int32),
               target_cat=rng.integers(1, cfg.num_cats + 1, b).astype(np.int32), weight=np.ones(b, np.float32))
  fwd = jax.jit(lambda st, bt: nnx.merge(graphdef, st, copy=True)(bt, deterministic=False).logits)
  lowered = fwd.lower(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state), batch)
  hlo = lowered.as_text(dialect="hlo")
  # A static count sees a lax.scan body once: add the other (trips - 1) trips' matmuls to both counts.
  loops = sum((trips - 1) * dots for trips, dots in loop_dot_flops(hlo))
  return {"hlo_dots": (hlo_dot_flops(hlo) + loops) / b, "xla": (xla_flops(lowered) + loops) / b,
          "loop_correction": loops / b}


def build_rows(a: argparse.Namespace) -> list[dict[str, Any]]:
  rows = []
  for host in a.hosts:
    for length in a.lengths:
      for name in a.models:
        cfg = model_config(host, name, length, a)
        f = count_flops(cfg, batch_size=a.batch)
        row = {"host": host, "model": name, "L": length, "executed": f["executed"], "active": f["total"],
               "dispatch": f["dispatch"]}
        if a.check:
          c = xla_check(cfg, a.check_batch)
          analytic = count_flops(cfg, batch_size=a.check_batch)["executed"]
          ratio = c["xla"] / analytic
          row["check"] = {"batch": a.check_batch, "analytic_executed": analytic, **c, "xla_ratio": ratio,
                          "dots_exact": abs(c["hlo_dots"] - analytic) <= 1e-6 * analytic,
                          "within_10pct": abs(ratio - 1) <= TOLERANCE}
        rows.append(row)
        print(_line(row), flush=True)
  return rows


def _line(r: dict[str, Any]) -> str:
  s = f"{r['host']:>9} {r['model']:>13} L={r['L']:>5}  executed {r['executed'] / 1e6:10.2f} M  active " \
      f"{r['active'] / 1e6:10.2f} M"
  if "check" in r:
    c = r["check"]
    flag = "" if c["within_10pct"] else "  OUTSIDE 10%"
    s += f"  | B={c['batch']}: XLA/analytic {c['xla_ratio']:.3f}, HLO dots {'exact' if c['dots_exact'] else 'DIFFER'}" \
         + flag
  return s


SWITCHES = (("default (capacity_factor 1.5; global + short + K theme experts)", {}),
            ("capacity_factor 1.25", {"capacity_factor": 1.25}),
            ("capacity_factor 1.0", {"capacity_factor": 1.0}),
            ("use_global_expert=False", {"use_global_expert": False}),
            ("use_global_expert=False, capacity_factor 1.0", {"use_global_expert": False, "capacity_factor": 1.0}),
            ("top_k 2 (twice the theme slots)", {"top_k": 2}))


def switches(a: argparse.Namespace, length: int = 1024) -> list[dict[str, Any]]:
  """Per host and MoS switch at ``length``: MoS executed FLOPs over GShard-top-2's (capacity factor 1.25 and 1.0)."""
  out = []
  for host in a.hosts:
    gshard = {cf: count_flops(model_config(host, "gshard", length, a, moe=MoEConfig(num_experts=a.themes,
                                                                                    capacity_factor=cf)),
                              batch_size=a.batch)["executed"] for cf in (1.25, 1.0)}
    for label, kw in SWITCHES:
      f = count_flops(model_config(host, "mos", length, a, **kw), batch_size=a.batch)
      out.append({"host": host, "variant": label, "overrides": kw, "L": length, "executed": f["executed"],
                  "global_expert": f["global_expert"], "theme_experts": f["theme_experts"],
                  "gshard_executed": gshard[1.25], "vs_gshard_cf1.25": f["executed"] / gshard[1.25],
                  "vs_gshard_cf1.0": f["executed"] / gshard[1.0]})
  return out


def markdown(rows: list[dict[str, Any]], sw: list[dict[str, Any]], a: argparse.Namespace, command: str) -> str:
  lengths = sorted({r["L"] for r in rows})
  by = {(r["host"], r["model"], r["L"]): r for r in rows}
  lines = [f"Forward MFLOPs per example, executed / active (`count_flops`, B = {a.batch}, K = E = {a.themes}, "
           f"D = H = {a.dim}, {a.layers} layer(s), {a.heads} heads, T = {a.session_len}, dispatch {a.dispatch}; "
           "host settings at their defaults). Last column: XLA cost analysis / analytic `executed` over the row's "
           f"lengths (lowered at B = {a.check_batch}); ✗ marks a row outside ±10%.", "",
           "| host | model | " + " | ".join(f"L = {n}" for n in lengths) + " | XLA / analytic |",
           "|---|---|" + "---:|" * len(lengths) + "---|"]
  hosts = list(dict.fromkeys(r["host"] for r in rows))
  models = list(dict.fromkeys(r["model"] for r in rows))
  for host in hosts:
    for name in models:
      cells, ratios, bad = [], [], False
      for n in lengths:
        r = by.get((host, name, n))
        if r is None:
          cells.append("—")
          continue
        cells.append(f"{r['executed'] / 1e6:,.1f} / {r['active'] / 1e6:,.1f}")
        if "check" in r:
          ratios.append(r["check"]["xla_ratio"])
          bad |= not r["check"]["within_10pct"]
      check = f"{min(ratios):.2f}–{max(ratios):.2f}" + (" ✗" if bad else "") if ratios else "not checked"
      lines.append(f"| {host} | {name} | " + " | ".join(cells) + f" | {check} |")
  lines += ["", "MoS executed / GShard-top-2 executed:", "",
            "| host | " + " | ".join(f"L = {n}" for n in lengths) + " |", "|---|" + "---:|" * len(lengths)]
  for host in hosts:
    if (host, "mos", lengths[0]) in by and (host, "gshard", lengths[0]) in by:
      lines.append(f"| {host} | " + " | ".join(
          f"{by[(host, 'mos', n)]['executed'] / by[(host, 'gshard', n)]['executed']:.2f}" for n in lengths) + " |")
  if sw:
    sw_hosts = list(dict.fromkeys(x["host"] for x in sw))
    cell = {(x["host"], x["variant"]): x for x in sw}
    lines += ["", f"MoS switches at L = {sw[0]['L']}: MoS executed / GShard-top-2 executed (GShard at its default "
              "capacity factor 1.25; in brackets at capacity factor 1.0):", "",
              "| MoS variant | " + " | ".join(sw_hosts) + " |", "|---|" + "---:|" * len(sw_hosts)]
    for label, _ in SWITCHES:
      lines.append(f"| {label} | " + " | ".join(
          f"{cell[(h, label)]['vs_gshard_cf1.25']:.2f} ({cell[(h, label)]['vs_gshard_cf1.0']:.2f})"
          for h in sw_hosts) + " |")
  notes = [f"{h}: {LOOP_NOTE[h]}" for h in hosts if h in LOOP_NOTE]
  if notes:
    lines += ["", "Checks that cannot be tight: " + "; ".join(notes) + "."]
  lines += ["", f"Command: `{command}`"]
  return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
  p = pathlib.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  tmp = p.with_name(p.name + f".tmp{os.getpid()}")
  tmp.write_text(text)
  tmp.replace(p)
  print(f"wrote {p}")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  csv = lambda t: [x for x in t.split(",") if x]  # noqa: E731
  p.add_argument("--hosts", type=csv, default=list(HOSTS))
  p.add_argument("--models", type=csv, default=list(MODELS))
  p.add_argument("--lengths", type=lambda t: [int(x) for x in csv(t)], default=[128, 512, 1024, 4096])
  p.add_argument("--session_len", type=int, default=16, help="T (S = L / T)")
  p.add_argument("--dim", type=int, default=64, help="D = H")
  p.add_argument("--layers", type=int, default=1)
  p.add_argument("--heads", type=int, default=2)
  p.add_argument("--themes", type=int, default=8, help="K = E")
  p.add_argument("--batch", type=int, default=256, help="routing group of GShard / Expert Choice in the table")
  p.add_argument("--dispatch", default="gather", choices=("gather", "einsum"))
  p.add_argument("--check_batch", type=int, default=2, help="batch of the XLA check (lowering only)")
  p.add_argument("--no-check", dest="check", action="store_false", help="skip the XLA check (analytic only)")
  p.add_argument("--json", default="benchmarks/results/flops_table.json")
  p.add_argument("--markdown", default="benchmarks/results/flops_table.md")
  a = p.parse_args(argv)
  for field, allowed in (("hosts", HOSTS), ("models", MODELS)):
    unknown = set(getattr(a, field)) - set(allowed)
    if unknown:
      p.error(f"--{field}: unknown {sorted(unknown)}; expected a subset of {allowed}")
  return a


def main(argv=None) -> None:
  a = parse_args(argv)
  command = "python benchmarks/flops_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
  t0 = time.perf_counter()
  rows = build_rows(a)
  sw = switches(a) if 1024 in a.lengths and {"mos", "gshard"} <= set(a.models) else []
  md = markdown(rows, sw, a, command.strip())
  print(md)
  outside = [r for r in rows if "check" in r and not r["check"]["within_10pct"]]
  print(f"{len(rows)} rows, {len(outside)} outside ±10% of XLA; {time.perf_counter() - t0:.0f} s")
  _write(a.json, json.dumps({"args": vars(a), "command": command.strip(), "rows": rows, "switches": sw}, indent=1))
  _write(a.markdown, md)


if __name__ == "__main__":
  main()
