"""Evaluation-mode properties of every model: scores depend on the example alone (not on the evaluation batch),
the next-item label never reaches an encoder, and one-hot dispatch/combine run at full precision."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mos_jax.models import Encoder, ModelConfig, MoEConfig, build_model, register_encoder
from mos_jax.models import dispatch as mos_dispatch
from mos_jax.models import routing
from mos_jax.models.moe import dispatch as moe_dispatch
from mos_jax.models.moe import gating

S, T, V, NC = 3, 2, 30, 5
N = 256  # examples scored at eval batch sizes 1, 64 and 256
# Tight capacities, so that training-mode routing of a batch does drop (GShard) / leave out (Expert Choice) rows.
BASE = ModelConfig(task="ctr", num_items=V, num_cats=NC, num_sessions=S, session_len=T, embed_dim=8, hidden_dim=8,
                   num_heads=2, head_hidden=8, dropout=0.0, num_themes=2, capacity_factor=0.5, short_sessions=1,
                   moe=MoEConfig(num_experts=3, capacity_factor=0.5, expert_choice_capacity_factor=1.0))
MODELS = ["gshard", "expert_choice", "dselect_k", "mos"]


def make_examples(n, seed=0):
  rng = np.random.default_rng(seed)
  items = rng.integers(1, V + 1, (n, S, T)).astype(np.int32)
  items[:, :, -1] *= rng.random((n, S)) < 0.5
  items[rng.random(n) < 0.3, 0] = 0  # some users with a padding session in front
  return dict(items=items, cats=np.where(items > 0, items % NC + 1, 0).astype(np.int32),
              target_item=rng.integers(1, V + 1, n).astype(np.int32),
              target_cat=rng.integers(1, NC + 1, n).astype(np.int32), weight=np.ones(n, np.float32))


def _rows(batch, idx):
  return {k: v[idx] for k, v in batch.items()}


@pytest.mark.parametrize("name", MODELS)
def test_eval_scores_do_not_depend_on_the_eval_batch(name):
  model = build_model(dataclasses.replace(BASE, name=name), rngs=nnx.Rngs(0))
  gdef, state = nnx.split(model)
  run = jax.jit(lambda st, b: nnx.merge(gdef, st)(b, deterministic=True))
  data = make_examples(N)

  def scores(batch_size, order):
    out = np.zeros(N, np.float32)
    for i in range(0, N, batch_size):
      idx = order[i:i + batch_size]
      out[idx] = np.asarray(run(state, _rows(data, idx)).logits)
    return out

  ref = scores(N, np.arange(N))
  for batch_size, order in [(1, np.arange(N)), (64, np.arange(N)), (N, np.random.default_rng(1).permutation(N))]:
    np.testing.assert_allclose(scores(batch_size, order), ref, rtol=0, atol=1e-6, err_msg=f"eval batch {batch_size}")
  # Padding rows of a final, partial evaluation batch (weight 0, any content) change nothing either.
  half = _rows(data, np.arange(64))
  half["weight"] = np.where(np.arange(64) < 40, 1.0, 0.0).astype(np.float32)
  np.testing.assert_allclose(np.asarray(run(state, half).logits)[:40], ref[:40], rtol=0, atol=1e-6)
  # Every model reports dropped_fraction; GShard and Expert Choice drop in training (this check has teeth: their
  # batch-level routing of these rows does drop) and never at evaluation. MoS drops per user, the same in both modes.
  train = model(_rows(data, np.arange(64)), deterministic=False)  # dropout is 0: only the routing differs
  evaluated = run(state, _rows(data, np.arange(64)))
  if name in ("gshard", "expert_choice"):
    assert float(train.metrics["dropped_fraction"]) > 0
    assert float(evaluated.metrics["dropped_fraction"]) == 0.0
  else:
    np.testing.assert_allclose(evaluated.metrics["dropped_fraction"], train.metrics["dropped_fraction"], rtol=1e-6)


@pytest.mark.parametrize("name", ["gshard", "expert_choice"])
def test_eval_routing_drops_nothing_and_matches_per_example_top_k(name):
  """Evaluation routing: GShard = top-k with capacity B; Expert Choice = top-round(cf) token choice, raw gates."""
  cfg = dataclasses.replace(BASE, name=name, moe=dataclasses.replace(BASE.moe, expert_choice_capacity_factor=2.0))
  model = build_model(cfg, rngs=nnx.Rngs(1))
  data = _rows(make_examples(16, seed=2), np.arange(16))
  _, _, _, feats, valid = model.embed(data)
  r = model.route(feats, valid, deterministic=True)
  assert float(r.metrics["dropped_fraction"]) == 0.0
  probs = np.asarray(jax.nn.softmax(model.router(feats), -1), np.float64)
  k = 2  # MoEConfig.top_k for GShard; round(2.0) for Expert Choice
  gates = np.asarray(jnp.sum(r.combine, axis=2))  # [B,E]
  for b in range(16):
    top = np.argsort(-probs[b], kind="stable")[:k]
    want = np.zeros(3)
    want[top] = probs[b, top] / (probs[b, top].sum() if name == "gshard" else 1.0)
    np.testing.assert_allclose(gates[b], want, rtol=1e-5, atol=1e-7)
  assert gating.expert_choice_eval_k(1.0, 3) == 1 and gating.expert_choice_eval_k(2.0, 3) == 2
  assert gating.expert_choice_eval_k(8.0, 3) == 3 and gating.expert_choice_eval_k(0.25, 3) == 1


# ---------------------------------------------------------------------------------------------------------------------
# The target item is the label in next-item mode: it must never reach an encoder there.


@register_encoder("test_target_echo")
class TargetEcho(Encoder):
  """Adds the target embedding it is given to its output: any leak of the target shows in the scores."""

  seen: list = []  # per trace/call: whether a target was passed

  def __init__(self, cfg, *, max_len, rngs):
    del max_len
    self.out_dim = cfg.hidden_dim
    self.proj = nnx.Linear(cfg.embed_dim, cfg.hidden_dim, rngs=rngs)

  def __call__(self, x, mask, target=None, *, deterministic):
    TargetEcho.seen.append(target is not None)
    pooled = self.proj(jnp.sum(x * mask[..., None], axis=1))
    return pooled if target is None else pooled + 10.0 * self.proj(target)


@pytest.mark.parametrize("name", ["backbone", "mos", "gshard", "expert_choice", "dselect_k"])
def test_next_item_label_never_reaches_the_encoder(name):
  data = make_examples(4, seed=3)
  other = dict(data, target_item=(data["target_item"] % V) + 1, target_cat=(data["target_cat"] % NC) + 1)
  cfg = dataclasses.replace(BASE, name=name, backbone="test_target_echo", task="next")
  model = build_model(cfg, rngs=nnx.Rngs(0))
  TargetEcho.seen.clear()
  np.testing.assert_array_equal(model(data, deterministic=True).logits, model(other, deterministic=True).logits)
  assert TargetEcho.seen and not any(TargetEcho.seen)
  # In CTR mode the target is an input, and target-aware encoders do get it.
  ctr = build_model(dataclasses.replace(cfg, task="ctr"), rngs=nnx.Rngs(0))
  TargetEcho.seen.clear()
  ctr(data, deterministic=True)
  assert TargetEcho.seen and all(TargetEcho.seen)


# ---------------------------------------------------------------------------------------------------------------------
# Precision of the one-hot dispatch and combine.


def _dot_precisions(fn, *args):
  eqns = []

  def walk(jaxpr):
    for e in jaxpr.eqns:
      if e.primitive.name == "dot_general":
        eqns.append(e.params["precision"])
      for v in e.params.values():  # nested jaxprs (pjit, custom_jvp, ...)
        for sub in v if isinstance(v, (list, tuple)) else (v,):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return eqns


def test_one_hot_dispatch_and_combine_run_at_highest_precision():
  hi = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)
  r = gating.top_k_routing(logits, jnp.ones(6, bool), k=2, capacity=3)
  x = jnp.ones((6, 4, 5), jnp.float32)
  precs = (_dot_precisions(lambda lg: gating.top_k_routing(lg, jnp.ones(6, bool), k=2, capacity=3).combine, logits)
           + _dot_precisions(lambda a: moe_dispatch.dispatch_einsum(a, r), x)
           + _dot_precisions(lambda h: moe_dispatch.combine_einsum(h, r), jnp.ones((3, 3, 7), jnp.float32)))
  expert = jnp.array([[[0], [1], [0], [1]]], jnp.int32)
  valid = jnp.ones((1, 4, 1), bool)
  plan = routing.make_plan(expert, jnp.full((1, 4, 1), 0.3, jnp.float32), valid, num_themes=2, capacity=2)
  precs += _dot_precisions(lambda a: mos_dispatch.dispatch(a, jnp.ones((1, 4, 2), bool), plan, num_themes=2,
                                                           capacity=2, weights=plan.gate)[0],
                           jnp.ones((1, 4, 2, 3), jnp.float32))
  assert len(precs) >= 6 and all(p == hi for p in precs), precs
