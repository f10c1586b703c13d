"""Serving export: ``python -m mos_jax.export`` then ``mos_jax.serving.load`` in a fresh process (jax + numpy only)
gives eval.py's probabilities for batches of 1, 7 and 64; wrong S / T / missing keys raise; GShard (batch-routed in
training) exports with a symbolic batch for next-item; a forward pass that needs a concrete batch is refused."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mos_jax import config as config_lib
from mos_jax import export as export_lib
from mos_jax.evaluation.metrics import sigmoid
from mos_jax.training.loop import predict_split, train
from mos_jax.training.restore import restore_run

REPO = pathlib.Path(__file__).resolve().parents[1]
S, T = 4, 4
SIZES = (1, 7, 64)
BACKEND = jax.default_backend()  # export for the device the tests run on (cpu here, cuda in benchmarks/gpu_suite.sh)


def tiny_config(workdir: pathlib.Path, cache: pathlib.Path, name: str, task: str) -> config_lib.Config:
  cfg = config_lib.Config(workdir=str(workdir), seed=0)
  cfg.data.cache_dir = str(cache)
  cfg.data.task = task
  cfg.data.synthetic.num_users = 40
  cfg.data.num_sessions, cfg.data.session_len = S, T
  m = cfg.model
  m.name = name
  m.embed_dim = m.hidden_dim = 8
  m.num_themes, m.moe.num_experts, m.dropout = 2, 2, 0.1  # dropout on: RNG state exists but must not matter
  t = cfg.train
  t.batch_size, t.eval_batch_size, t.num_steps, t.warmup_steps = 8, 64, 2, 1
  t.eval_every, t.checkpoint_every, t.log_every, t.progress_bar = 2, 0, 1, False
  return cfg


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("prepared")


def _trained(tmp_path_factory, cache, name: str, task: str) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp(f"{name}_{task}")
  assert train(tiny_config(workdir, cache, name, task)).status == "finished"
  return workdir


@pytest.fixture(scope="module")
def mos_ctr(tmp_path_factory, cache):
  return _trained(tmp_path_factory, cache, "mos", "ctr")


# A fresh interpreter: only mos_jax.serving (jax + numpy) is imported; its outputs and error messages come back as
# files. It must not need flax, optax, orbax or grain.
SERVE_SCRIPT = r"""
import json, sys
import numpy as np
from mos_jax import serving
model = serving.load(sys.argv[1])
batches = np.load(sys.argv[2])
out = {f"b{n}": model({k[len(f"b{n}/"):]: batches[k] for k in batches.files if k.startswith(f"b{n}/")})
       for n in (1, 7, 64)}
np.savez(sys.argv[3], **out)
good = {k[len("b7/"):]: batches[k] for k in batches.files if k.startswith("b7/")}
errors = {}
bad = {"S": dict(good, items=good["items"][:, :-1]),
       "T": dict(good, cats=np.pad(good["cats"], ((0, 0), (0, 0), (0, 1)))),
       "missing": {k: v for k, v in good.items() if k != "target_item"},
       "float_ids": dict(good, items=good["items"].astype(np.float32))}
for name, b in bad.items():
  try:
    model(b)
    errors[name] = None
  except ValueError as e:
    errors[name] = str(e)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "optax", "orbax", "grain", "tensorflow", "torch"))
