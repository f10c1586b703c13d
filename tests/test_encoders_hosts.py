"""The long-sequence hosts (DIN, SDIM, TWIN, TransAct, Mamba4Rec) and the selective scan.

Each host against a float64 numpy reference of its defining computation; padding anywhere, empty rows, gradients and
the next-item (target=None) behaviour for all of them with one compiled function per host.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads
from scipy.special import erf

from mos_jax.models import ModelConfig, build_encoder
from mos_jax.models.encoders.sdim import hash_buckets
from mos_jax.models.encoders.selective_scan import selective_scan, selective_scan_reference
from mos_jax.models.encoders.twin import select_topk

HOSTS = ("din", "sdim", "twin", "transact", "mamba4rec")
TARGET_AWARE = ("din", "sdim", "twin")
D, H = 8, 6


def _cfg(**kw) -> ModelConfig:
  cfg = ModelConfig(num_items=10, embed_dim=D, hidden_dim=H, num_heads=2, dropout=0.0, **kw)
  cfg.din.attention_units = (12, 5)
  cfg.sdim.attention_dim = cfg.twin.attention_dim = 8
  cfg.sdim.short_seq_len = cfg.twin.short_seq_len = 3
  cfg.sdim.num_hashes, cfg.sdim.hash_bits = 3, 2
  cfg.twin.topk = 3
  cfg.transact.ffn_dim, cfg.transact.last_k = 16, 2
  cfg.mamba4rec.d_state = 4
  cfg.mamba4rec.init = "mamba_ssm"  # O(1) weights and slow decays: a padding leak would show (N(0, 0.02) hides it)
  return cfg


def _p(v) -> np.ndarray:
  return np.asarray(v[...], np.float64)


_CACHE = {}


def _host(name):
  """(encoder, jitted forward(state, x, mask, target)) built once per host and reused by every test."""
  if name not in _CACHE:
    enc = build_encoder(_cfg(), max_len=16, rngs=nnx.Rngs(0), name=name)
    graphdef, state = nnx.split(enc)
    fwd = jax.jit(lambda st, x, m, t: nnx.merge(graphdef, st)(x, m, t, deterministic=True))
    _CACHE[name] = enc, state, fwd
  return _CACHE[name]


def _data(seed=0, n=3, l=7):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, l, D)).astype(np.float32)
  t = rng.normal(size=(n, D)).astype(np.float32)
  mask = rng.random((n, l)) < 0.7
  mask[0] = True
  mask[-1] = False  # an empty row
  return x, mask, t


# -- shared behaviour --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTS)
def test_padding_anywhere_and_empty_rows(name):
  _, state, fwd = _host(name)
  rng = np.random.default_rng(1)
  x, mask, t = _data()
  base = np.asarray(fwd(state, x, mask, t))
  # Compacted (padding removed, valid items right-aligned in order) and re-padded at random places with garbage.
  n, l = mask.shape
  xs, ms = np.zeros((n, 10, D), np.float32), np.zeros((n, 10), bool)
  for i in range(n):
    slots = np.sort(rng.choice(10, mask[i].sum(), replace=False))
    xs[i] = 100 * rng.normal(size=(10, D))
    xs[i, slots], ms[i, slots] = x[i, mask[i]], True
  np.testing.assert_allclose(fwd(state, xs, ms, t), base, rtol=2e-5, atol=2e-5)
  np.testing.assert_array_equal(base[-1], 0)  # empty row: exactly 0 (biases are 0 at init)
  # Order matters for sequence hosts; the target matters for target-aware ones.
  if name in ("transact", "mamba4rec"):
    assert not np.allclose(fwd(state, x[:, ::-1], mask[:, ::-1], t)[0], base[0], atol=1e-4)
  if name != "mamba4rec":
    assert not np.allclose(fwd(state, x, mask, -t)[0], base[0], atol=1e-4)


@pytest.mark.parametrize("name", HOSTS)
def test_gradients_finite_and_zero_on_padding(name):
  enc, _, _ = _host(name)
  graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
  x, mask, t = _data(2)

  def loss(p, x):
    h = nnx.merge(graphdef, p, rest)(x, mask, t, deterministic=True)
    return jnp.sum(h**2 + 0.1 * h)

  gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(gp))
  assert np.all(np.isfinite(gx)) and np.any(gx != 0)
  np.testing.assert_array_equal(np.asarray(gx)[~mask], 0)  # padding (and the empty row) get no gradient


@pytest.mark.parametrize("name", HOSTS)
def test_next_item_mode(name):
  enc, _, _ = _host(name)
  x, mask, t = _data(3)
  if name in TARGET_AWARE:
    with pytest.raises(ValueError, match=f"encoder '{name}' needs the CTR target"):
      enc(x, mask, None, deterministic=True)
  elif name == "transact":  # documented variant: zeros are fused in place of the target
    np.testing.assert_allclose(enc(x, mask, None, deterministic=True), enc(x, mask, 0 * t, deterministic=True),
                               atol=1e-6)
  else:
    np.testing.assert_allclose(enc(x, mask, None, deterministic=True), enc(x, mask, t, deterministic=True))


@pytest.mark.parametrize("name", HOSTS)
def test_bfloat16_compute_float32_params(name):
  enc = build_encoder(_cfg(dtype="bfloat16"), max_len=8, rngs=nnx.Rngs(0), name=name)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(enc, nnx.Param)))
  x, mask, t = _data(4)
  h = enc(jnp.asarray(x, jnp.bfloat16), mask, jnp.asarray(t, jnp.bfloat16), deterministic=True)
  assert h.dtype == jnp.bfloat16 and h.shape == (3, H)
  assert np.all(np.isfinite(np.asarray(h, np.float32)))
  if name != "sdim":  # (bf16 rounding of x may flip a SimHash bit near a hyperplane)
    want = np.asarray(build_encoder(_cfg(), max_len=8, rngs=nnx.Rngs(0), name=name)(x, mask, t, deterministic=True))
    np.testing.assert_allclose(np.asarray(h, np.float32), want, atol=0.05 * np.abs(want).max() + 1e-3)


def test_config_validation_names_the_field():
  cfg = _cfg(backbone="sdim")
  cfg.sdim.num_heads = 3
  with pytest.raises(ValueError, match=r"ModelConfig.sdim.num_heads=3"):
    cfg.validate()
  cfg = _cfg(backbone="mamba4rec")
  cfg.mamba4rec.scan_impl = "fast"
  with pytest.raises(ValueError, match=r"ModelConfig.mamba4rec.scan_impl='fast'"):
    cfg.validate()
  cfg.mamba4rec.scan_impl, cfg.mamba4rec.scan_chunk = "scan", -1
  with pytest.raises(ValueError, match=r"ModelConfig.mamba4rec.scan_chunk=-1"):
    cfg.validate()
  cfg = _cfg(backbone="transact")
  cfg.transact.last_k, cfg.transact.max_pool = 0, False
  with pytest.raises(ValueError, match=r"ModelConfig.transact.last_k=0"):
    cfg.validate()


# -- numpy references --------------------------------------------------------------------------------------------------


def _lin(layer, v):
  out = v @ _p(layer.kernel)
  return out + _p(layer.bias) if layer.bias is not None else out


def _softmax(s):
  e = np.exp(s - s.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _mhta(att, x, allowed, t, heads=2):
  """Multi-head target attention of one row: x[L,D], allowed[L], t[D] -> [D]."""
  q, k, v = _lin(att.q, t), _lin(att.k, x), _lin(att.v, x)
  dh = q.shape[-1] // heads
  out = np.zeros(q.shape[-1])
  for h in range(heads):
    sl = slice(h * dh, (h + 1) * dh)
    s = k[:, sl] @ q[sl] / math.sqrt(dh)
    if allowed.any():
      out[sl] = _softmax(s[allowed]) @ v[allowed, sl]
  return _lin(att.o, out)


def _recent(mask, s):
  """The s most recent valid positions of one row."""
  allowed = np.zeros_like(mask)
  allowed[np.flatnonzero(mask)[-s:]] = True
  return allowed


def test_din_matches_reference():
  enc, state, fwd = _host("din")
  x, mask, t = _data(4)
  x, t = x.astype(np.float64), t.astype(np.float64)
  want = np.zeros((len(x), H))
  for i in range(len(x)):
    z = np.concatenate([x[i], np.broadcast_to(t[i], x[i].shape), x[i] - t[i], x[i] * t[i]], -1)
    for layer in enc.unit:
      z = np.maximum(_lin(layer, z), 0)
    w = _lin(enc.score, z)[:, 0] * mask[i]  # DIN: unnormalised weights
    want[i] = _lin(enc.out, w @ x[i])
  np.testing.assert_allclose(fwd(state, x.astype(np.float32), mask, t.astype(np.float32)), want, rtol=1e-4, atol=1e-5)
  soft = build_encoder(_cfg(), max_len=8, rngs=nnx.Rngs(0), name="din")
  soft.use_softmax = True  # same parameters (same seed); weights now sum to 1 over the valid positions
  w = np.asarray(soft.weights(jnp.asarray(x, jnp.float32), jnp.asarray(mask), jnp.asarray(t, jnp.float32)))
  np.testing.assert_allclose(w.sum(1), mask.any(1).astype(float), rtol=1e-5)
  np.testing.assert_array_equal(w[~mask], 0)


def test_sdim_buckets_collisions_and_output():
  enc, state, fwd = _host("sdim")
  x, mask, t = _data(5)
  rot = _p(enc.rotation)  # [D, m, tau]
  m, tau = rot.shape[1:]

  def buckets(v):  # numpy bit-pack of sign bits
    bits = (np.einsum("...d,dmt->...mt", v, rot) > 0).astype(int)
    return (bits * (1 << np.arange(tau))).sum(-1)

  np.testing.assert_array_equal(hash_buckets(jnp.asarray(x), jnp.asarray(rot, jnp.float32)), buckets(x))
  bx, bt = buckets(x), buckets(t)
  collide = np.zeros(mask.shape + (m,), bool)
  for i, l, j in np.ndindex(*collide.shape):
    collide[i, l, j] = mask[i, l] and bx[i, l, j] == bt[i, j]
  np.testing.assert_array_equal(enc.collisions(jnp.asarray(x), jnp.asarray(mask), jnp.asarray(t)), collide)
  assert collide.any() and not collide.all()  # the test sees both cases
  want = np.zeros((len(x), H))
  for i in range(len(x)):
    long = np.mean([collide[i, :, j] @ x[i] for j in range(m)], axis=0)
    short = _mhta(enc.short, x[i], _recent(mask[i], 3), t[i])
    want[i] = _lin(enc.out, np.concatenate([short, long]))
  np.testing.assert_allclose(fwd(state, x, mask, t), want, rtol=1e-4, atol=1e-5)


def test_sdim_collision_rate_is_simhash_probability():
  # With tau = 1 each hash is one random hyperplane: P(same bit) = 1 - angle/pi (Charikar's SimHash).
  rng = np.random.default_rng(6)
  x, t = rng.normal(size=(6, D)), rng.normal(size=(D,))
  rot = jax.random.normal(jax.random.key(0), (D, 32768, 1))  # sampling std <= 0.003
  rate = np.mean(np.asarray(hash_buckets(jnp.asarray(x, jnp.float32), rot) == hash_buckets(jnp.asarray(t), rot)),
                 axis=1)
  angle = np.arccos(x @ t / np.linalg.norm(x, axis=1) / np.linalg.norm(t))
  np.testing.assert_allclose(rate, 1 - angle / np.pi, atol=0.02)


def test_twin_topk_selection_and_output():
  enc, state, fwd = _host("twin")
  x, mask, t = _data(7)
  q, k, v = _lin(enc.long.q, t), _lin(enc.long.k, x), _lin(enc.long.v, x)  # [N,A], [N,L,A]
  n, l, a = k.shape
  scores = np.einsum("nhd,nlhd->nhl", q.reshape(n, 2, a // 2), k.reshape(n, l, 2, a // 2)) / math.sqrt(a // 2)
  masked = np.where(mask[:, None], scores, -np.inf)
  idx, valid = select_topk(jnp.asarray(scores, jnp.float32), jnp.asarray(mask), 3, shared=False)
  for i in range(n - 1):  # the empty last row selects arbitrary padding, all invalid
    for h in range(2):
      np.testing.assert_array_equal(np.asarray(idx)[i, h, :min(3, mask[i].sum())],
                                    np.argsort(-masked[i, h])[:min(3, mask[i].sum())])
  assert not np.asarray(valid)[-1].any()
  shared_idx, _ = select_topk(jnp.asarray(scores, jnp.float32), jnp.asarray(mask), 3, shared=True)
  np.testing.assert_array_equal(np.asarray(shared_idx)[0, 0], np.argsort(-masked[0].sum(0))[:3])
  np.testing.assert_array_equal(np.asarray(shared_idx)[0, 0], np.asarray(shared_idx)[0, 1])
  want = np.zeros((n, H))
  for i in range(n):
    long = np.zeros(a)
    for h in range(2):
      top = np.argsort(-masked[i, h])[:3]
      top = top[mask[i, top]]
      if len(top):
        sl = slice(h * a // 2, (h + 1) * a // 2)
        long[sl] = _softmax(scores[i, h, top]) @ v[i, top, sl]
    feats = np.concatenate([_mhta(enc.short, x[i], _recent(mask[i], 3), t[i]), _lin(enc.long.o, long)])
    want[i] = _lin(enc.out, feats)
  np.testing.assert_allclose(fwd(state, x, mask, t), want, rtol=1e-4, atol=1e-5)


def test_twin_topk_at_least_length_is_plain_target_attention():
  cfg = _cfg()
  cfg.twin.topk = 50
  enc = build_encoder(cfg, max_len=8, rngs=nnx.Rngs(3), name="twin")
  x, mask, t = (jnp.asarray(a) for a in _data(8))
  np.testing.assert_allclose(enc.long_interest(x, mask, t), enc.long(x, mask, t), rtol=1e-5, atol=1e-6)


def _layer_norm(v, ln, eps):
  mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
  return (v - mu) / np.sqrt(var + eps) * _p(ln.scale) + _p(ln.bias)


def test_transact_matches_reference():
  enc, state, fwd = _host("transact")
  x, mask, t = _data(9)
  mask[1] = False
  mask[1, 3] = True  # one valid item: the second of the last k is missing (zeros)
  want = np.zeros((len(x), H))
  for i in range(len(x) - 1):  # the empty last row is covered by test_padding_anywhere_and_empty_rows
    valid = mask[i]
    h = np.concatenate([x[i][valid], np.broadcast_to(t[i], (valid.sum(), D))], -1)  # early fusion, valid only
    for blk in enc.blocks:  # post-LN, bidirectional, no positions
      q, k, v = _lin(blk.q, h), _lin(blk.k, h), _lin(blk.v, h)
      att = np.zeros_like(h)
      for hd in range(2):
        sl = slice(hd * 8, (hd + 1) * 8)
        att[:, sl] = _softmax(q[:, sl] @ k[:, sl].T / math.sqrt(8)) @ v[:, sl]
      h = _layer_norm(h + _lin(blk.proj, att), blk.norm1, 1e-5)
      h = _layer_norm(h + _lin(blk.ff2, np.maximum(_lin(blk.ff1, h), 0)), blk.norm2, 1e-5)
    last = [h[-1 - j] if j < len(h) else np.zeros(2 * D) for j in range(2)]  # most recent first
    pool = _lin(enc.pool, h.max(0))
    want[i] = _lin(enc.out, np.concatenate(last + [pool]))
  np.testing.assert_allclose(fwd(state, x, mask, t), want, rtol=1e-4, atol=1e-5)


def _gelu(v):
  return 0.5 * v * (1 + erf(v / math.sqrt(2)))


def _silu(v):
  return v / (1 + np.exp(-v))


def test_mamba4rec_matches_reference():
  enc, state, fwd = _host("mamba4rec")
  x, mask, t = _data(10)
  want = np.zeros((len(x), H))
  for i in range(len(x)):
    if not mask[i].any():
      continue
    h = _layer_norm(x[i][mask[i]].astype(np.float64), enc.norm, 1e-12)  # the unpadded sequence
    for layer in enc.layers:
      blk = layer.mamba
      xs, z = np.split(_lin(blk.in_proj, h), 2, axis=-1)
      w, k = _p(blk.conv_w), blk.d_conv  # torch Conv1d(groups=E, padding=K-1)[..., :L]
      padded = np.concatenate([np.zeros((k - 1, xs.shape[1])), xs])
      u = _silu(sum(padded[j:j + len(xs)] * w[j] for j in range(k)) + _p(blk.conv_b))
      dt, b, c = np.split(_lin(blk.x_proj, u), [blk.dt_rank, blk.dt_rank + blk.d_state], axis=-1)
      delta = np.log1p(np.exp(_lin(blk.dt_proj, dt)))
      y = selective_scan_reference(u[None], delta[None], -np.exp(_p(blk.A_log)), b[None], c[None], _p(blk.D))[0]
      m = _layer_norm(_lin(blk.out_proj, y * _silu(z)), layer.norm, 1e-12)  # one layer: no residual
      h = _layer_norm(m + _lin(layer.ff2, _gelu(_lin(layer.ff1, m))), layer.ff_norm, 1e-12)
    want[i] = _lin(enc.out, h[-1])
  np.testing.assert_allclose(fwd(state, x, mask, t), want, rtol=1e-4, atol=1e-5)


def test_mamba4rec_init():
  cfg = _cfg()
  cfg.mamba4rec.init = "mamba4rec"
  blk = build_encoder(cfg, max_len=8, rngs=nnx.Rngs(0), name="mamba4rec").layers[0].mamba
  np.testing.assert_array_equal(_p(blk.dt_proj.bias), 0)  # Mamba4Rec zeroes it: initial delta = softplus(0)
  np.testing.assert_allclose(np.exp(_p(blk.A_log))[0], np.arange(1, 5), rtol=1e-6)
  assert abs(_p(blk.in_proj.kernel).std() - 0.02) < 0.005
  cfg = _cfg()
  cfg.mamba4rec.init = "mamba_ssm"
  blk = build_encoder(cfg, max_len=8, rngs=nnx.Rngs(0), name="mamba4rec").layers[0].mamba
  dt = np.log1p(np.exp(_p(blk.dt_proj.bias)))  # softplus(bias) = the sampled dt in [1e-3, 1e-1]
  assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)


# -- selective scan ----------------------------------------------------------------------------------------------------


def _scan_inputs(seed=11, n=2, l=9, e=4, s=3):
  rng = np.random.default_rng(seed)
  u = rng.normal(size=(n, l, e))
  delta = np.log1p(np.exp(rng.normal(size=(n, l, e))))
  a = -np.exp(rng.normal(size=(e, s)))
  b, c = rng.normal(size=(n, l, s)), rng.normal(size=(n, l, s))
  d = rng.normal(size=(e,))
  return [np.asarray(v, np.float32) for v in (u, delta, a, b, c, d)]


def test_selective_scan_matches_float64_loop():
  args = _scan_inputs()
  want = selective_scan_reference(*args)
  for impl in ("scan", "associative"):
    np.testing.assert_allclose(jax.jit(lambda *a: selective_scan(*a, impl=impl))(*args), want, atol=1e-5)
  with pytest.raises(ValueError, match="impl='x'"):
    selective_scan(*args, impl="x")


def test_selective_scan_gradients():
  args = [jnp.asarray(a) for a in _scan_inputs(12, l=5)]
  grads = {impl: jax.grad(lambda *a: jnp.sum(jnp.sin(selective_scan(*a, impl=impl))), argnums=range(6))(*args)
           for impl in ("scan", "associative")}
  for g_scan, g_assoc in zip(grads["scan"], grads["associative"]):
    np.testing.assert_allclose(g_scan, g_assoc, rtol=1e-5, atol=1e-5)
  check_grads(lambda u, dl, b, c: selective_scan(u, dl, args[2], b, c, args[5]), (args[0], args[1], args[3], args[4]),
              order=1, modes=["rev"], atol=5e-2, rtol=5e-2, eps=1e-2)


def test_selective_scan_chunked_remat_is_the_same_scan():
  """Chunks of 4 over L = 9 (a padded last chunk) and of 9 / 20 (no chunking): same y and gradients; remat in the
  jaxpr only when the scan is really cut into chunks."""
  args = [jnp.asarray(a) for a in _scan_inputs(13)]

  def loss(chunk):
    return lambda *a: jnp.sum(jnp.sin(selective_scan(*a, chunk=chunk)))

  want_y = selective_scan(*args)
  want_g = jax.grad(loss(0), argnums=range(6))(*args)
  for chunk in (4, 9, 20):
    np.testing.assert_allclose(selective_scan(*args, chunk=chunk), want_y, rtol=1e-6, atol=1e-6)
    for g, w in zip(jax.grad(loss(chunk), argnums=range(6))(*args), want_g):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  remat = lambda chunk: any(w in str(jax.make_jaxpr(loss(chunk))(*args)) for w in ("checkpoint", "remat"))  # noqa: E731
  assert remat(4) and not remat(9)
  with pytest.raises(ValueError, match="chunk=-2"):
    selective_scan(*args, chunk=-2)
