"""benchmarks/cost_model.py: the analytic parts on exact small numbers, and a --quick run end to end."""

import importlib.util
import json
import pathlib
import sys

import pytest

from mos_jax.models.flops import count_flops

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "cost_model.py"
spec = importlib.util.spec_from_file_location("cost_model", PATH)
cm = importlib.util.module_from_spec(spec)
sys.modules["cost_model"] = cm  # its dataclasses look their module up while the class is built
spec.loader.exec_module(cm)

TOY = cm.Device(name="toy", peak_flops=1e12, hbm_bandwidth=1e10, link_bandwidth=1e9, memory_bytes=1e9,
                compute_efficiency=0.5, memory_efficiency=0.5, link_efficiency=0.5, source="test")
P = cm.ParamCounts(dense=100, expert=40, tables={"item": (1000, 8), "cat": (10, 8)})
COMMON = dict(num_items=50, num_cats=5, heads=2, task="ctr", dtype="float32")


def test_collective_formulas():
  assert cm.allreduce_bytes(100, 4) == 150  # ring: 2 (n-1)/n
  assert cm.allgather_bytes(100, 4) == 75
  assert cm.allreduce_bytes(100, 1) == 0 and cm.allgather_bytes(100, 1) == 0


def test_step_time_on_a_toy_device():
  t = cm.step_time(flops=1e9, bytes_moved=4e6, collective_bytes=5e5, dev=TOY)
  assert t["compute_s"] == pytest.approx(2e-3)  # 1e9 / (1e12 x 0.5)
  assert t["memory_s"] == pytest.approx(8e-4)  # 4e6 / (1e10 x 0.5)
  assert t["collectives_s"] == pytest.approx(1e-3)  # 5e5 / (1e9 x 0.5)
  assert t["step_s"] == pytest.approx(3e-3) and t["dominant"] == "compute"  # max(compute, memory) + collectives
  t = cm.step_time(flops=1e6, bytes_moved=4e7, collective_bytes=0.0, dev=TOY)
  assert t["step_s"] == pytest.approx(8e-3) and t["dominant"] == "memory" and t["collectives_s"] == 0


def test_memory_per_device_with_sharding():
  m = cm.memory_per_device(P, cm.Mesh(data=2, expert=2, embedding="data"), activations=1000, runtime=7)
  model = 100 + 40 / 2  # dense replicated, experts split over `expert`
  assert m["params"] == 4 * model and m["optimizer"] == 8 * model and m["gradients"] == 4 * model
  assert m["embeddings"] == 16 * (1000 * 8 + 10 * 8) / 2  # table + 2 moments + gradient, rows over `data` (2)
  assert m["total"] == 16 * model + 16 * 4040 + 1000 + 7
  replicated = cm.memory_per_device(P, cm.Mesh(data=2), activations=0)
  assert replicated["embeddings"] == 16 * 8080 and replicated["params"] == 4 * 140


def test_collective_volume_formula():
  c = cm.collective_volume(P, cm.Mesh(data=2, expert=2, embedding="data"), global_batch=8, lookups=5, dispatched=6,
                           act_bytes=2)
  assert c["gradient_allreduce"] == 2 * 0.5 * 4 * (100 + 20)  # tables carried by the sharded lookup
  assert c["expert_all_to_all"] == 2 * 0.5 * 2 * 6 * 4  # dispatch + its gradient, local batch 4
  # per table: all-reduce of the [8, 5, 8] float32 rows (2 x 1/2) + all-gather of the cotangent (1/2)
  assert c["embedding_rows"] == 2 * (1280 + 640)
  assert c["total"] == 480 + 48 + 3840
  c = cm.collective_volume(P, cm.Mesh(data=2, model=4, embedding="model"), global_batch=8, lookups=5)
  assert c["gradient_allreduce"] == 2 * 0.5 * 4 * (100 + 40 + 8080 / 4)  # table shards replicated over `data`
  assert c["embedding_rows"] == 2 * (2 * 0.75 * 640 + 0.75 * 640)  # group batch 8 / 2 = 4: 4 x 4 x 5 x 8 bytes
  assert cm.collective_volume(P, cm.Mesh(), global_batch=8, lookups=5)["total"] == 0
  with pytest.raises(ValueError, match="Mesh.embedding='expert': expected none, data or model"):
    cm.Mesh(data=2, embedding="expert")


def test_train_flops_is_three_forwards_of_the_sasrec_formula():
  cfg = cm.model_config(dict(model="backbone", S=2, T=4, D=8, layers=1, K=2), COMMON)
  # the one (last) block computes the last valid position only: k, v on all 8 positions; q, scores + pv, out, ffn
  block = 2 * 8 * 8 * 16 + 2 * 8 * 8 + 2 * 2 * 8 * 8 + 2 * 8 * 8 + 2 * 2 * 8 * 16
  head = 2 * 8 * 8 + 2 * 3 * 8 * 64 + 2 * 64  # CTR head (head_hidden 64)
  assert count_flops(cfg)["executed"] == block + 2 * 8 * 8 + head
  assert cm.train_flops(cfg, 4) == 3 * 4 * (block + 128 + head)


