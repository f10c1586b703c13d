"""Long-sequence code paths: jax.nn.dot_product_attention vs the einsum reference, per-block remat (same outputs and
gradients, and the checkpoint really in the graph), float32 softmax / LayerNorm statistics / loss under bfloat16,
and the long configs."""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mos_jax import config as config_lib
from mos_jax.models import ModelConfig, build_encoder, build_model
from mos_jax.models.encoders.attention import attend, remat_block
from mos_jax.training import losses

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_model import random_batch  # noqa: E402


def _qkv_mask(n=3, l=7, h=2, d=4, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (rng.normal(size=(n, l, h, d)).astype(np.float32) for _ in range(3))
  mask = rng.random((n, l)) < 0.6
  mask[0] = True
  mask[1, :3] = False  # leading padding: causal queries 0..2 see no valid key
  mask[2] = False  # empty row
  return q, k, v, mask


def _reference(q, k, v, mask, causal):
  """float64 loop: softmax over the allowed keys; a query with none gets the mean of all values (both paths)."""
  n, l, h, d = q.shape
  out = np.zeros((n, l, h, d))
  for b in range(n):
    for i in range(l):
      allowed = mask[b] & ((np.arange(l) <= i) if causal else True)
      for j in range(h):
        s = (k[b, :, j].astype(np.float64) @ q[b, i, j]) / np.sqrt(d)
        w = np.where(allowed, np.exp(s - s[allowed].max()), 0.0) if allowed.any() else np.ones(l)
        out[b, i, j] = (w / w.sum()) @ v[b, :, j]
  return out


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_dot_product_attention_matches_einsum_and_loop(causal):
  q, k, v, mask = _qkv_mask()
  ref = _reference(q, k, v, mask, causal)
  xla = attend(q, k, v, mask, causal=causal, impl="xla")
  ein = attend(q, k, v, mask, causal=causal, impl="einsum")
  np.testing.assert_allclose(xla, ref, atol=2e-6)
  np.testing.assert_allclose(ein, ref, atol=2e-6)

  def loss(impl):
    return jax.grad(lambda a, b, c: jnp.sum(jnp.sin(attend(a, b, c, mask, causal=causal, impl=impl))), (0, 1, 2))

  for gx, ge in zip(loss("xla")(q, k, v), loss("einsum")(q, k, v)):
    np.testing.assert_allclose(gx, ge, atol=2e-6)
  with pytest.raises(ValueError, match="attention='flash'"):
    attend(q, k, v, mask, causal=causal, impl="flash")


ENC = dict(num_items=10, embed_dim=8, hidden_dim=6, num_heads=2, dropout=0.0)


@pytest.mark.parametrize("name, post", [("sasrec", False), ("sasrec", True), ("transact", False)])
def test_encoders_same_output_and_grad_for_both_attention_paths(name, post):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 9, 8)).astype(np.float32)
  mask = rng.random((3, 9)) < 0.6
  mask[2] = False
  results = []
  for impl in ("xla", "einsum"):
    cfg = ModelConfig(**ENC, num_layers=2, attention=impl)
    cfg.sasrec.norm = "post" if post else "pre"
    cfg.transact.ffn_dim = 16
    enc = build_encoder(cfg, max_len=9, rngs=nnx.Rngs(0), name=name)
    graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
    f = lambda p, xx: jnp.sum(nnx.merge(graphdef, p, rest)(xx, mask, xx[:, 0], deterministic=True) ** 2)  # noqa: E731
    results.append((nnx.merge(graphdef, params, rest)(x, mask, x[:, 0], deterministic=True),
                    jax.grad(f, argnums=(0, 1))(params, x)))
  (h_x, g_x), (h_e, g_e) = results
  np.testing.assert_allclose(h_x, h_e, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_x), jax.tree.leaves(g_e)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def _batch():
  a = argparse.Namespace(batch=4, sessions=3, session_len=4, num_items=20, num_cats=5, themes=2, task="ctr")
  return random_batch(a, np.random.default_rng(0))


