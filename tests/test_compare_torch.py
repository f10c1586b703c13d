"""benchmarks/compare_torch.py's arithmetic (no timing, no subprocess): FLOPs, MFU, roofline floor, ratios, device
peaks, the markdown table and the argument checks."""

import importlib.util
import pathlib

import pytest

from mos_jax.models.flops import count_flops

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "compare_torch.py"
spec = importlib.util.spec_from_file_location("compare_torch", PATH)
ct = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ct)

CASE = dict(model="mos", S=4, T=4, D=8, B=16, K=2, latency=True)
COMMON = dict(num_items=50, num_cats=5, num_layers=1, num_heads=2, task="ctr")
PEAKS = dict(float32=1e12, bfloat16=4e12, bandwidth=1e10, source="test")


def rows():
  jax_row = dict(case="c", mode="jax-jit-f32", framework="jax", dtype="float32", device_kind="cpu", backend="cpu",
                 train=dict(median_s=0.01, examples_per_s=1600.0), infer=dict(median_s=0.002, examples_per_s=8000.0),
                 train_xla=dict(flops=1.0, bytes=2e6), infer_xla=dict(flops=1.0, bytes=5e4),
                 latency={"b1": dict(p50_ms=1.0, p99_ms=2.0, calls=200)},
                 peak_memory=dict(bytes=2**20, kind="host RSS"))
  torch_row = dict(case="c", mode="torch-eager-f32", framework="torch", dtype="float32",
                   train=dict(median_s=0.04, examples_per_s=400.0), infer=dict(median_s=0.004, examples_per_s=4000.0))
  return [jax_row, torch_row]


def test_derive_flops_mfu_and_roofline_floor():
  rs = rows()
  ct.derive(rs, {"c": CASE}, COMMON, PEAKS)
  fwd = count_flops(ct.model_config(CASE, COMMON, "float32"), batch_size=16)["total"]
  j, t = rs
  assert j["flops_fwd_per_example"] == fwd
  assert j["train"]["flops"] == 3 * fwd * 16 and j["infer"]["flops"] == fwd * 16
  assert j["train"]["mfu"] == pytest.approx(3 * fwd * 16 / 0.01 / 1e12)
  # floor = max(FLOPs / peak, bytes / bandwidth); tiny FLOPs: the bytes term (2e6 / 1e10 = 2e-4 s) wins.
  assert j["train"]["roofline_floor_s"] == pytest.approx(max(3 * fwd * 16 / 1e12, 2e-4))
  assert j["train"]["floor_ratio"] == pytest.approx(0.01 / j["train"]["roofline_floor_s"])
  # The PyTorch row of the same case and dtype gets the JAX function's bytes: the floor is the work's.
  assert t["train"]["roofline_floor_s"] == j["train"]["roofline_floor_s"]
  assert t["infer"]["floor_ratio"] == pytest.approx(0.004 / j["infer"]["roofline_floor_s"])
  assert ct.speedups(rs) == [dict(case="c", phase="train", jax="jax-jit-f32", torch="torch-eager-f32", ratio=4.0),
                             dict(case="c", phase="infer", jax="jax-jit-f32", torch="torch-eager-f32", ratio=2.0)]


def test_markdown_lists_measured_and_skipped_rows():
  rs = rows() + [dict(case="c", mode="torch-compile-bf16", framework="torch", dtype="bfloat16", skipped="no compiler")]
  ct.derive(rs[:2], {"c": CASE}, COMMON, PEAKS)
  report = dict(device="cpu", quick=True, command="x", machine=dict(device_kind="cpu", backend="cpu", cpus=2,
                python="3"), backend="cpu", versions={"jax": "0"}, peak_key="cpu", peaks=PEAKS, cases={"c": CASE},
                rows=rs, speedups=ct.speedups(rs[:2]))
  md = ct.markdown(report)
  assert "| c | 16 | 16 | 8 | 2 | jax-jit-f32 | train | 10.00 | 1,600 |" in md
  assert "| c | 16 | 16 | 8 | 2 | torch-compile-bf16 | - | skipped |" in md
  assert "- c / torch-compile-bf16: no compiler" in md
  assert "| c | train | jax-jit-f32 | torch-eager-f32 | 4.00x |" in md
  assert "| c | 16 | jax-jit-f32 | 1 | 1.000 | 2.000 | 200 |" in md


def test_peak_keys_and_cpu_estimate():
  assert ct.peak_key("NVIDIA H100 80GB HBM3", "gpu") == "h100-sxm"
  assert ct.peak_key("NVIDIA H100 PCIe", "gpu") == "h100-pcie"
  assert ct.peak_key("NVIDIA H200", "gpu") == "h200"
  assert ct.peak_key("TPU v5 lite", "tpu") == "tpu-v5e"
  assert ct.peak_key("cpu", "cpu") == "cpu" and ct.peak_key("Some GPU", "gpu") == "unknown"
  est = ct.cpu_peak(cores=2)
  assert est["float32"] > 0 and est["bfloat16"] >= est["float32"] and est["bandwidth"] > 0
  assert est["source"].startswith("estimate: 2 cores")


def test_argument_checks():
  with pytest.raises(SystemExit):
    ct.parse_args(["--steps=5"])
  with pytest.raises(SystemExit):
    ct.parse_args(["--latency_calls=10"])
  with pytest.raises(SystemExit):
    ct.parse_args(["--cases=nope"])
  a = ct.parse_args(["--quick", "--modes=jax-jit-f32"])
  assert a.quick and a.steps == 20 and a.modes == "jax-jit-f32"
