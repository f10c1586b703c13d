"""Scalable next-item losses (train.next_loss): sampled softmax with log-Q correction and in-batch negatives.

Exact references: with every item sampled once the sampled softmax is the full softmax (loss and gradient); small
hand-checkable cases for the accidental-hit mask, the in-batch frequency correction and the samplers.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mos_jax import config as config_lib
from mos_jax.models import ModelConfig, build_model
from mos_jax.models.heads import PAD_LOGIT
from mos_jax.training import losses
from mos_jax.training import step as step_lib
from mos_jax.training.config import TrainConfig

V, D, B = 9, 4, 5  # items 1..V, row 0 = padding


def random_inputs(seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(V + 1, D)), jnp.float32)
  target = jnp.asarray([3, 1, 9, 3, 5], jnp.int32)  # a repeated target
  return q, table, target


def full_loss(q, table, target):
  logits = (q @ table.T).at[:, 0].set(PAD_LOGIT)
  return optax.softmax_cross_entropy_with_integer_labels(logits, target)


def all_items_sampled(q, table, target):
  ids = jnp.arange(1, V + 1, dtype=jnp.int32)
  return losses.sampled_softmax_loss(q, table, target, ids, jnp.zeros(V), jnp.zeros(()))  # log(N * 1/V) = 0


def test_sampled_softmax_with_every_item_sampled_equals_full_softmax():
  q, table, target = random_inputs()
  np.testing.assert_allclose(all_items_sampled(q, table, target), full_loss(q, table, target), rtol=1e-6)
  mean = lambda f: lambda q, t: jnp.mean(f(q, t, target))  # noqa: E731
  g_full = jax.grad(mean(full_loss), argnums=(0, 1))(q, table)
  g_sampled = jax.grad(mean(all_items_sampled), argnums=(0, 1))(q, table)
  for a, b in zip(g_sampled, g_full):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(g_full[1][0]).max()) == 0.0  # the padding row gets no gradient on either path


def test_sampled_softmax_correction_and_accidental_hits():
  q, table, target = random_inputs(1)
  s = np.asarray(q @ table.T, np.float64)
  ids = jnp.asarray([3, 3, 7], jnp.int32)  # item 3 is the target of rows 0 and 3: never its own negative
  log_e = jnp.asarray([0.5, 0.5, -1.0], jnp.float32)
  log_e_t = jnp.asarray([0.1, 0.2, 0.3, 0.4, 0.5], jnp.float32)
  got = np.asarray(losses.sampled_softmax_loss(q, table, target, ids, log_e, log_e_t))
  for i, t in enumerate(np.asarray(target)):
    pos = s[i, t] - float(log_e_t[i])
    cols = [pos] + [s[i, j] - float(e) for j, e in zip(np.asarray(ids), np.asarray(log_e)) if j != t]
    assert got[i] == pytest.approx(np.logaddexp.reduce(cols) - pos, rel=1e-5)


def test_in_batch_loss_matches_reference():
  q, table, target = random_inputs(2)
  weight = jnp.asarray([1, 1, 1, 1, 0], jnp.float32)  # the last row pads the batch: never a negative
  got = np.asarray(losses.in_batch_softmax_loss(q, table, target, weight))
  s = np.asarray(q @ table[target].T, np.float64)
  t = np.asarray(target)
  counts = {3: 2, 1: 1, 9: 1}  # among the real rows
  for i in range(B):
    row = []
    for j in range(B):
      if j != i and (t[j] == t[i] or j == 4):
        continue
      row.append(s[i, j] - math.log(counts.get(int(t[j]), 1) / 4))
    diag = s[i, i] - math.log(counts.get(int(t[i]), 1) / 4)
    assert got[i] == pytest.approx(np.logaddexp.reduce(row) - diag, rel=1e-5), i
  assert np.isfinite(got).all()


def test_sample_negatives_uniform_and_popularity():
  ids, log_e = losses.sample_negatives(jax.random.key(0), 4000, V)
  ids = np.asarray(ids)
  assert ids.min() >= 1 and ids.max() <= V and len(np.unique(ids)) == V  # never the padding id 0
  np.testing.assert_allclose(log_e, math.log(4000 / V))
  counts = np.array([0, 0, 997, 0])
  lp = losses.popularity_log_probs(counts, alpha=1.0)
  np.testing.assert_allclose(np.exp(lp), [1 / 1001, 1 / 1001, 998 / 1001, 1 / 1001], rtol=1e-6)
  ids, log_e = losses.sample_negatives(jax.random.key(1), 2000, 4, jnp.asarray(lp))
  ids = np.asarray(ids)
  assert ids.min() >= 1 and ids.max() <= 4 and (ids == 3).mean() > 0.99
  np.testing.assert_allclose(log_e, math.log(2000) + lp[ids - 1], rtol=1e-6)
  # Draw frequencies follow Q over a skewed 50-item distribution (two-level inverse CDF).
  skewed = losses.popularity_log_probs(np.arange(50) ** 2, alpha=1.0)
  ids, _ = losses.sample_negatives(jax.random.key(2), 40000, 50, jnp.asarray(skewed))
  freq = np.bincount(np.asarray(ids), minlength=51)[1:] / 40000
  p = np.exp(skewed)
  assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p / 40000) + 1e-4), np.abs(freq - p).max()  # 4 sd of a binomial
  with pytest.raises(ValueError, match=r"log_probs has shape \(4,\), expected \(5,\)"):
    losses.sample_negatives(jax.random.key(1), 3, 5, jnp.asarray(lp))
  with pytest.raises(ValueError, match="1-D array of counts >= 0"):
    losses.popularity_log_probs(np.array([1, -1]), 1.0)


def test_make_next_loss_choices_and_config_errors():
  assert losses.make_next_loss(TrainConfig()) is None  # full: softmax on the logits
  with pytest.raises(ValueError, match="config.train.next_loss: expected one of"):
    losses.make_next_loss(TrainConfig(next_loss="nce"))
  pop = losses.make_next_loss(TrainConfig(next_loss="sampled", sampled_proposal="popularity", num_sampled=3))
  q, table, target = random_inputs()
  batch = {"target_item": target, "weight": jnp.ones(B)}
  with pytest.raises(ValueError, match="needs the training item counts"):
    pop(q, table, batch, jnp.int32(0))
  cfg = config_lib.Config()
  cfg.train.next_loss = "softmax"
  with pytest.raises(config_lib.ConfigError, match=r"config.train.next_loss='softmax': expected one of \('full'"):
    config_lib.validate(cfg)
  cfg.train.next_loss, cfg.train.num_sampled = "sampled", 0
  with pytest.raises(config_lib.ConfigError, match="config.train.num_sampled=0: expected an integer >= 1"):
    config_lib.validate(cfg)


def test_train_step_with_every_item_sampled_equals_full_softmax_step():
  """Through the real train step: the model's query and tied table reach the loss, and the update is the same."""
  cfg = ModelConfig(name="backbone", task="next", num_items=V, num_cats=3, num_sessions=2, session_len=2,
                    embed_dim=D, hidden_dim=D, num_heads=1, dropout=0.0)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.1)
  graphdef, state = step_lib.init_state(model, tx)
  rng = np.random.default_rng(0)
  items = rng.integers(1, V + 1, (B, 2, 2)).astype(np.int32)
  batch = dict(items=items, cats=np.ones_like(items), target_item=np.asarray(random_inputs()[2]),
               target_cat=np.ones(B, np.int32), weight=np.array([1, 1, 1, 1, 0], np.float32))
  sched = optax.constant_schedule(0.1)

  def every_item(query, table, batch, step):
    return all_items_sampled(query, table, batch["target_item"])

  full_state, full_m = jax.jit(step_lib.make_train_step(graphdef, tx, sched, "next"))(state, batch)
  samp_state, samp_m = jax.jit(step_lib.make_train_step(graphdef, tx, sched, "next", every_item))(state, batch)
  np.testing.assert_allclose(samp_m["loss"], full_m["loss"], rtol=1e-6)
  np.testing.assert_allclose(samp_m["grad_norm"], full_m["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(samp_state.params), jax.tree.leaves(full_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # The configured sampled loss (uniform, 4 draws) runs through the same step and gives a finite, different loss.
  sampled = losses.make_next_loss(dataclasses.replace(TrainConfig(), next_loss="sampled", num_sampled=4))
  _, m = jax.jit(step_lib.make_train_step(graphdef, tx, sched, "next", sampled))(state, batch)
  assert np.isfinite(m["loss"]) and float(m["loss"]) != pytest.approx(float(full_m["loss"]))


def test_loop_trains_with_popularity_negatives_and_validates_in_item_blocks(tmp_path):
  """The real loop: popularity proposal from the train split's targets, blocked validation = unblocked validation."""
  from mos_jax.training.loop import train  # noqa: PLC0415

  def run(workdir, block):
    cfg = config_lib.Config(workdir=str(workdir), seed=0)
    cfg.data.cache_dir = str(tmp_path / "prepared")
    cfg.data.task = "next"
    cfg.data.synthetic.num_users = 40
    cfg.data.num_sessions, cfg.data.session_len = 4, 4
    m = cfg.model
    m.embed_dim = m.hidden_dim = 8
    m.name, m.dropout = "backbone", 0.0  # the cheapest model to compile; the loss and evaluation are model-agnostic
    t = cfg.train
    t.batch_size, t.eval_batch_size, t.num_steps, t.warmup_steps = 8, 64, 2, 0
    t.eval_every, t.checkpoint_every, t.log_every, t.progress_bar = 0, 0, 1, False
    t.next_loss, t.num_sampled, t.sampled_proposal, t.eval_item_block = "sampled", 16, "popularity", block
    return train(config_lib.validate(cfg))

  blocked, whole = run(tmp_path / "blocked", 37), run(tmp_path / "whole", 0)
  assert blocked.status == whole.status == "finished"
  assert blocked.last_eval == whole.last_eval and blocked.last_eval["num_examples"] > 0
