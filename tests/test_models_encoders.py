"""Backbone encoders: masking, empty rows, GRU against a loop, stacked encoders against a loop, registry, and the
RecBole-fidelity options (post-LN SASRec against a numpy reference, init, attention dropout, bias-free GRU)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mos_jax.models import ModelConfig, apply_stacked_encoders, build_encoder, build_stacked_encoders, register_encoder
from mos_jax.models.config import GRU4RecConfig, SASRecConfig
from mos_jax.models.encoders import Encoder, GRU4Rec
from mos_jax.models.encoders.sasrec import oldest_positions, recency_positions

CFG = ModelConfig(num_items=10, embed_dim=8, hidden_dim=6, num_heads=2, num_sessions=3, session_len=2, dropout=0.0)
MAX_LEN = 6


@pytest.fixture(scope="module", params=["sasrec", "gru4rec", "sasrec_recbole", "gru4rec_recbole"])
def encoder(request):
  name, _, variant = request.param.partition("_")
  cfg = CFG if not variant else dataclasses.replace(  # the RecBole options (docs/protocol.md)
    CFG, hidden_dim=8, sasrec=RECBOLE_SASREC, gru4rec=GRU4RecConfig(bias=False, init="xavier"))
  enc = build_encoder(cfg, max_len=MAX_LEN, rngs=nnx.Rngs(0), name=name)
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
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(b))))  # relative to the leaf's scale
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


# ---------------------------------------------------------------------------------------------------------------------
# RecBole-fidelity options (cfg.sasrec, cfg.gru4rec; docs/protocol.md).

RECBOLE_SASREC = SASRecConfig(norm="post", input_norm=True, final_norm=False, out_proj=False, positions="oldest",
                              activation="gelu", layer_norm_eps=1e-12, init_std=0.02, attn_dropout=0.5)


def _cfg(**kw) -> ModelConfig:
  base = dict(num_items=10, embed_dim=8, hidden_dim=8, num_heads=2, num_sessions=3, session_len=2, dropout=0.0)
  return ModelConfig(**{**base, **kw})


def test_oldest_positions_count_valid_items_before():
  mask = jnp.array([[False, True, False, True, True], [True, True, True, True, True]])
  np.testing.assert_array_equal(oldest_positions(mask, 5), [[0, 0, 1, 1, 2], [0, 1, 2, 3, 4]])
  np.testing.assert_array_equal(oldest_positions(mask, 3)[1], [0, 1, 2, 2, 2])  # clipped to max_len - 1
  np.testing.assert_array_equal(recency_positions(mask, 5), [[3, 2, 2, 1, 0], [4, 3, 2, 1, 0]])


def _np_layer_norm(x, scale, bias, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def test_sasrec_recbole_options_match_numpy_reference():
  """Post-LN, input LN, positions from the oldest item, exact GELU, no final LN / projection: a numpy re-derivation
  of RecBole's SASRec forward (one layer, eval mode) on a left-padded row and a full row."""
  from scipy.special import erf  # noqa: PLC0415

  # init_std 0.5 instead of 0.02: O(1) pre-activations, where exact and tanh GELU differ by ~1e-3.
  cfg = _cfg(num_layers=1, ffn_multiplier=2, sasrec=dataclasses.replace(RECBOLE_SASREC, init_std=0.5))
  enc = build_encoder(cfg, max_len=4, rngs=nnx.Rngs(3), name="sasrec")
  p = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(enc, nnx.Param)))
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 4, 8)).astype(np.float32)
  mask = np.array([[False, True, True, True], [True, True, True, True]])
  eps = 1e-12
  lin = lambda q, name: q @ name["kernel"] + name["bias"]  # noqa: E731
  blk = p["blocks"][0]
  out = np.zeros((2, 8))
  for n in range(2):
    xs = x[n][mask[n]]  # RecBole's right-padded copy, padding dropped (it is masked as a key anyway)
    L = len(xs)
    h = _np_layer_norm(xs + p["pos"]["embedding"][:L], p["in_norm"]["scale"], p["in_norm"]["bias"], eps)
    q, k, v = np.split(lin(h, blk["qkv"]), 3, axis=-1)
    att = np.zeros_like(h)
    for head in range(2):
      sl = slice(4 * head, 4 * head + 4)
      s = q[:, sl] @ k[:, sl].T / 2.0 + np.triu(np.full((L, L), -1e9), 1)
      w = np.exp(s - s.max(-1, keepdims=True))
      att[:, sl] = (w / w.sum(-1, keepdims=True)) @ v[:, sl]
    h = _np_layer_norm(h + lin(att, blk["proj"]), blk["norm1"]["scale"], blk["norm1"]["bias"], eps)
    f = lin(h, blk["ff1"])
    f = 0.5 * f * (1 + erf(f / np.sqrt(2)))
    h = _np_layer_norm(h + lin(f, blk["ff2"]), blk["norm2"]["scale"], blk["norm2"]["bias"], eps)
    out[n] = h[-1]
  np.testing.assert_allclose(enc(x, mask, None, deterministic=True), out, rtol=1e-4, atol=1e-5)
  assert enc.norm is None and enc.out is None and enc.out_dim == 8