def test_param_counts_and_dispatched_buffers_of_mos():
  cfg = cm.model_config(dict(model="mos", S=4, T=2, D=8, layers=1, K=2), COMMON)
  p = cm.param_counts(cfg)
  assert p.tables == {"item": (51, 8), "cat": (6, 8)}
  assert p.expert > 0 and p.dense > 0
  from flax import nnx  # noqa: PLC0415

  from mos_jax.models import build_model  # noqa: PLC0415

  params = nnx.state(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  assert p.total == sum(x.size for x in __import__("jax").tree.leaves(params))
  assert cm.dispatched_elements(cfg) == 2 * 3 * 2 * 8  # K x C x T x D, C = ceil(1.5 x 4 / 2) = 3
  assert cm.dispatched_elements(cm.model_config(dict(model="backbone", S=4, T=2, D=8, layers=1, K=2), COMMON)) == 0


def test_epoch_layouts_and_fit():
  assert cm.epoch_examples() == 2 * (100_150_807 - 3 * 987_994)
  assert list(cm.layouts(256)) == ["tables replicated", "rows over data", "rows over model=8"]
  assert cm.layouts(256)["rows over model=8"] == cm.Mesh(data=32, model=8, embedding="model")
  assert list(cm.layouts(8)) == ["tables replicated", "rows over data"]
  assert cm.linear_fit(2, 10.0, 4, 16.0) == (4.0, 3.0)
  with pytest.raises(ValueError, match="'a100'.*expected one of"):
    cm.accelerator("a100")
  v5e = cm.accelerator("tpu-v5e")
  assert v5e.peak_flops == 197e12 and v5e.link_bandwidth == 200e9 and v5e.memory_bytes == 16e9


def test_full_scale_rows_from_xla_costs(monkeypatch):
  # XLA's costs replaced by a line in the batch: 1 GB fixed + 1 MB per example; temp = gradients + 0.2 MB/example.
  p = cm.param_counts(cm.model_config(dict(cm.QUICK_FULL_MODEL, model="backbone"), dict(
      COMMON, num_items=5000, num_cats=50, dtype="bfloat16")))
  calls = []

  def fake(cfg, batch, common):
    calls.append(batch)
    return {"bytes": 1e9 + 1e6 * batch, "temp": 4.0 * p.total + 2e5 * batch}

  monkeypatch.setattr(cm, "abstract_step_costs", fake)
  fs = cm.full_scale(cm.parse_args(["--quick"]))
  assert sorted(set(calls)) == fs["profile_batches"] == [64, 512]  # the per-device batches of the layouts
  assert fs["profiles"]["backbone"]["fixed_bytes"] == pytest.approx(1e9)
  by = {(r["target"], r["layout"]): r for r in fs["rows"]}
  r = by[("v5e-256", "rows over data")]
  assert r["local_batch"] == 64 and r["global_batch"] == 16_384
  share = (p.dense + p.expert + p.table_params / 256) / p.total  # a chip's share of the optimizer's fixed bytes
  assert r["bytes"] == pytest.approx(1e9 * share + 64e6)
  assert r["memory"]["activations"] == pytest.approx(64 * 2e5)
  assert r["collectives"]["embedding_rows"] == pytest.approx(
      2 * 3 * 255 / 256 * 4 * 16_384 * 17 * 16)  # item + cat tables, S x T + 1 = 17 lookups, D = 16
  assert r["steps_per_epoch"] == -(-cm.epoch_examples() // 16_384)
  assert r["epoch_s"] == r["steps_per_epoch"] * r["time"]["step_s"]
  h = by[("8xH100", "tables replicated")]
  assert h["local_batch"] == 512 and h["bytes"] == pytest.approx(1e9 + 512e6) and h["fits"]


def test_abstract_step_costs_compiles_shapes_only():
  cfg = cm.model_config(dict(model="backbone", S=2, T=4, D=8, layers=1, K=2), COMMON)
  c = cm.abstract_step_costs(cfg, 4, COMMON)
  p = cm.param_counts(cfg).total
  assert c["bytes"] > 0 and c["temp"] > 0
  assert c["argument"] >= 3 * 4 * p  # parameters and two AdamW moments are inputs of the step


def test_quick_run_writes_predictions_next_to_measurements(tmp_path):
  out = tmp_path / "cost.json"
  assert cm.main(["--quick", "--no-full", "--steps=2", "--warmup=1", f"--json={out}"]) == 0
  report = json.loads(out.read_text())
  assert 0 < report["calibration"]["efficiency"] <= 1
  (row,) = report["cpu_points"]
  assert row["step_s"] > 0 and row["peak_rss_bytes"] > 0
  assert row["time_ratio"] == pytest.approx(row["predicted"]["time"]["step_s"] / row["step_s"])
  assert row["memory_ratio"] == pytest.approx(row["predicted"]["memory"]["total"] / row["peak_rss_bytes"])