mine = sorted(m for m in sys.modules if m.split(".")[0] == "mos_jax")
json.dump({"errors": errors, "heavy": heavy, "mine": mine, "inputs": list(model.inputs)}, open(sys.argv[4], "w"))
"""


def test_export_cli_and_fresh_process_serving_match_eval(mos_ctr, tmp_path):
  assert export_lib.main([f"--workdir={mos_ctr}", "--checkpoint=best", f"--platforms={BACKEND}"]) == 0
  out = mos_ctr / "export"
  assert sorted(p.name for p in out.iterdir()) == ["model.jaxexport", "params.npz", "signature.json"]
  assert not [p for p in mos_ctr.iterdir() if p.name.startswith(".export")]  # temp folder renamed, nothing left
  sig = json.loads((out / "signature.json").read_text())
  assert (sig["task"], sig["num_sessions"], sig["session_len"], sig["batch_symbol"]) == ("ctr", S, T, "b")
  assert sig["inputs"] == [{"name": "items", "dtype": "int32", "shape": ["b", S, T]},
                           {"name": "cats", "dtype": "int32", "shape": ["b", S, T]},
                           {"name": "target_item", "dtype": "int32", "shape": ["b"]},
                           {"name": "target_cat", "dtype": "int32", "shape": ["b"]}]
  assert sig["output"] == {"name": "prob", "dtype": "float32", "shape": ["b"]}
  assert sig["checkpoint"]["kind"] == "best" and sig["checkpoint"]["step"] == 2
  assert sig["model"]["name"] == "mos" and sig["platforms"] == [BACKEND]
  with np.load(out / "params.npz") as npz:
    assert sorted(npz.files) == sorted(p["name"] for p in sig["params"])
    assert "embedder/item/embedding" in npz.files

  # eval.py's probabilities: the restored best checkpoint over the whole test split (batches of 64, last one padded).
  cfg, run, executor, _, _ = restore_run(mos_ctr, "best", note=None)
  arrays = run.dataset.split("test", cfg.data.task, seed=cfg.data.seed)
  want = sigmoid(predict_split(executor, arrays, cfg))
  assert len(want) >= 64
  order = np.random.default_rng(0).permutation(len(want))  # rows from all over the split, not only the first
  feed = {f"b{n}/{k}": arrays[k][order[:n]] for n in SIZES for k in arrays}  # every eval key; extras are ignored

  np.savez(tmp_path / "batches.npz", **feed)
  env = dict(os.environ, JAX_PLATFORMS=BACKEND, PYTHONPATH=str(REPO))
  subprocess.run([sys.executable, "-c", SERVE_SCRIPT, str(out), str(tmp_path / "batches.npz"),
                  str(tmp_path / "probs.npz"), str(tmp_path / "report.json")], check=True, env=env, cwd=tmp_path)
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["heavy"] == [] and report["mine"] == ["mos_jax", "mos_jax.serving"]
  with np.load(tmp_path / "probs.npz") as got:
    for n in SIZES:
      assert got[f"b{n}"].shape == (n,) and got[f"b{n}"].dtype == np.float32
      np.testing.assert_allclose(got[f"b{n}"], want[order[:n]], rtol=0, atol=1e-6)
  err = report["errors"]
  assert err["S"] == f"input 'items': expected int32 of shape (b, {S}, {T}) (S={S}, T={T}), got shape (7, {S - 1}, {T})"
  assert err["T"] == f"input 'cats': expected int32 of shape (b, {S}, {T}) (S={S}, T={T}), got shape (7, {S}, {T + 1})"
  assert err["missing"] == f"batch is missing input 'target_item': expected int32 of shape (b,) (S={S}, T={T})"
  assert err["float_ids"].startswith("input 'items': expected integer ids") and "float32" in err["float_ids"]


def test_gshard_next_item_exports_with_symbolic_batch(tmp_path_factory, cache, tmp_path):
  """GShard routes over the batch in training, per example in evaluation (docs/baselines.md): symbolic batch works."""
  from mos_jax import serving  # noqa: PLC0415

  workdir = _trained(tmp_path_factory, cache, "gshard", "next")
  out = export_lib.export_run(workdir, "best", out=tmp_path / "exp", platforms=(BACKEND,), note=None)
  model = serving.load(out)
  assert model.task == "next" and model.signature["output"]["name"] == "scores"
  cfg, run, executor, _, _ = restore_run(workdir, "best", note=None)
  arrays = run.dataset.split("test", "next", seed=cfg.data.seed)
  predict = executor.predict_fn()
  v = cfg.model.num_items + 1
  assert model.signature["output"]["shape"] == ["b", v]
  for n in SIZES:
    rows = np.arange(n) % len(arrays["items"])  # 40 test rows: 64 repeats some
    batch = {k: x[rows] for k, x in arrays.items()}
    batch["weight"] = np.ones(n, np.float32)
    got = model(batch)
    assert got.shape == (n, v)
    np.testing.assert_allclose(got, np.asarray(predict(batch)), rtol=1e-5, atol=1e-5)


def test_forward_pass_needing_a_concrete_batch_is_refused():
  def serve(leaves, batch):  # uses the batch size as a value, like a capacity computed from B
    return jnp.ones((int(batch["items"].shape[0]) // 2 + 1,)) * leaves[0]

  b, = jax.export.symbolic_shape("b")
  spec = export_lib.batch_spec(S, T, b, ("items",))
  with pytest.raises(export_lib.ExportError, match=r"model 'x' cannot be exported with a symbolic batch dimension"):
    export_lib.export_symbolic(serve, [np.float32(1.0)], spec, platforms=("cpu",), what="model 'x'")


def test_cli_errors_are_clear(tmp_path, capsys):
  assert export_lib.main([f"--workdir={tmp_path / 'nope'}"]) == 2
  assert f"--workdir={tmp_path / 'nope'}: no such directory" in capsys.readouterr().err
  assert export_lib.main([f"--workdir={tmp_path}", "--platforms=,"]) == 2
  assert "--platforms: expected at least one of cpu, cuda, rocm, tpu" in capsys.readouterr().err