def test_sasrec_recbole_init_and_default_tree():
  enc = build_encoder(_cfg(num_layers=1, sasrec=RECBOLE_SASREC), max_len=50, rngs=nnx.Rngs(0), name="sasrec")
  p = nnx.to_pure_dict(nnx.state(enc, nnx.Param))
  blk = p["blocks"][0]
  for name in ("qkv", "proj", "ff1", "ff2"):
    assert np.all(np.asarray(blk[name]["bias"]) == 0)
  kernels = np.concatenate([np.ravel(blk[n]["kernel"]) for n in ("qkv", "proj", "ff1", "ff2")]
                           + [np.ravel(p["pos"]["embedding"])])
  assert abs(kernels.std() - 0.02) < 0.002
  assert enc.in_norm.epsilon == 1e-12 and blk["norm1"]["scale"].shape == (8,)
  # The defaults keep today's tree: no input LN, a final LN and the output projection.
  default = nnx.to_pure_dict(nnx.state(build_encoder(_cfg(num_layers=1), max_len=4, rngs=nnx.Rngs(0),
                                                     name="sasrec"), nnx.Param))
  assert sorted(default) == ["blocks", "norm", "out", "pos"]
  assert sorted(p) == ["blocks", "in_norm", "pos"]


def test_sasrec_attention_dropout_only_in_training():
  opt = SASRecConfig(attn_dropout=0.5)
  enc = build_encoder(_cfg(sasrec=opt), max_len=4, rngs=nnx.Rngs(0), name="sasrec")
  x = jnp.array(np.random.default_rng(0).normal(size=(2, 4, 8)), jnp.float32)
  mask = jnp.ones((2, 4), bool)
  ev = enc(x, mask, deterministic=True)
  np.testing.assert_allclose(enc(x, mask, deterministic=True), ev)
  assert not np.allclose(enc(x, mask, deterministic=False), ev, atol=1e-4)  # hidden dropout is 0: attention's
  # With attn_dropout = 0 the same parameters give the same eval output (the option adds no parameters).
  plain = build_encoder(_cfg(), max_len=4, rngs=nnx.Rngs(0), name="sasrec")
  nnx.update(plain, nnx.state(enc, nnx.Param))
  np.testing.assert_allclose(plain(x, mask, deterministic=True), ev, rtol=1e-6)


@pytest.mark.parametrize("field,value,match", [
  ("norm", "sandwich", r"ModelConfig.sasrec.norm='sandwich': expected one of \('pre', 'post'\)"),
  ("positions", "absolute", r"ModelConfig.sasrec.positions='absolute'"),
  ("activation", "swish", r"ModelConfig.sasrec.activation='swish'"),
  ("out_proj", False, r"ModelConfig.sasrec.out_proj=False: expected True unless hidden_dim \(6\) == embed_dim \(8\)"),
  ("attn_dropout", 1.0, r"ModelConfig.sasrec.attn_dropout=1.0: expected in \[0, 1\)"),
])
def test_sasrec_options_validated(field, value, match):
  cfg = _cfg(hidden_dim=6)
  setattr(cfg.sasrec, field, value)
  with pytest.raises(ValueError, match=match):
    cfg.validate()


def test_gru4rec_options_validated_and_only_for_their_backbone():
  cfg = _cfg(backbone="gru4rec", gru4rec=GRU4RecConfig(init="orthogonal"))
  with pytest.raises(ValueError, match=r"ModelConfig.gru4rec.init='orthogonal': expected one of \('flax', 'xavier'\)"):
    cfg.validate()
  cfg.backbone = "sasrec"
  cfg.validate()  # an unused encoder's options are not checked


