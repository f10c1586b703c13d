"""MoE baselines: routing math on exact arrays, fast paths vs plain Python loops, and the models end to end."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mos_jax.models import ModelConfig, MoEConfig, build_model
from mos_jax.models.moe import dispatch as dsp
from mos_jax.models.moe import gating

# ---------------------------------------------------------------------------------------------------------------
# Plain Python references (loops over examples and experts, numpy only).


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ref_top_k(logits, valid, k, cap, normalize=True):
  """GShard by hand: first choices of all examples in order, then second choices; returns {(b, e): (slot, gate)}."""
  probs = _softmax(np.asarray(logits, np.float64))
  fill = [0] * probs.shape[1]
  out = {}
  order = [sorted(range(probs.shape[1]), key=lambda e: (-probs[b, e], e))[:k] for b in range(len(probs))]
  for j in range(k):
    for b in range(len(probs)):
      if not valid[b]:
        continue
      e = order[b][j]
      if fill[e] < cap:
        g = probs[b, e] / (sum(probs[b, order[b]]) if normalize and k > 1 else 1.0)
        out[(b, e)] = (fill[e], g)
      fill[e] += 1
  return out


def ref_expert_choice(logits, valid, cap):
  """Expert e takes the cap valid examples of highest prob (ties: lower index); returns {(b, e): (slot, gate)}."""
  probs = _softmax(np.asarray(logits, np.float64))
  out = {}
  for e in range(probs.shape[1]):
    ranked = sorted((b for b in range(len(probs)) if valid[b]), key=lambda b: (-probs[b, e], b))
    for c, b in enumerate(ranked[:cap]):
      out[(b, e)] = (c, probs[b, e])
  return out


def _as_dict(routing):
  d = np.asarray(routing.dispatch)
  c = np.asarray(routing.combine)
  out = {}
  for b, e, s in zip(*np.nonzero(d)):
    assert (b, e) not in out, "an example sits twice in one expert"
    out[(int(b), int(e))] = (int(s), float(c[b, e, s]))
  return out


def _assert_same(got, want):
  assert set(got) == set(want)
  for key, (slot, gate) in want.items():
    assert got[key][0] == slot, key
    np.testing.assert_allclose(got[key][1], gate, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Routing math on exact arrays.


def test_capacity_formula_and_errors():
  assert gating.capacity(8, 4, 1.25, k=2) == 5  # ceil(1.25 * 2 * 8 / 4)
  assert gating.capacity(8, 4, 1.0) == 2
  assert gating.capacity(4, 2, 4.0, k=2) == 4  # clipped to B
  assert gating.capacity(2, 8, 0.1) == 1  # at least one slot
  with pytest.raises(ValueError, match="capacity_factor"):
    gating.capacity(4, 2, 0.0)


LOGITS_4x3 = np.array([[3, 2, 0], [3, 0, 2], [3, 2, 0], [0, 3, 2]], np.float32)


def test_top2_exact_slots_priority_and_drops():
  r = gating.top_k_routing(jnp.asarray(LOGITS_4x3), jnp.ones(4, bool), k=2, capacity=2)
  p = _softmax(LOGITS_4x3.astype(np.float64))
  # First choices: e0 <- b0 (slot 0), b1 (slot 1), b2 (dropped); e1 <- b3 (slot 0).
  # Second choices come after ALL first choices: b0 -> e1 slot 1, b1 -> e2 slot 0, b2 -> e1 (full), b3 -> e2 slot 1.
  want = {
      (0, 0): (0, p[0, 0] / (p[0, 0] + p[0, 1])), (1, 0): (1, p[1, 0] / (p[1, 0] + p[1, 2])),
      (3, 1): (0, p[3, 1] / (p[3, 1] + p[3, 2])), (0, 1): (1, p[0, 1] / (p[0, 0] + p[0, 1])),
      (1, 2): (0, p[1, 2] / (p[1, 0] + p[1, 2])), (3, 2): (1, p[3, 2] / (p[3, 1] + p[3, 2])),
  }
  _assert_same(_as_dict(r), want)
  np.testing.assert_array_equal(r.index, [[0, 1], [3, 0], [1, 3]])
  assert bool(jnp.all(r.slot_valid))
  np.testing.assert_allclose(r.metrics["dropped_fraction"], 2 / 8)
  np.testing.assert_array_equal(r.metrics["expert_count"], [2, 2, 2])
  # Balance loss: 3 of 4 first choices on e0, 1 on e1; E * sum_e f_e * mean_prob_e.
  np.testing.assert_allclose(r.metrics["balance_loss"], 3 * (0.75 * p[:, 0].mean() + 0.25 * p[:, 1].mean()),
                             rtol=1e-6)


def test_top2_invalid_rows_are_never_routed_and_free_capacity():
  valid = jnp.array([True, False, True, True])
  r = gating.top_k_routing(jnp.asarray(LOGITS_4x3), valid, k=2, capacity=2)
  got = _as_dict(r)
  assert not any(b == 1 for b, _ in got)
  assert got[(2, 0)][0] == 1  # b2 takes the e0 slot the padding row no longer holds
  np.testing.assert_allclose(r.metrics["dropped_fraction"], 1 / 6, rtol=1e-6)  # only b2 -> e1 overflows (e1: b3, b0)
  r_none = gating.top_k_routing(jnp.asarray(LOGITS_4x3), jnp.zeros(4, bool), k=2, capacity=2)
  assert float(jnp.sum(r_none.dispatch)) == 0 and not bool(jnp.any(r_none.slot_valid))
  assert np.isfinite(float(r_none.metrics["dropped_fraction"]))


def test_top1_without_normalisation_keeps_raw_probability():
  r = gating.top_k_routing(jnp.asarray(LOGITS_4x3), jnp.ones(4, bool), k=1, capacity=4)
  p = _softmax(LOGITS_4x3.astype(np.float64))
  _assert_same(_as_dict(r), {(0, 0): (0, p[0, 0]), (1, 0): (1, p[1, 0]), (2, 0): (2, p[2, 0]), (3, 1): (0, p[3, 1])})


def test_expert_choice_exact():
  logits = jnp.array([[2, 0], [0, 2], [1, 0], [0, 0]], jnp.float32)
  p = _softmax(np.asarray(logits, np.float64))
  r = gating.expert_choice_routing(logits, jnp.ones(4, bool), capacity=2)
  np.testing.assert_array_equal(r.index, [[0, 2], [1, 3]])
  _assert_same(_as_dict(r), {(0, 0): (0, p[0, 0]), (2, 0): (1, p[2, 0]), (1, 1): (0, p[1, 1]), (3, 1): (1, p[3, 1])})
  np.testing.assert_allclose(r.metrics["dropped_fraction"], 0.0)
  # Padding rows are never chosen; with fewer valid rows than slots the extra slots stay empty.
  r = gating.expert_choice_routing(logits, jnp.array([False, False, False, True]), capacity=2)
  np.testing.assert_array_equal(r.slot_valid, [[True, False], [True, False]])
  np.testing.assert_array_equal(r.index, [[3, 0], [3, 0]])
  np.testing.assert_allclose(r.metrics["experts_per_example"], 2.0)


@pytest.mark.parametrize("seed", range(6))
def test_routing_matches_python_loop(seed):
  rng = np.random.default_rng(seed)
  num_tokens, num_experts = int(rng.integers(2, 7)), int(rng.integers(2, 5))
  logits = rng.normal(size=(num_tokens, num_experts)).astype(np.float32) * 2
  valid = rng.random(num_tokens) < 0.8
  for k in range(1, min(num_experts, 2) + 1):
    cap = gating.capacity(num_tokens, num_experts, 1.0, k=k)
    r = gating.top_k_routing(jnp.asarray(logits), jnp.asarray(valid), k=k, capacity=cap)
    _assert_same(_as_dict(r), ref_top_k(logits, valid, k, cap))
  cap = gating.capacity(num_tokens, num_experts, 1.5)
  r = gating.expert_choice_routing(jnp.asarray(logits), jnp.asarray(valid), capacity=cap)
  _assert_same(_as_dict(r), ref_expert_choice(logits, valid, cap))


def test_smooth_step_and_dselect_weights_exact():
  t = jnp.array([-1.0, -0.5, 0.0, 0.25, 0.5, 2.0])
  np.testing.assert_allclose(gating.smooth_step(t, 1.0), [0, 0, 0.5, 0.84375, 1, 1], atol=1e-7)
  np.testing.assert_array_equal(gating.binary_codes(3), [[0, 0], [0, 1], [1, 0]])
  # E=4: saturated selector bits (1, 0) pick expert 2; bits (0, 1) pick expert 1; mix 0.5/0.5.
  sel = jnp.array([[[5.0, -5.0], [-5.0, 5.0]]])
  w, regs = gating.dselect_k_weights(sel, jnp.zeros((1, 2)), num_experts=4, gamma=1.0)
  np.testing.assert_allclose(w, [[0, 0.5, 0.5, 0]], atol=1e-7)
  np.testing.assert_allclose(regs["selector_entropy"], 0.0, atol=1e-5)
  np.testing.assert_allclose(regs["unreachable_penalty"], 0.0, atol=1e-6)
  # E=3, undecided bits: every code gets 1/4, expert "11" is unreachable, so a selector only sums to 3/4.
  w, regs = gating.dselect_k_weights(jnp.zeros((1, 1, 2)), jnp.zeros((1, 1)), num_experts=3, gamma=1.0)
  np.testing.assert_allclose(w, [[0.25, 0.25, 0.25]], atol=1e-7)
  np.testing.assert_allclose(regs["unreachable_penalty"], 1 / 0.75 - 1, rtol=1e-6)
  with pytest.raises(ValueError, match="ceil\\(log2 E\\)=2"):
    gating.dselect_k_weights(jnp.zeros((1, 1, 3)), jnp.zeros((1, 1)), num_experts=3, gamma=1.0)


def test_dselect_weights_match_loop():
  rng = np.random.default_rng(0)
  sel = rng.normal(size=(3, 2, 3)).astype(np.float32)
  mix = rng.normal(size=(3, 2)).astype(np.float32)
  w, _ = gating.dselect_k_weights(jnp.asarray(sel), jnp.asarray(mix), num_experts=6, gamma=1.5)

  def step(t):
    return 0.0 if t <= -0.75 else 1.0 if t >= 0.75 else -2 / 1.5**3 * t**3 + 3 / 3.0 * t + 0.5

  want = np.zeros((3, 6))
  for b, i, e in itertools.product(range(3), range(2), range(6)):
    bits = [(e >> (2 - j)) & 1 for j in range(3)]
    r = math.prod(step(sel[b, i, j]) if bit else 1 - step(sel[b, i, j]) for j, bit in enumerate(bits))
    want[b, e] += _softmax(mix[b].astype(np.float64))[i] * r
  np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# Dispatchers: einsum and gather agree (values and gradients) and match a loop.


def _route(kind, logits, valid):
  if kind == "gshard":
    return gating.top_k_routing(logits, valid, k=2, capacity=2)
  return gating.expert_choice_routing(logits, valid, capacity=2)


@pytest.mark.parametrize("kind", ["gshard", "expert_choice"])
def test_dispatchers_agree_and_match_loop(kind):
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  valid = jnp.array([True, True, False, True])
  x = jnp.asarray(rng.normal(size=(4, 5, 2)), jnp.float32)
  mask = jnp.asarray(rng.random((4, 5)) < 0.7)
  w = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)

  def run(names, logits, x):
    disp, comb = dsp.DISPATCHERS[names]
    r = _route(kind, logits, valid)
    xe, me = disp(x, r), disp(mask, r)  # [E,C,L,D], [E,C,L]
    y = jnp.einsum("ecld,dh->ech", xe * me[..., None], w)  # a toy per-slot expert
    return comb(jnp.tanh(y), r)

  out_e, out_g = run("einsum", logits, x), run("gather", logits, x)
  np.testing.assert_allclose(out_e, out_g, rtol=1e-6, atol=1e-7)
  # Loop reference: out[b] = sum over (e, slot) holding b of gate * expert(x[b]).
  r = _route(kind, logits, valid)
  want = np.zeros((4, 3))
  for (b, e), (_, gate) in _as_dict(r).items():
    want[b] += gate * np.tanh((np.asarray(x[b]) * np.asarray(mask[b])[:, None]).sum(0) @ np.asarray(w))
  np.testing.assert_allclose(out_e, want, rtol=1e-5, atol=1e-6)
  # Gradients w.r.t. the router logits and the inputs agree.
  loss = lambda names: lambda lg, xx: jnp.sum(run(names, lg, xx) ** 2)  # noqa: E731
  ge = jax.grad(loss("einsum"), argnums=(0, 1))(logits, x)
  gg = jax.grad(loss("gather"), argnums=(0, 1))(logits, x)
  for a, b in zip(ge, gg):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(ge[0]).sum()) > 0  # the router learns through the gates


def test_dispatch_preserves_dtype_and_empty_slots():
  r = gating.expert_choice_routing(jnp.zeros((3, 2)), jnp.array([True, False, False]), capacity=2)
  for x in (jnp.arange(6, dtype=jnp.int32).reshape(3, 2) + 1, jnp.ones((3, 2), bool),
            jnp.ones((3, 2), jnp.bfloat16)):
    a, b = dsp.dispatch_einsum(x, r), dsp.dispatch_gather(x, r)
    assert a.dtype == b.dtype == x.dtype and a.shape == b.shape == (2, 2, 2)
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    np.testing.assert_array_equal(np.asarray(a[:, 1], np.float32), 0)  # the empty slot holds nothing


# ---------------------------------------------------------------------------------------------------------------
# The models: fast paths vs a per-example, per-expert loop; training; dtype; padding.

B, S, T, V, NC = 4, 2, 3, 20, 5


def _cfg(name, **kw):
  moe = MoEConfig(num_experts=3, **kw.pop("moe", {}))
  base = dict(name=name, task="ctr", num_items=V, num_cats=NC, num_sessions=S, session_len=T, embed_dim=8,
              hidden_dim=8, num_heads=2, head_hidden=8, dropout=0.0, moe=moe)
  return ModelConfig(**{**base, **kw})


def _batch(seed=0, s=S):
  rng = np.random.default_rng(seed)
  items = rng.integers(1, V + 1, (B, s, T)).astype(np.int32)
  items[:, :, -1] *= rng.random((B, s)) < 0.5  # some padding items at the end of sessions
  items[0, 0] = 0  # a padding session at the front
  return dict(items=items, cats=np.where(items > 0, rng.integers(1, NC + 1, items.shape), 0).astype(np.int32),
              target_item=rng.integers(1, V + 1, B).astype(np.int32),
              target_cat=rng.integers(1, NC + 1, B).astype(np.int32),
              label=(rng.random(B) < 0.5).astype(np.float32), weight=np.ones(B, np.float32))


def _bce(logits, label):
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, label))


def ref_forward(model, batch, assignments=None):
  """Loop reference: u[b] = sum over experts e holding b of gate(b, e) * expert_e(x[b]), one call per pair.

  ``assignments`` {(b, e): slot} comes from the plain-Python routing of the concrete router logits (static here);
  gates are recomputed in jnp from the same logits so gradients reach the router.
  """
  x, mask, target, feats, valid = model.embed(batch)
  gdef, stacked = nnx.split(model.experts)
  expert = lambda e: nnx.merge(gdef, jax.tree.map(lambda a: a[e], stacked))  # noqa: E731
  u = jnp.zeros((B, model.experts.out_dim), jnp.float32)
  if model.kind == "dselect_k":
    w, _ = model.dselect_weights(feats)
    pairs = {(b, e): w[b, e] for b in range(B) for e in range(model.num_experts)}
  else:
    probs = jax.nn.softmax(model.router(feats), axis=-1)
    pairs = {}
    for (b, e) in assignments:
      if model.kind == "gshard":  # gates normalised over the example's top-k experts (a static set here too)
        pairs[(b, e)] = probs[b, e] / jnp.sum(probs[b, np.asarray(assignments.top[b])])
      else:
        pairs[(b, e)] = probs[b, e]
  for (b, e), g in pairs.items():
    h = expert(e)(x[b:b + 1], mask[b:b + 1], target[b:b + 1], deterministic=True)[0]
    u = u.at[b].add(g * h.astype(jnp.float32))
  return model.head(u, target, model.embedder.item_table, deterministic=True)


def _assignments(model, batch):
  _, _, _, feats, valid = model.embed(batch)
  logits = np.asarray(model.router(feats))
  cap = gating.capacity(B, model.num_experts, model.capacity_factor, k=model.top_k if model.kind == "gshard" else 1)
  if model.kind == "gshard":
    assign = _Assign(ref_top_k(logits, np.asarray(valid), model.top_k, cap))
    assign.top = [sorted(range(logits.shape[1]), key=lambda e: (-logits[b, e], e))[:model.top_k] for b in range(B)]
    return assign
  return _Assign(ref_expert_choice(logits, np.asarray(valid), cap))


class _Assign(dict):
  """{(b, e): (slot, gate)} plus ``top`` (each example's top-k experts, for GShard's gate normalisation)."""

  top: list


@pytest.mark.parametrize("name,dispatch", [("gshard", "einsum"), ("gshard", "gather"), ("expert_choice", "einsum"),
                                           ("expert_choice", "gather"), ("dselect_k", "einsum")])
def test_model_matches_loop_reference_forward_and_grad(name, dispatch):
  # Capacity 1.0 with 4 examples on 3 experts forces drops (GShard) / unchosen examples (Expert Choice).
  cfg = _cfg(name, dispatch=dispatch, moe=dict(capacity_factor=1.0, expert_choice_capacity_factor=1.0))
  model = build_model(cfg, rngs=nnx.Rngs(0))
  batch = _batch(1)
  gdef, params, rest = nnx.split(model, nnx.Param, ...)
  assign = None if name == "dselect_k" else _assignments(model, batch)
  # Module state travels as jit arguments (never closed over): NNX refuses variables from another trace level.
  # Training mode (dropout is 0): batch-level routing with capacity; evaluation routes per example (next tests).
  def fast(p, r):
    out = nnx.merge(gdef, p, r, copy=True)(batch, deterministic=False)
    return _bce(out.logits, batch["label"]), out

  def ref(p, r):
    logits = ref_forward(nnx.merge(gdef, p, r), batch, assign)
    return _bce(logits, batch["label"]), logits

  (_, out), gf = jax.jit(jax.value_and_grad(fast, has_aux=True))(params, rest)
  (_, ref_logits), gr = jax.jit(jax.value_and_grad(ref, has_aux=True))(params, rest)
  np.testing.assert_allclose(out.logits, ref_logits, rtol=1e-5, atol=1e-6)
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(gf), jax.tree_util.tree_leaves_with_path(gr)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  router_grads = gf["selector" if name == "dselect_k" else "router"]["kernel"][...]
  assert float(jnp.abs(router_grads).sum()) > 0, "the router must receive gradients"
  if name == "gshard":
    np.testing.assert_allclose(out.metrics["dropped_fraction"],
                               1 - len(assign) / (cfg.moe.top_k * B), rtol=1e-6)
  # Stacked experts: leading axis E under `experts`.
  assert all(leaf.shape[0] == cfg.moe.num_experts for leaf in jax.tree.leaves(nnx.state(model.experts, nnx.Param)))


def test_jit_matches_eager_and_shapes_do_not_depend_on_data():
  model = build_model(_cfg("gshard"), rngs=nnx.Rngs(2))
  gdef, state = nnx.split(model)
  run = jax.jit(lambda st, b: nnx.merge(gdef, st)(b, deterministic=True))
  for seed in (3, 4):
    batch = _batch(seed)
    eager, jitted = model(batch, deterministic=True), run(state, batch)
    np.testing.assert_allclose(eager.logits, jitted.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eager.aux_loss, jitted.aux_loss, rtol=1e-5)
  assert run._cache_size() == 1  # noqa: SLF001  one compilation for different data


@pytest.mark.parametrize("name", ["gshard", "dselect_k"])
def test_padding_sessions_and_padding_rows_change_nothing(name):
  # Tight capacity (C = 2 of 4 rows) so a routed padding row would take a real row's slot.
  model = build_model(_cfg(name, dispatch="gather", moe=dict(capacity_factor=0.5)), rngs=nnx.Rngs(3))
  cfg_k = 2  # MoEConfig.top_k default
  batch = _batch(5)
  run = lambda b: model(b, deterministic=False)  # noqa: E731  training-mode routing (capacity over the batch)
  base = run(batch)
  padded = dict(batch)
  for key in ("items", "cats"):  # one more (padding) session at the front
    padded[key] = np.concatenate([np.zeros((B, 1, T), np.int32), batch[key]], axis=1)
  np.testing.assert_allclose(run(padded).logits, base.logits, rtol=1e-5, atol=1e-6)
  # Weight-0 rows (padding rows of an evaluation batch) take no expert slot: whatever they hold, the real rows'
  # outputs stay the same, and the slot counts cover real rows only.
  half = dict(batch, weight=np.array([0, 0, 1, 1], np.float32))  # padding rows first: they would win priority
  other = dict(half, items=batch["items"].copy())
  other["items"][:2] = _batch(9)["items"][:2]
  a, b = run(half), run(other)
  np.testing.assert_allclose(a.logits[2:], b.logits[2:], rtol=1e-6, atol=1e-7)
  routed = run(dict(half, weight=np.ones(B, np.float32)))
  if name == "gshard":  # the check has teeth: routing the same rows as real ones does change rows 2-3 here
    assert not np.allclose(routed.logits[2:], a.logits[2:], rtol=1e-6, atol=1e-7)
  if name == "gshard":
    kept = 2 * cfg_k * (1 - float(a.metrics["dropped_fraction"]))  # 2 real rows x top-2, minus drops
    np.testing.assert_allclose(float(jnp.sum(a.metrics["expert_count"])), kept, rtol=1e-6)


@pytest.mark.parametrize("name", ["gshard", "expert_choice", "dselect_k"])
def test_trains_with_decreasing_loss(name):
  task = "next" if name == "dselect_k" else "ctr"  # both heads train
  model = build_model(_cfg(name, task=task, dropout=0.1), rngs=nnx.Rngs(4))
  batch = _batch(6)
  opt = optax.adam(1e-2)
  opt_state = opt.init(nnx.state(model, nnx.Param))

  def loss_fn(m):
    out = m(batch, deterministic=False)  # dropout on: exercises the experts' stacked RNG streams
    if task == "ctr":
      loss = _bce(out.logits, batch["label"])
    else:
      loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["target_item"]))
    return loss + out.aux_loss, loss

  @nnx.jit
  def step(m, o):
    (_, loss), grads = nnx.value_and_grad(loss_fn, has_aux=True)(m)
    params = nnx.state(m, nnx.Param)
    upd, o = opt.update(grads, o, params)
    nnx.update(m, optax.apply_updates(params, upd))
    return o, loss

  losses = []
  for _ in range(12):
    opt_state, loss = step(model, opt_state)
    losses.append(float(loss))
  assert all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


@pytest.mark.parametrize("name", ["gshard", "expert_choice", "dselect_k"])
def test_bfloat16_matches_float32(name):
  """Same parameters, bfloat16 compute: next-item scores within 3% of the largest |float32 score| (bf16: 8 mantissa
  bits; measured at most 0.8%). The router runs in float32 on bf16 features; no routing decision flips here."""
  outs = [build_model(_cfg(name, dtype=dtype, task="next"), rngs=nnx.Rngs(5))(_batch(7), deterministic=True)
          for dtype in ("float32", "bfloat16")]
  assert outs[1].logits.dtype == jnp.float32 and outs[1].logits.shape == (B, V + 1)
  a, b = np.asarray(outs[0].logits[:, 1:]), np.asarray(outs[1].logits[:, 1:])
  assert np.abs(a).max() > 0.1
  np.testing.assert_allclose(b, a, rtol=0, atol=0.03 * np.abs(a).max())
  assert bool(jnp.isfinite(outs[1].aux_loss))


def test_bad_config_names_the_field():
  with pytest.raises(ValueError, match="moe.top_k"):
    build_model(_cfg("gshard", moe=dict(top_k=5)), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="moe.expert_choice_capacity_factor"):
    build_model(_cfg("expert_choice", moe=dict(expert_choice_capacity_factor=0.0)), rngs=nnx.Rngs(0))
