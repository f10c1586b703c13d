"""Backbone encoders: masking, empty rows, GRU against a loop, stacked encoders against a loop, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mos_jax.models import ModelConfig, apply_stacked_encoders, build_encoder, build_stacked_encoders, register_encoder
from mos_jax.models.encoders import Encoder, GRU4Rec

CFG = ModelConfig(num_items=10, embed_dim=8, hidden_dim=6, num_heads=2, num_sessions=3, session_len=2, dropout=0.0)
MAX_LEN = 6


@pytest.fixture(scope="module", params=["sasrec", "gru4rec"])
def encoder(request):
  enc = build_encoder(CFG, max_len=MAX_LEN, rngs=nnx.Rngs(0), name=request.param)
  graphdef, state = nnx.split(enc)
  fwd = jax.jit(lambda st, x, m: nnx.merge(graphdef, st)(x, m, None, deterministic=True))
  return state, fwd


def test_padding_anywhere_changes_nothing(encoder):
  state, fwd = encoder
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 8)).astype(np.float32)
  mask = np.array([[True, True, True, True], [False, True, True, False]])
  base = fwd(state, x, mask)
  # Insert two padding positions (garbage values, mask False) in the middle and at the end: L = 6.
  xp = np.concatenate([x[:, :2], rng.normal(size=(2, 1, 8)), x[:, 2:], rng.normal(size=(2, 1, 8))], 1)
  mp = np.concatenate([mask[:, :2], np.zeros((2, 1), bool), mask[:, 2:], np.zeros((2, 1), bool)], 1)
  np.testing.assert_allclose(fwd(state, xp.astype(np.float32), mp), base, rtol=1e-5, atol=1e-6)
  # An empty row gives a finite vector; its value does not depend on the garbage under the mask.
  empty = fwd(state, x, np.zeros_like(mask))
  assert np.all(np.isfinite(empty))
  np.testing.assert_allclose(fwd(state, 2 * x, np.zeros_like(mask)), empty)
  # Order matters (sequence model, not a bag).
  assert not np.allclose(fwd(state, x[:, ::-1], mask[:, ::-1])[0], base[0], atol=1e-4)


def test_gru_matches_loop():
  enc = build_encoder(CFG, max_len=MAX_LEN, rngs=nnx.Rngs(1), name="gru4rec")
  assert isinstance(enc, GRU4Rec)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 8)).astype(np.float32)
  mask = np.array([[True, False, True], [True, True, True]])
  wi, bi = np.asarray(enc.inp.kernel[...]), np.asarray(enc.inp.bias[...])
  wh, bh = np.asarray(enc.rec.kernel[...]), np.asarray(enc.rec.bias[...])
  sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
  h_dim = 6
  out = np.zeros((2, h_dim), np.float32)
  for n in range(2):
    h = np.zeros(h_dim)
    for t in range(3):
      if not mask[n, t]:
        continue
      gi, gh = x[n, t] @ wi + bi, h @ wh + bh
      r = sig(gi[:h_dim] + gh[:h_dim])
      z = sig(gi[h_dim:2 * h_dim] + gh[h_dim:2 * h_dim])
      cand = np.tanh(gi[2 * h_dim:] + r * gh[2 * h_dim:])
      h = (1 - z) * cand + z * h
    out[n] = h
  np.testing.assert_allclose(enc(x, mask, None, deterministic=True), out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_stacked_matches_loop_forward_and_grad(name):
  e_, n_, l_ = 2, 2, 4
  stacked = build_stacked_encoders(CFG, num=e_, max_len=l_, rngs=nnx.Rngs(2), name=name)
  graphdef, params, rest = nnx.split(stacked, nnx.Param, ...)
  single_def = nnx.graphdef(build_encoder(CFG, max_len=l_, rngs=nnx.Rngs(0), name=name))
  rng = np.random.default_rng(2)
  x = jnp.array(rng.normal(size=(e_, n_, l_, 8)), jnp.float32)
  mask = jnp.array(rng.random((e_, n_, l_)) < 0.7)
  cot = jnp.array(rng.normal(size=(e_, n_, 6)), jnp.float32)

  def fast(p, x, rest):
    return jnp.sum(apply_stacked_encoders(nnx.merge(graphdef, p, rest), x, mask, deterministic=True) * cot)

  def loop(p, x, rest):  # one encoder at a time, built from the e-th slice of the stacked parameters
    total = 0.0
    for e in range(e_):
      enc = nnx.merge(single_def, jax.tree.map(lambda a: a[e], p), jax.tree.map(lambda a: a[e], rest))
      total = total + jnp.sum(enc(x[e], mask[e], None, deterministic=True) * cot[e])
    return total

  (vf, gf), (vl, gl) = (jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, x, rest) for f in (fast, loop))
  np.testing.assert_allclose(vf, vl, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(gf), jax.tree.leaves(gl)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # The copies are independent: different init per copy.
  kernel = next(a for a in jax.tree.leaves(params) if a.ndim == 3)  # [E, in, out]
  assert not np.allclose(kernel[0], kernel[1])


def test_registry():
  with pytest.raises(ValueError, match="ModelConfig.backbone='mamba'"):
    build_encoder(CFG, max_len=4, rngs=nnx.Rngs(0), name="mamba")

  @register_encoder("test_mean_pool")
  class MeanPool(Encoder):  # a new host needs nothing but the interface
    def __init__(self, cfg, *, max_len, rngs):
      del max_len
      self.out_dim = cfg.embed_dim
      self.dummy = nnx.Linear(1, 1, rngs=rngs)

    def __call__(self, x, mask, target=None, *, deterministic):
      m = mask[..., None].astype(x.dtype)
      return jnp.sum(x * m, 1) / jnp.maximum(jnp.sum(m, 1), 1)

  enc = build_encoder(CFG, max_len=4, rngs=nnx.Rngs(0), name="test_mean_pool")
  np.testing.assert_allclose(enc(jnp.ones((1, 2, 8)), jnp.array([[True, False]]), deterministic=True),
                             np.ones((1, 8)))
  with pytest.raises(ValueError, match="already registered"):
    register_encoder("sasrec")(MeanPool)


def test_bfloat16_compute_float32_params():
  """bfloat16 compute with float32 parameters: outputs within 3% of the largest |float32 output| (measured <= 0.5%)."""
  x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype(np.float32)
  mask = np.array([[True, True, True, True], [False, True, True, False]])
  for name in ("sasrec", "gru4rec"):
    outs = []
    for dtype in ("float32", "bfloat16"):
      c = ModelConfig(num_items=10, embed_dim=8, hidden_dim=6, dtype=dtype)
      enc = build_encoder(c, max_len=4, rngs=nnx.Rngs(0), name=name)
      assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(enc, nnx.Param)))
      graphdef, state = nnx.split(enc)
      outs.append(jax.jit(lambda st, x, m: nnx.merge(graphdef, st)(x, m, deterministic=True))(  # noqa: B023
        state, jnp.asarray(x, c.compute_dtype), mask))
    assert outs[1].dtype == jnp.bfloat16 and outs[1].shape == (2, 6)
    a, b = np.asarray(outs[0]), np.asarray(outs[1], np.float32)
    assert np.abs(a).max() > 0.1
    np.testing.assert_allclose(b, a, rtol=0, atol=0.03 * np.abs(a).max(), err_msg=name)