def test_gru4rec_no_bias_xavier_matches_loop():
  cfg = _cfg(embed_dim=8, hidden_dim=6, gru4rec=GRU4RecConfig(bias=False, init="xavier"))
  enc = build_encoder(cfg, max_len=MAX_LEN, rngs=nnx.Rngs(1), name="gru4rec")
  assert enc.inp.bias is None and enc.rec.bias is None
  wi, wh = np.asarray(enc.inp.kernel[...]), np.asarray(enc.rec.kernel[...])
  bound = np.sqrt(6 / (8 + 18))  # xavier_uniform over PyTorch's weight_ih_l0 [3H, E]
  assert np.abs(wi).max() <= bound and np.abs(wi).max() > 0.8 * bound
  assert np.abs(wh).max() <= np.sqrt(6 / (6 + 18))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 8)).astype(np.float32)
  mask = np.array([[True, False, True], [True, True, True]])
  sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
  out = np.zeros((2, 6), np.float32)
  for n in range(2):
    h = np.zeros(6)
    for t in np.flatnonzero(mask[n]):
      gi, gh = x[n, t] @ wi, h @ wh
      r, z = sig(gi[:6] + gh[:6]), sig(gi[6:12] + gh[6:12])
      h = (1 - z) * np.tanh(gi[12:] + r * gh[12:]) + z * h
    out[n] = h
  np.testing.assert_allclose(enc(x, mask, None, deterministic=True), out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,num_params", [
  # RecBole SASRec without its item table: positions 50*64, input LN 2*64, per layer 4 Linear 64->64 (q, k, v, out),
  # FFN 64->256->64 and two LNs: 2 * (4*4160 + 16640 + 16448 + 2*128).
  ("sasrec", 50 * 64 + 128 + 2 * (4 * 4160 + 16640 + 16448 + 256)),
  ("gru4rec", 3 * 128 * 64 + 3 * 128 * 128),  # nn.GRU(64, 128, bias=False)
])
def test_protocol_configs_have_recbole_encoder_sizes(name, num_params):
  import pathlib  # noqa: PLC0415

  from mos_jax.config import load_config_file  # noqa: PLC0415

  cfg = load_config_file(pathlib.Path(__file__).resolve().parents[1] / "configs" / f"ml100k_{name}.py")
  assert (cfg.data.num_sessions, cfg.data.session_len, cfg.data.chunk_len, cfg.data.session_mode) == (50, 1, 1, "chunk")
  m = cfg.model
  m.num_items, m.num_sessions, m.session_len = 1682, 50, 1
  m.validate()
  enc = build_encoder(m, max_len=50, rngs=nnx.Rngs(0))
  assert sum(p.size for p in jax.tree.leaves(nnx.state(enc, nnx.Param))) == num_params


def _sasrec_full_sequence(enc, x, mask):
  """The reference the encoder shortens: every block on every position, then the last valid position's output."""
  from mos_jax.models.encoders.sasrec import last_index, take_rows  # noqa: PLC0415

  h = x + enc.pos((oldest_positions if enc.oldest_first else recency_positions)(mask, enc.max_len))
  h = enc.in_norm(h) if enc.in_norm is not None else h
  h = jnp.where(mask[..., None], h, 0)
  for block in enc.blocks:
    h = block(h, mask, deterministic=True)
  h = enc.norm(h) if enc.norm is not None else h
  h = jnp.where(jnp.any(mask, axis=1)[:, None], take_rows(h, last_index(mask)), 0)
  return h if enc.out is None else enc.out(h)


@pytest.mark.parametrize("kw", [
  dict(num_layers=1),
  dict(num_layers=2, remat="full"),
  dict(num_layers=2, attention="einsum"),
  dict(num_layers=2, sasrec=dataclasses.replace(RECBOLE_SASREC, attn_dropout=0.2)),
], ids=["1layer", "2layers-remat", "einsum", "recbole-attn-dropout"])
def test_sasrec_last_block_on_the_last_position_matches_the_full_sequence(kw):
  """The last block computes only the last valid position (queries, attention row, projection, feed-forward):
  outputs and gradients equal running every block on every position, with padding anywhere and an empty row."""
  enc = build_encoder(_cfg(**kw), max_len=6, rngs=nnx.Rngs(1), name="sasrec")
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(4, 6, 8)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
  gdef, params, rest = nnx.split(enc, nnx.Param, ...)

  def loss(p, x, r, fn):
    out = fn(nnx.merge(gdef, p, r, copy=True), x)  # a fresh module per trace (nnx.remat updates its RNG counts)
    return jnp.sum(jnp.sin(out)), out

  short = lambda m, x: m(x, mask, deterministic=True)  # noqa: E731
  full = lambda m, x: _sasrec_full_sequence(m, x, mask)  # noqa: E731
  (_, out_short), g_short = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x, rest, short)
  (_, out_full), g_full = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x, rest, full)
  np.testing.assert_allclose(out_short, out_full, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(out_short[3]) == np.asarray(enc.out.bias if enc.out is not None else 0))  # empty row
  for a, b in zip(jax.tree.leaves(g_short), jax.tree.leaves(g_full)):
    # float32 rounding of a gradient is relative to the leaf's scale, not to each (possibly cancelling) entry
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(b))))
