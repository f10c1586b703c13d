"""Routing math and dispatch of MoS on exact small arrays and against plain Python loops."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mos_jax.models import dispatch as dsp
from mos_jax.models import routing


def ref_assign(expert, valid, num_themes, cap, priority, drop_policy):
  """Plain-loop reference of routing.assign_slots."""
  b_, s_, k_ = expert.shape
  keep = np.zeros(expert.shape, bool)
  slot = np.zeros(expert.shape, np.int32)
  for b in range(b_):
    sessions = list(range(s_))[::-1] if drop_policy == "oldest" else list(range(s_))
    if priority == "choice":
      order = [(s, j) for j in range(k_) for s in sessions]
    else:
      order = [(s, j) for s in sessions for j in range(k_)]
    count = [0] * num_themes
    for s, j in order:
      e = expert[b, s, j]
      if valid[b, s, j] and count[e] < cap:
        keep[b, s, j] = True
        count[e] += 1
    fill = [0] * num_themes
    for s in range(s_):
      for j in range(k_):
        if keep[b, s, j]:
          slot[b, s, j] = fill[expert[b, s, j]]
          fill[expert[b, s, j]] += 1
  return keep, slot


def ref_buffers(x, mask, expert, keep, slot, weights, num_themes, cap):
  """Plain-loop reference of dispatch: buffers[B,K,C,...] and their masks."""
  b_, s_, k_ = expert.shape
  buf = np.zeros((b_, num_themes, cap) + x.shape[2:], np.float32)
  bmask = np.zeros((b_, num_themes, cap) + mask.shape[2:], bool)
  for b, s, j in itertools.product(range(b_), range(s_), range(k_)):
    if keep[b, s, j]:
      buf[b, expert[b, s, j], slot[b, s, j]] = x[b, s] * weights[b, s, j]
      bmask[b, expert[b, s, j], slot[b, s, j]] = mask[b, s]
  return buf, bmask


@pytest.mark.parametrize("args, expected", [
  ((16, 4, 1, 1.5), 6), ((16, 4, 2, 1.25), 10), ((4, 4, 1, 1.0), 1), ((5, 4, 1, 1.0), 2),
  ((4, 2, 1, 1.5, 4), 4), ((16, 4, 1, 1.5, 8), 8), ((3, 1, 1, 1.5), 3), ((8, 4, 1, 1.0), 2),
])
def test_capacity(args, expected):
  assert routing.capacity(*args) == expected


def test_slots_drop_oldest_and_newest_top1():
  # One user, S=5 (session 0 is padding), K=2, C=2: theme 0 gets sessions 1, 3, 4 -> one overflow.
  expert = np.array([[[1], [0], [1], [0], [0]]])
  valid = np.array([[[False], [True], [True], [True], [True]]])
  keep, slot = routing.assign_slots(jnp.array(expert), jnp.array(valid), num_themes=2, capacity=2,
                                    drop_policy="oldest")
  np.testing.assert_array_equal(keep[0, :, 0], [False, False, True, True, True])  # oldest of theme 0 dropped
  np.testing.assert_array_equal(np.where(keep, slot, -1)[0, :, 0], [-1, -1, 0, 0, 1])  # chronological slots
  keep, slot = routing.assign_slots(jnp.array(expert), jnp.array(valid), num_themes=2, capacity=2,
                                    drop_policy="newest")
  np.testing.assert_array_equal(keep[0, :, 0], [False, True, True, True, False])
  np.testing.assert_array_equal(np.where(keep, slot, -1)[0, :, 0], [-1, 0, 0, 1, -1])


def test_top2_priority():
  # S=3, K=2, C=2; choices (1st, 2nd): s0 (0,1), s1 (0,1), s2 (1,0).
  expert = jnp.array([[[0, 1], [0, 1], [1, 0]]])
  valid = jnp.ones((1, 3, 2), bool)
  keep, slot = routing.assign_slots(expert, valid, num_themes=2, capacity=2, priority="choice")
  # Every first choice is served before any second choice; the recent s1's 2nd choice fits, s0's and s2's do not.
  np.testing.assert_array_equal(keep[0], [[1, 0], [1, 1], [1, 0]])
  np.testing.assert_array_equal(np.where(keep, slot, -1)[0], [[0, -1], [1, 0], [1, -1]])
  keep, slot = routing.assign_slots(expert, valid, num_themes=2, capacity=2, priority="time")
  # Session order only (recent first): s2 and s1 take every slot, s0 loses even its first choice.
  np.testing.assert_array_equal(keep[0], [[0, 0], [1, 1], [1, 1]])
  np.testing.assert_array_equal(np.where(keep, slot, -1)[0], [[-1, -1], [0, 0], [1, 1]])


def test_top_k_choice_excludes_padding():
  probs = jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]])
  expert, gate, valid = routing.top_k_choice(probs, jnp.array([[False, True]]), 2)
  np.testing.assert_array_equal(expert[0, 1], [2, 1])
  np.testing.assert_allclose(gate[0], [[0, 0], [0.6, 0.3]])
  np.testing.assert_array_equal(valid[0], [[False, False], [True, True]])


def test_label_choice():
  expert, gate, valid = routing.label_choice(jnp.array([[-1, 2, 0, 5]]), 3)
  np.testing.assert_array_equal(valid[0, :, 0], [False, True, True, False])  # −1 and out-of-range never routed
  np.testing.assert_array_equal(expert[0, 1:3, 0], [2, 0])
  np.testing.assert_array_equal(gate[0, :, 0], [0, 1, 1, 0])


@pytest.mark.parametrize("priority, drop_policy, k", list(itertools.product(("choice", "time"), ("oldest", "newest"),
                                                                             (1, 2))))
def test_assign_slots_matches_loop(priority, drop_policy, k):
  rng = np.random.default_rng(k)
  b, s, kk, cap = 4, 6, 3, 2
  expert = np.stack([np.stack([rng.permutation(kk)[:k] for _ in range(s)]) for _ in range(b)]).astype(np.int32)
  valid = np.broadcast_to(rng.random((b, s, 1)) < 0.8, expert.shape)
  keep, slot = jax.jit(routing.assign_slots, static_argnames=("num_themes", "capacity", "priority", "drop_policy"))(
    expert, valid, num_themes=kk, capacity=cap, priority=priority, drop_policy=drop_policy)
  rkeep, rslot = ref_assign(expert, valid, kk, cap, priority, drop_policy)
  np.testing.assert_array_equal(keep, rkeep)
  np.testing.assert_array_equal(np.where(rkeep, slot, 0), rslot)
  assert not np.any(np.asarray(keep) & ~valid)  # padding sessions never routed
  # Buffers never exceed capacity and each theme's slots 0..n-1 are filled without gaps.
  for bb, e in itertools.product(range(b), range(kk)):
    slots = sorted(np.asarray(slot)[bb][np.asarray(keep)[bb] & (expert[bb] == e)])
    assert slots == list(range(len(slots))) and len(slots) <= cap


def _random_plan(seed, b=3, s=5, k=2, kk=3, cap=2):
  rng = np.random.default_rng(seed)
  probs = jax.nn.softmax(jnp.array(rng.normal(size=(b, s, kk)), jnp.float32))
  smask = jnp.array(rng.random((b, s)) < 0.8)
  expert, gate, valid = routing.top_k_choice(probs, smask, k)
  return routing.make_plan(expert, gate, valid, num_themes=kk, capacity=cap), kk, cap


def test_dispatch_exact_small():
  # S=3 sessions with T=1, D=1 values 10, 20, 30; the top-2 plan of test_top2_priority (choice priority).
  expert = jnp.array([[[0, 1], [0, 1], [1, 0]]])
  valid = jnp.ones((1, 3, 2), bool)
  plan = routing.make_plan(expert, jnp.full((1, 3, 2), 0.5), valid, num_themes=2, capacity=2)
  x = jnp.array([10.0, 20.0, 30.0]).reshape(1, 3, 1, 1)
  mask = jnp.ones((1, 3, 1), bool)
  for method in ("einsum", "gather"):
    buf, bmask = dsp.dispatch(x, mask, plan, num_themes=2, capacity=2, method=method)
    np.testing.assert_array_equal(buf[0, :, :, 0, 0], [[10, 20], [20, 30]])  # chronological theme buffers
    np.testing.assert_array_equal(bmask[0, :, :, 0], [[True, True], [True, True]])
    buf, _ = dsp.dispatch(x, mask, plan, num_themes=2, capacity=2, weights=plan.gate, method=method)
    np.testing.assert_array_equal(buf[0, :, :, 0, 0], [[5, 10], [10, 15]])
  np.testing.assert_array_equal(dsp.slot_sessions(plan, num_themes=2, capacity=2)[0], [[0, 1], [1, 2]])


@pytest.mark.parametrize("seed", [0, 1])
def test_dispatch_methods_match_loop_and_each_other(seed):
  plan, kk, cap = _random_plan(seed)
  b, s, _ = plan.expert.shape
  rng = np.random.default_rng(seed + 10)
  x = jnp.array(rng.normal(size=(b, s, 2, 3)), jnp.float32)
  mask = jnp.array(rng.random((b, s, 2)) < 0.7)

  def run(method, x, gate):
    return dsp.dispatch(x, mask, plan._replace(gate=gate), num_themes=kk, capacity=cap, weights=gate,
                        method=method)

  out = {m: jax.jit(run, static_argnums=0)(m, x, plan.gate) for m in ("einsum", "gather")}
  rbuf, rmask = ref_buffers(np.asarray(x), np.asarray(mask), *map(np.asarray, (plan.expert, plan.keep, plan.slot,
                                                                                plan.gate)), kk, cap)
  for buf, bmask in out.values():
    np.testing.assert_allclose(buf, rbuf, rtol=1e-6)
    np.testing.assert_array_equal(bmask, rmask)
  np.testing.assert_array_equal(out["einsum"][0], out["gather"][0])  # bit-identical
  np.testing.assert_array_equal(out["einsum"][1], out["gather"][1])
  # Gradients w.r.t. inputs and gates agree (and are those of the loop: d buf / d gate = x).
  cot = jnp.array(rng.normal(size=out["einsum"][0].shape), jnp.float32)
  loss = lambda m, x, g: jnp.sum(run(m, x, g)[0] * cot)  # noqa: E731
  grads = {m: jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(m, x, plan.gate) for m in ("einsum", "gather")}
  for a, b_ in zip(grads["einsum"], grads["gather"]):
    np.testing.assert_allclose(a, b_, rtol=1e-6, atol=1e-7)
  ref_gx = np.zeros(x.shape, np.float32)
  for bb, ss, j in itertools.product(range(b), range(s), range(plan.expert.shape[2])):
    if plan.keep[bb, ss, j]:
      ref_gx[bb, ss] += np.asarray(cot)[bb, plan.expert[bb, ss, j], plan.slot[bb, ss, j]] * float(plan.gate[bb, ss, j])
  np.testing.assert_allclose(grads["gather"][0], ref_gx, rtol=1e-5, atol=1e-6)


def test_losses_match_numpy():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 3, 4)).astype(np.float32)
  smask = np.array([[True, True, False], [True, False, False]])
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  top1 = probs.argmax(-1)
  sel = smask.reshape(-1)
  f = np.bincount(top1.reshape(-1)[sel], minlength=4) / sel.sum()
  p = probs.reshape(-1, 4)[sel].mean(0)
  expert = jnp.array(top1[..., None])
  np.testing.assert_allclose(routing.balance_loss(jnp.array(probs), expert, jnp.array(smask)), 4 * (f * p).sum(),
                             rtol=1e-5)
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(routing.z_loss(jnp.array(logits), jnp.array(smask)), (lse**2)[smask].mean(), rtol=1e-5)
  uniform = jnp.full((1, 4, 4), 0.25)
  np.testing.assert_allclose(routing.balance_loss(uniform, jnp.arange(4).reshape(1, 4, 1), jnp.ones((1, 4), bool)),
                             1.0)


def test_bad_options_raise():
  with pytest.raises(ValueError, match="routing_priority"):
    routing.assign_slots(jnp.zeros((1, 2, 1), jnp.int32), jnp.ones((1, 2, 1), bool), num_themes=2, capacity=1,
                         priority="random")
  plan, kk, cap = _random_plan(0)
  with pytest.raises(ValueError, match="ModelConfig.dispatch"):
    dsp.dispatch(jnp.zeros((3, 5, 1)), jnp.ones((3, 5), bool), plan, num_themes=kk, capacity=cap, method="sort")


def test_gate_weights():
  gate = jnp.array([0.25, 0.5, 0.0])
  x = jnp.array([2.0, 4.0, 8.0])
  for mode, value, grad in [("multiply", [0.5, 2.0, 0.0], [2.0, 4.0, 8.0]),
                            ("straight_through", [2.0, 4.0, 0.0], [2.0, 4.0, 0.0]),  # value 1, d/dg = 1 (x)
                            ("none", [2.0, 4.0, 8.0], [0.0, 0.0, 0.0])]:
    f = lambda g: routing.gate_weights(g, mode) * x  # noqa: E731, B023
    np.testing.assert_allclose(f(gate), value, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda g: jnp.sum(f(g)))(gate), grad, rtol=1e-6)  # noqa: B023
  with pytest.raises(ValueError, match="gate_scaling"):
    routing.gate_weights(gate, "sigmoid")


def test_mi_terms_under_pmap_are_the_global_batchs_with_one_gradient():
  """mean_entropy - marginal_entropy under pmap on 2 devices holding different numbers of valid rows: every device
  gets the global batch's value, and each device's gradient w.r.t. its own rows is the global value's gradient (a
  differentiated psum would double it, a per-device mean would change the value)."""
  assert jax.device_count() >= 2, "tests/conftest.py should force 2 CPU devices"
  logits = np.random.default_rng(5).normal(size=(2, 3, 2)).astype(np.float32)  # [device, row, K]
  valid = np.array([[True, True, False], [True, True, True]])

  def mi(z, v, axis=None):
    p = jnp.where(v[..., None], jax.nn.softmax(z, -1), 0.0)
    return routing.mean_entropy(p, v, axis) - routing.marginal_entropy(p, v, axis)

  want, want_g = jax.value_and_grad(mi)(logits.reshape(6, 2), valid.reshape(6))
  got, got_g = jax.pmap(lambda z, v: jax.value_and_grad(lambda zz: mi(zz, v, "d"))(z), axis_name="d",
                        devices=jax.devices()[:2])(logits, valid)
  np.testing.assert_allclose(got, [want, want], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_g.reshape(6, 2), want_g, rtol=1e-5, atol=1e-6)
  assert np.abs(want_g).max() > 1e-3
