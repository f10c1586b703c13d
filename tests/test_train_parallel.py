"""1 vs 2 forced CPU devices, mesh and pmap paths: the same losses and parameters for a few steps.

The model's auxiliary losses are switched off here: MoS's load-balance loss is a batch statistic, so under pmap each
device balances its own half batch (as GShard's per-group balance does) and the pmap total differs from the mesh one
by design. With them off, every path optimises exactly the same objective. Dropout is off so that the paths, which
draw masks differently, see the same network.
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from mos_jax.models import ModelConfig, build_model
from mos_jax.training import losses, optimizer, sharding, step as step_lib
from mos_jax.training.config import TrainConfig
from mos_jax.training.parallel import Executor

B, S, T, N_ITEMS, N_CATS, STEPS = 4, 4, 4, 20, 5, 3

MODEL = ModelConfig(name="mos", backbone="sasrec", task="ctr", num_items=N_ITEMS, num_cats=N_CATS, num_sessions=S,
                    session_len=T, embed_dim=8, hidden_dim=8, num_layers=1, num_heads=2, dropout=0.0, num_themes=2,
                    balance_loss_weight=0.0, z_loss_weight=0.0)


def make_batches(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    items = rng.integers(1, N_ITEMS + 1, (B, S, T)).astype(np.int32)
    items[:, 0, :] = 0  # a padding session in front
    items[:, :, T - 1] *= rng.integers(0, 2, (B, S)).astype(np.int32)  # some padding at session ends
    out.append(dict(items=items, cats=np.where(items > 0, items % N_CATS + 1, 0).astype(np.int32),
                    times=np.zeros((B, S, T), np.int32), session_theme=np.full((B, S), -1, np.int32),
                    target_item=rng.integers(1, N_ITEMS + 1, B).astype(np.int32),
                    target_cat=rng.integers(1, N_CATS + 1, B).astype(np.int32),
                    label=rng.integers(0, 2, B).astype(np.float32), user=np.arange(B, dtype=np.int32),
                    weight=np.ones(B, np.float32)))
  return out


def run_path(parallelism: str, n_devices: int, mesh_expert: int = 1):
  # eps=1e-3: Adam would otherwise turn float noise in near-zero gradients into full-size updates of opposite signs.
  tcfg = TrainConfig(batch_size=B, eval_batch_size=B, learning_rate=1e-2, warmup_steps=1, eps=1e-3,
                     parallelism=parallelism, mesh_expert=mesh_expert)
  tx = optimizer.make_optimizer(tcfg, total_steps=STEPS)
  schedule = optimizer.learning_rate_schedule(tcfg, STEPS)
  model = build_model(dataclasses.replace(MODEL), rngs=nnx.Rngs(0))
  graphdef, state = step_lib.init_state(model, tx)
  ex = Executor(tcfg, graphdef, tx, schedule, "ctr", state, devices=jax.devices()[:n_devices])
  losses_seen = [float(ex.train_step(b)["loss"]) for b in make_batches(STEPS)]
  params = jax.tree.map(np.asarray, jax.device_get(ex.saveable_state().params))
  return ex, np.array(losses_seen), params


@pytest.fixture(scope="module")
def reference():
  return run_path("mesh", 1)


def test_two_devices_are_forced():
  assert jax.device_count() >= 2, "tests/conftest.py should force 2 CPU devices"


@pytest.mark.parametrize("parallelism, n_devices, mesh_expert", [
    ("mesh", 2, 1), ("mesh", 2, 2), ("pmap", 2, 1)], ids=["mesh-data2", "mesh-expert2", "pmap-2"])
def test_losses_and_params_match_one_device_mesh(reference, parallelism, n_devices, mesh_expert):
  _, ref_losses, ref_params = reference
  ex, got_losses, got_params = run_path(parallelism, n_devices, mesh_expert)
  assert np.all(np.isfinite(ref_losses)) and ref_losses[0] != ref_losses[-1]  # training actually moves
  np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got_params, ref_params)
  if parallelism == "mesh":
    # The batch is really split over the data axis, and (expert=2) the stacked theme experts over the expert axis.
    assert ex.num_shards == 2 // mesh_expert
    expert_leaves = [x for p, x in jax.tree_util.tree_flatten_with_path(ex.state.params)[0]
                     if sharding.is_expert_path(p)]
    assert expert_leaves, "MoS should have stacked parameters under theme_experts"
    specs = {tuple(x.sharding.spec) for x in expert_leaves}
    assert specs == ({("expert",)} if mesh_expert == 2 else {()})


def test_first_step_loss_is_the_weighted_cross_entropy_of_the_initial_model(reference):
  """The step's first loss equals a direct float64 computation from the initial model's logits (no aux terms)."""
  model = build_model(dataclasses.replace(MODEL), rngs=nnx.Rngs(0))
  graphdef, params, rest = step_lib.split_model(model)
  batch = make_batches(STEPS)[0]
  logits = jax.jit(lambda p, r, b: nnx.merge(graphdef, p, r)(b, deterministic=True).logits)(params, rest, batch)
  z, y = np.asarray(logits, np.float64), batch["label"]
  ce = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
  np.testing.assert_allclose(reference[1][0], ce.mean(), rtol=1e-5)


def test_ctr_loss_ignores_padding_rows():
  z = np.array([0.3, -1.2, 2.0], np.float32)
  batch = {"label": np.array([1, 0, 1], np.float32), "weight": np.array([1, 1, 0], np.float32)}
  ce = np.maximum(z, 0) - z * batch["label"] + np.log1p(np.exp(-np.abs(z)))
  total, task = losses.total_loss(z, np.float32(0.25), batch, "ctr")
  np.testing.assert_allclose([float(total), float(task)], [ce[:2].mean() + 0.25, ce[:2].mean()], rtol=1e-6)
  empty = dict(batch, weight=np.zeros(3, np.float32))
  assert float(losses.total_loss(z, np.float32(0.0), empty, "ctr")[1]) == 0.0


def test_next_item_loss_is_softmax_cross_entropy_over_items():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 6)).astype(np.float32)
  logits[:, 0] = -1e9
  batch = {"target_item": np.array([1, 5, 2], np.int32), "weight": np.array([1, 1, 0], np.float32)}
  lse = np.log(np.exp(logits[:, 1:].astype(np.float64)).sum(1))
  per = lse - logits[np.arange(3), batch["target_item"]]
  np.testing.assert_allclose(float(losses.total_loss(logits, np.float32(0.5), batch, "next")[0]),
                             per[:2].mean() + 0.5, rtol=1e-6)


def test_weight_decay_mask_skips_biases_norms_and_embeddings():
  model = build_model(dataclasses.replace(MODEL), rngs=nnx.Rngs(0))
  _, params, _ = step_lib.split_model(model)
  mask = optimizer.decay_mask(params, TrainConfig().no_decay)
  flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert any(flat.values()) and not all(flat.values())
  for path, decayed in flat.items():
    if "bias" in path or "embedding" in path or "scale" in path:
      assert not decayed, path


def test_schedule_warms_up_then_decays():
  sched = optimizer.learning_rate_schedule(TrainConfig(learning_rate=1.0, warmup_steps=10, decay="linear",
                                                       end_lr_ratio=0.1), total_steps=110)
  np.testing.assert_allclose([float(sched(s)) for s in (0, 5, 10, 60, 110)], [0.0, 0.5, 1.0, 0.55, 0.1], rtol=1e-6)
  with pytest.raises(ValueError, match="config.train.decay"):
    optimizer.learning_rate_schedule(TrainConfig(decay="step"), 10)


def test_clipping_bounds_the_update():
  tcfg = TrainConfig(learning_rate=1.0, warmup_steps=0, decay="constant", grad_clip_norm=1e-3, weight_decay=0.0,
                     b1=0.0, b2=0.0, eps=1.0)
  tx = optimizer.make_optimizer(tcfg, 10)
  params = {"w": np.ones((2, 2), np.float32)}
  updates, _ = tx.update({"w": np.full((2, 2), 100.0, np.float32)}, tx.init(params), params)
  # Clipped gradient g has norm 1e-3; Adam with b1=b2=0, eps=1 gives g / (|g| + 1) ~ g.
  assert float(optax.tree.norm(updates)) == pytest.approx(1e-3, rel=1e-2)


def test_batch_not_divisible_by_devices_is_refused():
  with pytest.raises(ValueError, match="batch_size=3 must be divisible by the 2"):
    sharding.check_batch_size(3, 2)
