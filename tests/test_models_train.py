"""Every model of this package trains for a few steps on random data (CPU, optax), in float32 and bfloat16."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mos_jax.models import ModelConfig, build_model

BASE = ModelConfig(num_items=12, num_cats=4, num_sessions=4, session_len=2, embed_dim=8, hidden_dim=8, num_heads=2,
                   num_themes=2, top_k=1, dropout=0.1, head_hidden=8)


def random_batch(seed, task, b=4):
  rng = np.random.default_rng(seed)
  items = rng.integers(0, 13, (b, 4, 2)).astype(np.int32)
  items[:, -1, 0] = rng.integers(1, 13, b)  # every user has a recent item
  return dict(items=items, cats=(items % 4 + 1) * (items > 0), target_item=rng.integers(1, 13, b).astype(np.int32),
              target_cat=rng.integers(1, 5, b).astype(np.int32),
              label=(rng.random(b) < 0.5).astype(np.float32) if task == "ctr" else np.ones(b, np.float32),
              weight=np.ones(b, np.float32), session_theme=np.zeros((b, 4), np.int32))


def loss_fn(model, batch, task):
  out = model(batch, deterministic=False)
  if task == "ctr":
    per = optax.sigmoid_binary_cross_entropy(out.logits, batch["label"])
  else:
    per = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["target_item"])
  return jnp.sum(per * batch["weight"]) / jnp.sum(batch["weight"]) + out.aux_loss


@pytest.mark.parametrize("overrides", [
  dict(name="mos", task="ctr"),
  dict(name="backbone", task="next", backbone="gru4rec", dtype="bfloat16"),
], ids=["mos-sasrec-ctr", "backbone-gru-next-bf16"])
def test_loss_decreases(overrides):
  cfg = dataclasses.replace(BASE, **overrides)
  model = build_model(cfg, rngs=nnx.Rngs(params=0, dropout=1))
  tx = optax.adam(3e-2)
  graphdef, state = nnx.split(model)
  opt_state = tx.init(nnx.state(model, nnx.Param))

  @jax.jit
  def step(state, opt_state, batch):  # functional step: split once, merge inside the jitted function
    m = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(loss_fn)(m, batch, cfg.task)
    params = nnx.state(m, nnx.Param)
    updates, opt_state = tx.update(grads, opt_state, params)
    nnx.update(m, optax.apply_updates(params, updates))
    return nnx.state(m), opt_state, loss

  batch = random_batch(0, cfg.task)
  losses = []
  for _ in range(12):
    state, opt_state, loss = step(state, opt_state, batch)
    losses.append(float(loss))
  assert all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
  # Dropout RNG counters advance from step to step (fresh masks), parameters stay float32.
  assert any(np.any(np.asarray(a) > 0) for a in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state), nnx.RngCount)))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state), nnx.Param)))
