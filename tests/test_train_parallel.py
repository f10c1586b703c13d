"""1 vs 2 forced CPU devices, mesh and pmap paths: the same losses and parameters for a few steps.

Auxiliary losses are on: the models compute their balance / z-loss / clustering (MI) statistics over the global batch
under pmap too (``models.set_batch_axis``), so every path optimises exactly the same objective; one padding row
(weight 0) makes the devices' counts of valid rows differ and the devices hold different numbers of real sessions, so
a per-device mean (or an aux gradient counted once per device) would show. The MoE baselines run with capacities that
drop nothing, because under pmap each device's batch is its own routing group (by design, docs/training.md).
With dropout on, mesh and pmap draw different masks (per array, not per example); the pmap path is then checked
exactly against its definition: device d's rows use the model's RNG keys with d folded in.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mos_jax.models import ModelConfig, MoEConfig, build_model
from mos_jax.training import losses, optimizer, sharding, step as step_lib
from mos_jax.training.config import TrainConfig
from mos_jax.training.parallel import Executor

B, S, T, N_ITEMS, N_CATS, STEPS = 4, 4, 4, 20, 5, 3

MODEL = ModelConfig(name="mos", backbone="sasrec", task="ctr", num_items=N_ITEMS, num_cats=N_CATS, num_sessions=S,
                    session_len=T, embed_dim=8, hidden_dim=8, num_layers=1, num_heads=2, dropout=0.0, num_themes=2,
                    balance_loss_weight=0.1, z_loss_weight=0.01, router_mi_weight=0.1)
# No-drop capacities for the MoE baselines (C = B): GShard cf = E / k, Expert Choice cf = E.
MOE = MoEConfig(num_experts=2, top_k=1, capacity_factor=2.0, expert_choice_capacity_factor=2.0,
                dselect_entropy_weight=0.1)
MODELS = {"mos": MODEL, **{n: dataclasses.replace(MODEL, name=n, moe=MOE) for n in ("gshard", "expert_choice",
                                                                                    "dselect_k")}}


def make_batches(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    items = rng.integers(1, N_ITEMS + 1, (B, S, T)).astype(np.int32)
    items[:, 0, :] = 0  # a padding session in front
    items[1, 1, :] = 0  # user 1 has two: the devices hold different numbers of real sessions
    items[:, :, T - 1] *= rng.integers(0, 2, (B, S)).astype(np.int32)  # some padding at session ends
    out.append(dict(items=items, cats=np.where(items > 0, items % N_CATS + 1, 0).astype(np.int32),
                    times=np.zeros((B, S, T), np.int32), session_theme=np.full((B, S), -1, np.int32),
                    target_item=rng.integers(1, N_ITEMS + 1, B).astype(np.int32),
                    target_cat=rng.integers(1, N_CATS + 1, B).astype(np.int32),
                    label=rng.integers(0, 2, B).astype(np.float32), user=np.arange(B, dtype=np.int32),
                    weight=np.array([1, 1, 1, 0], np.float32)))  # a padding row on the second device
  return out


def run_path(parallelism: str, n_devices: int, mesh_expert: int = 1, model_cfg: ModelConfig = MODEL):
  # eps=1e-3: Adam would otherwise turn float noise in near-zero gradients into full-size updates of opposite signs.
  tcfg = TrainConfig(batch_size=B, eval_batch_size=B, learning_rate=1e-2, warmup_steps=1, eps=1e-3,
                     parallelism=parallelism, mesh_expert=mesh_expert)
  tx = optimizer.make_optimizer(tcfg, total_steps=STEPS)
  schedule = optimizer.learning_rate_schedule(tcfg, STEPS)
  model = build_model(dataclasses.replace(model_cfg), rngs=nnx.Rngs(0))
  graphdef, state = step_lib.init_state(model, tx)
  ex = Executor(tcfg, graphdef, tx, schedule, "ctr", state, devices=jax.devices()[:n_devices])
  metrics = [ex.train_step(b) for b in make_batches(STEPS)]
  losses_seen = [float(m["loss"]) for m in metrics]
  params = jax.tree.map(np.asarray, jax.device_get(ex.saveable_state().params))
  ex.first_metrics = jax.device_get(metrics[0])
  return ex, np.array(losses_seen), params


@pytest.fixture(scope="module")
def reference():
  return run_path("mesh", 1)


def _assert_same_run(got, ref):
  _, ref_losses, ref_params = ref
  _, got_losses, got_params = got
  assert np.all(np.isfinite(ref_losses)) and ref_losses[0] != ref_losses[-1]  # training actually moves
  np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got_params, ref_params)


def test_two_devices_are_forced():
  assert jax.device_count() >= 2, "tests/conftest.py should force 2 CPU devices"


@pytest.mark.parametrize("parallelism, n_devices, mesh_expert", [
    ("mesh", 2, 1), ("mesh", 2, 2), ("pmap", 2, 1)], ids=["mesh-data2", "mesh-expert2", "pmap-2"])
def test_losses_and_params_match_one_device_mesh(reference, parallelism, n_devices, mesh_expert):
  got = run_path(parallelism, n_devices, mesh_expert)
  _assert_same_run(got, reference)
  ex = got[0]
  assert float(reference[0].first_metrics["aux_loss"]) > 0
  # Global-batch statistics on every path, and the same gradient (counted once, not once per device).
  for key in ("aux_loss", "balance_loss", "z_loss", "mi_loss", "router_entropy", "grad_norm"):
    np.testing.assert_allclose(ex.first_metrics[key], reference[0].first_metrics[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  if parallelism == "mesh":
    # The batch is really split over the data axis, and (expert=2) the stacked theme experts over the expert axis.
    assert ex.num_shards == 2 // mesh_expert
    expert_leaves = [x for p, x in jax.tree_util.tree_flatten_with_path(ex.state.params)[0]
                     if sharding.is_expert_path(p)]
    assert expert_leaves, "MoS should have stacked parameters under theme_experts"
    specs = {tuple(x.sharding.spec) for x in expert_leaves}
    assert specs == ({("expert",)} if mesh_expert == 2 else {()})


@pytest.mark.parametrize("name", ["gshard", "expert_choice", "dselect_k"])
def test_moe_pmap_matches_one_device_mesh(name):
  ref = run_path("mesh", 1, model_cfg=MODELS[name])
  got = run_path("pmap", 2, model_cfg=MODELS[name])
  _assert_same_run(got, ref)
  np.testing.assert_allclose(got[0].first_metrics["aux_loss"], ref[0].first_metrics["aux_loss"], rtol=1e-5)


def test_pmap_dropout_folds_the_device_index_and_keeps_the_global_aux_loss():
  """pmap with dropout and aux on: the first loss is exactly sum over devices d of the weighted loss of d's rows
  under RNG keys with d folded in, over the global weight, plus the global batch's aux loss."""
  cfg = dataclasses.replace(MODEL, dropout=0.3)
  ex, got_losses, _ = run_path("pmap", 2, model_cfg=cfg)
  model = build_model(dataclasses.replace(cfg), rngs=nnx.Rngs(0))
  graphdef, params, rest = step_lib.split_model(model)
  batch = make_batches(STEPS)[0]
  half = B // 2

  @jax.jit
  def device_num(r, rows):  # one device's weighted loss sum in training mode, with RNG state r
    out = nnx.merge(graphdef, params, r, copy=True)(rows, deterministic=False)
    return losses.weighted_sum(out.logits, rows, "ctr")[0]

  halves = [{k: v[d * half:(d + 1) * half] for k, v in batch.items()} for d in range(2)]
  num = sum(float(device_num(step_lib.fold_rng_keys(rest, jnp.int32(d)), halves[d])) for d in range(2))
  aux = float(nnx.merge(graphdef, params, rest)(batch, deterministic=True).aux_loss)  # routing has no dropout
  np.testing.assert_allclose(got_losses[0], num / batch["weight"].sum() + aux, rtol=1e-5)
  # The devices' masks differ: the same loss with unfolded (shared) keys is another number.
  shared = sum(float(device_num(rest, halves[d])) for d in range(2))
  assert abs(shared - num) > 1e-4
  # The replicated keys are unchanged after the step (only the counts advance), identically on both devices.
  keys = [x for x in jax.tree.leaves(ex.state.rest) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]
  ref_keys = [x for x in jax.tree.leaves(rest) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]
  for k, r in zip(keys, ref_keys):
    np.testing.assert_array_equal(jax.random.key_data(k)[0], jax.random.key_data(r))
    np.testing.assert_array_equal(jax.random.key_data(k)[1], jax.random.key_data(r))


def test_first_step_loss_is_the_weighted_cross_entropy_of_the_initial_model(reference):
  """The step's first loss equals a direct float64 computation from the initial model's logits plus its aux loss."""
  model = build_model(dataclasses.replace(MODEL), rngs=nnx.Rngs(0))
  graphdef, params, rest = step_lib.split_model(model)
  batch = make_batches(STEPS)[0]
  out = jax.jit(lambda p, r, b: nnx.merge(graphdef, p, r)(b, deterministic=True))(params, rest, batch)
  z, y, w = np.asarray(out.logits, np.float64), batch["label"], batch["weight"]
  ce = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
  np.testing.assert_allclose(reference[1][0], (w * ce).sum() / w.sum() + float(out.aux_loss), rtol=1e-5)


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