def _loss_and_grad(name, backbone, remat):
  cfg = ModelConfig(name=name, backbone=backbone, num_items=20, num_cats=5, num_sessions=3, session_len=4,
                    embed_dim=8, hidden_dim=8, num_heads=2, num_themes=2, dropout=0.1, remat=remat)
  cfg.transact.ffn_dim, cfg.mamba4rec.d_state = 16, 4
  graphdef, params, rest = nnx.split(build_model(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)

  def f(p, r, b):  # training mode: dropout on, so remat must replay the same dropout masks
    out = nnx.merge(graphdef, p, r, copy=True)(b, deterministic=False)
    return jnp.mean(losses.per_example_loss(out.logits, b, "ctr")) + out.aux_loss

  batch = _batch()
  jaxpr = str(jax.make_jaxpr(jax.grad(f))(params, rest, batch))
  return jax.jit(jax.value_and_grad(f))(params, rest, batch), jaxpr


# MoS-SASRec covers the stacked (nnx.vmap) theme experts; the other hosts with blocks run as plain backbones to keep
# the compiles few.
@pytest.mark.parametrize("name, backbone, policies", [("mos", "sasrec", ("dots",)),
                                                      ("backbone", "transact", ("full",)),
                                                      ("backbone", "mamba4rec", ("full",))])
def test_remat_keeps_outputs_and_gradients(name, backbone, policies):
  (loss0, grad0), jaxpr0 = _loss_and_grad(name, backbone, "none")
  assert "checkpoint" not in jaxpr0 and "remat" not in jaxpr0
  for policy in policies:
    (loss, grad), jaxpr = _loss_and_grad(name, backbone, policy)
    assert "checkpoint" in jaxpr or "remat" in jaxpr, policy  # the blocks are really rematerialised
    np.testing.assert_allclose(loss, loss0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(grad0)):
      np.testing.assert_allclose(a, b, atol=1e-6)


def test_remat_policy_validated():
  with pytest.raises(ValueError, match="ModelConfig.remat='some'"):
    ModelConfig(num_items=5, remat="some").validate()
  with pytest.raises(ValueError, match="ModelConfig.attention='flash'"):
    ModelConfig(num_items=5, attention="flash").validate()
  with pytest.raises(ValueError, match="remat='x'"):
    remat_block(None, "x")


def _eqns(jaxpr):
  """Every equation of a jaxpr, nested ones (pjit, custom_jvp, checkpoint, ...) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in v if isinstance(v, (tuple, list)) else (v,):
        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(sub, "eqns"):
          yield from _eqns(sub)


@pytest.mark.parametrize("backbone", ["sasrec", "transact"])
def test_bfloat16_keeps_softmax_layernorm_and_loss_in_float32(backbone):
  cfg = ModelConfig(name="backbone", backbone=backbone, num_items=20, num_cats=5, num_sessions=3, session_len=4,
                    embed_dim=8, hidden_dim=8, num_heads=2, dropout=0.0, dtype="bfloat16")
  cfg.transact.ffn_dim = 16
  model = build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  batch = _batch()
  closed = jax.make_jaxpr(lambda st: nnx.merge(graphdef, st)(batch, deterministic=True).logits)(state)
  eqns = list(_eqns(closed.jaxpr))
  dots = [e for e in eqns if e.primitive.name == "dot_general"]
  assert any(e.invars[0].aval.dtype == jnp.bfloat16 for e in dots)  # the matmuls do run in bf16
  # exp: the softmaxes (attention; TransAct max-pool none); rsqrt: LayerNorm; the mean/variance reductions.
  for prim in ("exp", "rsqrt"):
    found = [e for e in eqns if e.primitive.name == prim]
    assert found, prim
    assert all(o.aval.dtype == jnp.float32 for e in found for o in e.outvars), prim
  logits = nnx.merge(graphdef, state)(batch, deterministic=True).logits
  assert logits.dtype == jnp.float32
  assert losses.per_example_loss(logits.astype(jnp.bfloat16), batch, "ctr").dtype == jnp.float32


@pytest.mark.parametrize("name, sessions", [("long_1024", 64), ("long_4096", 256)])
def test_long_configs(name, sessions):
  cfg = config_lib.load_config_file(f"configs/{name}.py")
  config_lib.validate(cfg)
  assert (cfg.data.num_sessions, cfg.data.session_len) == (sessions, 16)
  lo, hi = cfg.data.synthetic.sessions_per_user
  assert lo >= sessions  # most users fill all S sessions of the grid
  assert cfg.model.num_themes == 8  # K = 8, the long-sequence setting
