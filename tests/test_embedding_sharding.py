"""Embedding tables sharded by rows over the mesh (train.embedding_sharding = data | model) on the 2 forced CPU devices
of conftest.py: the placement, the padded rows, and training / ranking equal to one device."""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mos_jax import config as config_lib
from mos_jax.evaluation import predict_rows
from mos_jax.models import ModelConfig, build_model
from mos_jax.training import sharding as sharding_lib
from mos_jax.training import step as step_lib
from mos_jax.training.config import TrainConfig
from mos_jax.training.parallel import Executor
from rank_checks import assert_ranks_agree

V, B = 13, 4  # 14 table rows with embedding_rows_multiple=1 (divisible by 2), 16 with multiple 8
CFG = ModelConfig(name="mos", task="next", num_items=V, num_cats=4, num_sessions=2, session_len=2, embed_dim=8,
                  hidden_dim=8, num_heads=1, num_themes=2, dropout=0.0, embedding_rows_multiple=8)


def needs_two_devices():
  if len(jax.devices()) < 2:
    pytest.skip("needs 2 devices (tests/conftest.py forces 2 CPU devices)")


def batches(n=3):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    items = rng.integers(0, V + 1, (B, 2, 2)).astype(np.int32)
    items[:, -1, 0] = rng.integers(1, V + 1, B)
    out.append(dict(items=items, cats=(items % 4 + 1) * (items > 0), target_item=rng.integers(1, V + 1, B).astype(
        np.int32), target_cat=np.ones(B, np.int32), weight=np.array([1, 1, 1, 0], np.float32)))
  return out


def executor(tx=None, **train):
  model = build_model(CFG, rngs=nnx.Rngs(0))
  tx = tx or optax.adamw(1e-2)
  graphdef, state = step_lib.init_state(model, tx)
  t = TrainConfig(batch_size=B, eval_batch_size=B, **train)
  return Executor(t, graphdef, tx, optax.constant_schedule(1e-2), "next", state)


def test_padded_rows_keep_the_model_interface():
  model = build_model(CFG, rngs=nnx.Rngs(0))
  assert model.embedder.item.embedding[...].shape == (16, 8)  # 14 rows rounded up to a multiple of 8
  assert model.embedder.cat.embedding[...].shape == (8, 8)
  assert model.embedder.item_table.shape == (V + 1, 8)
  assert model(batches(1)[0], deterministic=True).logits.shape == (B, V + 1)
  with pytest.raises(ValueError, match="embedding_rows_multiple=0: expected an integer >= 1"):
    dataclasses.replace(CFG, embedding_rows_multiple=0).validate()


def test_tables_and_their_moments_are_split_over_the_chosen_axis():
  needs_two_devices()
  for axis, train in (("data", {}), ("model", dict(mesh_data=1, mesh_model=2))):
    ex = executor(embedding_sharding=axis, **train)
    specs = {jax.tree_util.keystr(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(ex.state_shardings)}
    tables = {k: v for k, v in specs.items() if "['embedder']" in k and "['embedding']" in k}
    assert len(tables) == 6  # item + cat: parameters, AdamW mu and nu
    assert all(v == P(axis) for v in tables.values()), tables
    assert all(v == P() for k, v in specs.items() if k not in tables)
    item = ex.state.params["embedder"]["item"]["embedding"][...]
    assert [s.data.shape for s in item.addressable_shards] == [(8, 8), (8, 8)]  # each device holds half the rows


def test_rows_that_do_not_divide_are_refused_with_the_fix():
  needs_two_devices()
  model = build_model(dataclasses.replace(CFG, num_items=14, num_cats=5, embedding_rows_multiple=1), rngs=nnx.Rngs(0))
  _, params, _ = step_lib.split_model(model)
  mesh = sharding_lib.make_mesh(TrainConfig(), jax.devices()[:2])
  with pytest.raises(ValueError, match=r"embedding_sharding='data': the item table has 15 rows, not divisible by the "
                                       r"2 devices .* set config.model.embedding_rows_multiple to a multiple of 2"):
    sharding_lib.tree_shardings(params, mesh, "data")
  cfg = config_lib.Config()
  cfg.train.embedding_sharding, cfg.train.parallelism = "data", "pmap"
  with pytest.raises(config_lib.ConfigError,
                     match="embedding_sharding='data': expected 'none' with parallelism='pmap'"):
    config_lib.validate(cfg)


@pytest.mark.parametrize("axis,next_loss", [("data", "full"), ("model", "sampled")])
def test_sharded_tables_train_and_rank_like_one_device(axis, next_loss):
  needs_two_devices()
  runs = {"one": dict(mesh_data=1),
          axis: dict(embedding_sharding=axis, **(dict(mesh_data=1, mesh_model=2) if axis == "model" else {}))}
  losses, params, ranks, logits = {}, {}, {}, {}
  for name, train in runs.items():
    # SGD: Adam would turn the float noise in the zero gradients of softmax-invariant biases into +-lr steps.
    ex = executor(optax.sgd(0.5), next_loss=next_loss, num_sampled=5, **train)
    losses[name] = [float(ex.train_step(b)["loss"]) for b in batches()]
    params[name] = jax.tree.map(np.asarray, ex.saveable_state().params)
    ranks[name] = predict_rows(ex.predict_fn(), batches(1), task="next")
    logits[name] = np.asarray(jax.device_get(ex.predict_fn()(batches(1)[0])))
  np.testing.assert_allclose(losses[axis], losses["one"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params[axis]), jax.tree.leaves(params["one"])):
    np.testing.assert_allclose(a, b, atol=1e-5)
  real = batches(1)[0]["weight"] > 0  # predict_rows ranks the real rows only
  assert_ranks_agree(ranks[axis], ranks["one"], logits["one"][real], batches(1)[0]["target_item"][real])
  assert losses["one"][0] != losses["one"][-1]  # the steps did update the parameters
