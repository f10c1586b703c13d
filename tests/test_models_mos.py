"""MoS against a plain loop over users and experts (forward and gradient), and its invariances and switches."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mos_jax.models import ModelConfig, build_encoder, build_model
from mos_jax.models.router import Router, session_summary

B, S, T, K = 2, 4, 2, 3
BASE = ModelConfig(name="mos", num_items=12, num_cats=4, num_sessions=S, session_len=T, embed_dim=8, hidden_dim=8,
                   num_heads=2, num_themes=K, dropout=0.0, head_hidden=8, short_sessions=2)
CONFIGS = {  # small capacities so that sessions are dropped
  "sasrec_ctr_top2_einsum": dataclasses.replace(BASE, top_k=2, capacity_factor=0.75, dispatch="einsum"),
  "gru_next_top1_gather_proto": dataclasses.replace(BASE, backbone="gru4rec", task="next", top_k=1,
                                                    capacity_factor=0.75, dispatch="gather", router="prototype",
                                                    router_temperature=0.1),
}


def make_batch(seed, b=B, s=S, t=T):
  rng = np.random.default_rng(seed)
  items = rng.integers(1, 13, (b, s, t)).astype(np.int32)
  items[:, :, -1] *= rng.random((b, s)) < 0.5  # some sessions end early (padding items at the end)
  items[0, 0] = 0  # user 0 has a padding session at the front
  items[1, :2] = 0  # user 1 has two
  return dict(items=items, cats=(items % 4 + 1) * (items > 0), target_item=rng.integers(1, 13, b).astype(np.int32),
              target_cat=rng.integers(1, 5, b).astype(np.int32), label=(rng.random(b) < 0.5).astype(np.float32),
              session_theme=np.where(items[:, :, 0] > 0, items[:, :, 0] % K, -1).astype(np.int32))


BATCH = make_batch(0)


@pytest.fixture(scope="module", params=list(CONFIGS))
def built(request):
  cfg = CONFIGS[request.param]
  model = build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  traces = []  # one entry per trace: shapes that depend on data would retrace

  def forward(p, r, batch):
    traces.append(jax.tree.map(jnp.shape, batch))
    return nnx.merge(graphdef, p, r)(batch, deterministic=True)

  fwd = jax.jit(forward)
  fwd.traces = traces
  return cfg, model, graphdef, params, rest, fwd


def loop_plan(probs, smask, cfg, cap):
  """Plain-loop routing: for each user, {theme: [(session, choice rank)] in time order} (drop oldest, choice prio)."""
  plans = []
  for b in range(probs.shape[0]):
    real = [s for s in range(probs.shape[1]) if smask[b, s]]
    choices = {s: list(np.argsort(-probs[b, s], kind="stable")[:cfg.top_k]) for s in real}
    count, kept = [0] * K, {e: [] for e in range(K)}
    for j in range(cfg.top_k):
      for s in sorted(choices, reverse=True):  # most recent first within a choice rank
        e = choices[s][j]
        if count[e] < cap:
          count[e] += 1
          kept[e].append(s)
    plans.append({e: sorted(v) for e, v in kept.items()})
  return plans


def _gelu(v):  # tanh approximation (jax.nn.gelu's default)
  return 0.5 * v * (1 + jnp.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))


def ref_fusion(model, hs, avail, tgt):
  """The fusion gate written out from its parameters: score_e = w . tanh(W [h_e ; t]) + b_e, softmax over the
  available experts only, u = sum_e weight_e * h_e (one user at a time)."""
  f = model.fusion
  wh, bh = f.hidden.kernel[...], f.hidden.bias[...]
  ws, bs, be = f.score.kernel[...][:, 0], f.score.bias[...][0], f.bias[...]
  us = []
  for b in range(hs.shape[0]):
    on = [e for e in range(hs.shape[1]) if bool(avail[b, e])]
    if not on:
      us.append(jnp.zeros(hs.shape[-1], jnp.float32))
      continue
    scores = []
    for e in on:
      z = hs[b, e] if tgt is None else jnp.concatenate([hs[b, e], tgt[b]])
      scores.append(jnp.dot(jnp.tanh(z @ wh + bh), ws) + bs + be[e])
    scores = jnp.stack(scores)
    w = jnp.exp(scores - jnp.max(scores))
    w = w / jnp.sum(w)
    us.append(sum(w[i] * hs[b, e] for i, e in enumerate(on)))
  return jnp.stack(us)


def ref_head(model, u, target, cfg):
  """CTR: MLP over [u, t, u*t] with t = projected target; next: proj(u) . item table, padding column -1e9."""
  h = model.head.head
  if cfg.task == "ctr":
    t = target @ h.target_proj.kernel[...] + h.target_proj.bias[...]
    z = _gelu(jnp.concatenate([u, t, u * t], -1) @ h.hidden.kernel[...] + h.hidden.bias[...])
    return (z @ h.out.kernel[...] + h.out.bias[...])[:, 0]
  q = u @ h.proj.kernel[...] + h.proj.bias[...]
  return (q @ model.embedder.item_table.T).at[:, 0].set(-1e9)


def loop_forward(model, batch, plans, cfg, cap, single_def):
  """MoS with the theme experts run one user and one theme at a time (sliced stacked parameters, sessions
  concatenated in time order, output times the mean gate of those sessions); the global/short experts are the
  model's own encoders (tested on their own in test_models_encoders.py); the fusion gate and the head are written out
  here from their parameters."""
  stacked = nnx.state(model.theme_experts)
  experts = [nnx.merge(single_def, jax.tree.map(lambda a: a[e], stacked)) for e in range(K)]
  x, mask, target = model.embedder.embed_batch(batch)
  b_, d = x.shape[0], x.shape[-1]
  smask = jnp.any(mask, -1)
  probs = jax.nn.softmax(model.router(session_summary(x, mask), smask), -1)
  tgt = target if cfg.task == "ctr" else None
  hs = [model.global_expert(x.reshape(b_, S * T, d), mask.reshape(b_, S * T), tgt, deterministic=True),
        model.short_expert(x[:, -2:].reshape(b_, 2 * T, d), mask[:, -2:].reshape(b_, 2 * T), tgt, deterministic=True)]
  real = (np.asarray(batch["items"]) > 0).any(-1)  # [B,S] from the data: which experts have any input
  avail = [real.any(1), real[:, -2:].any(1)]
  for e in range(K):
    h_e = []
    for b in range(b_):
      seq = [x[b, s] for s in plans[b][e]]
      gate = sum(probs[b, s, e] for s in plans[b][e]) / max(len(plans[b][e]), 1)
      msk = [mask[b, s] for s in plans[b][e]]
      pad = cap - len(seq)
      seq = jnp.concatenate(seq + [jnp.zeros((T, d), x.dtype)] * pad, 0)[None]
      msk = jnp.concatenate(msk + [jnp.zeros((T,), bool)] * pad, 0)[None]
      h_e.append(experts[e](seq, msk, None if tgt is None else tgt[b:b + 1], deterministic=True) * gate)
    hs.append(jnp.concatenate(h_e, 0))
    avail.append(np.array([bool(plans[b][e]) for b in range(b_)]))
  u = ref_fusion(model, jnp.stack(hs, 1), np.stack(avail, 1), tgt)
  return ref_head(model, u, target, cfg)


def test_matches_loop_forward_and_grad(built):
  cfg, model, graphdef, params, rest, fwd = built
  cap = model.capacity
  x, mask, _ = model.embedder.embed_batch(BATCH)
  smask = np.asarray(jnp.any(mask, -1))
  probs = np.asarray(jax.nn.softmax(model.router(session_summary(x, mask), jnp.array(smask)), -1))
  plans = loop_plan(probs, smask, cfg, cap)
  out = fwd(params, rest, BATCH)
  n_valid = smask.sum() * cfg.top_k
  n_kept = sum(len(v) for p in plans for v in p.values())
  assert n_kept < n_valid  # the test exercises dropping
  np.testing.assert_allclose(out.metrics["dropped_fraction"], 1 - n_kept / n_valid, rtol=1e-6)
  np.testing.assert_allclose(out.metrics["theme_sessions"], [np.mean([len(p[e]) for p in plans]) for e in range(K)])
  cot = jnp.array(np.random.default_rng(1).normal(size=out.logits.shape), jnp.float32)
  if cfg.task == "next":
    cot = cot.at[:, 0].set(0.0)
  fast = lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(BATCH, deterministic=True).logits * cot)  # noqa: E731
  single_def = nnx.graphdef(build_encoder(cfg, max_len=cap * T, rngs=nnx.Rngs(0)))
  def ref(p):
    return jnp.sum(loop_forward(nnx.merge(graphdef, p, rest), BATCH, plans, cfg, cap, single_def) * cot)
  (vf, gf), (vr, gr) = (jax.jit(jax.value_and_grad(f))(params) for f in (fast, ref))
  np.testing.assert_allclose(vf, vr, rtol=1e-5, atol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(gf), jax.tree.leaves(gr)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path))
  # The router learns through the gate scaling of the theme experts' outputs.
  assert any(np.abs(a).max() > 0 for a in jax.tree.leaves(gf["router"]))


def test_jit_matches_eager_and_shapes_never_depend_on_data(built):
  cfg, model, _, params, rest, fwd = built
  jitted = fwd(params, rest, BATCH)
  if cfg.backbone == "gru4rec":  # eager runs op by op (slow to start): once is enough
    eager = model(BATCH, deterministic=True)
    np.testing.assert_allclose(jitted.logits, eager.logits, rtol=1e-5, atol=1e-5)
    for k in eager.metrics:
      np.testing.assert_allclose(jitted.metrics[k], eager.metrics[k], rtol=1e-5, atol=1e-6)
  n_traces = len(fwd.traces)
  other = fwd(params, rest, make_batch(7))  # different data, same shapes: no new trace, same output shapes
  assert len(fwd.traces) == n_traces and other.logits.shape == jitted.logits.shape
  assert not np.allclose(other.logits, jitted.logits)
  expected = (B,) if cfg.task == "ctr" else (B, cfg.num_items + 1)
  assert jitted.logits.shape == expected and jitted.logits.dtype == jnp.float32
  if cfg.task == "next":
    assert np.all(np.asarray(jitted.logits[:, 0]) == -1e9)
  names = {"dropped_fraction", "expert_usage", "router_entropy", "theme_sessions", "fusion_weights"}
  assert names <= set(jitted.metrics)
  assert jitted.metrics["fusion_weights"].shape == (2 + K,)
  np.testing.assert_allclose(jitted.aux_loss, cfg.balance_loss_weight * jitted.metrics["balance_loss"]
                             + cfg.z_loss_weight * jitted.metrics["z_loss"], rtol=1e-6)


def test_padding_changes_nothing(built):
  cfg, _, _, params, rest, fwd = built
  base = fwd(params, rest, BATCH)
  padded = dict(BATCH)
  pad_s = lambda a, fill: np.concatenate([np.full_like(a[:, :1], fill), a], 1)  # noqa: E731
  pad_t = lambda a: np.concatenate([a, np.zeros_like(a[:, :, :1])], 2)  # noqa: E731
  padded["items"], padded["cats"] = (pad_t(pad_s(BATCH[k], 0)) for k in ("items", "cats"))
  padded["session_theme"] = pad_s(BATCH["session_theme"], -1)
  out = fwd(params, rest, padded)  # [B, S+1, T+1]: one more padding session in front, one padding item per session
  np.testing.assert_allclose(out.logits, base.logits, rtol=1e-5, atol=1e-5)
  for k in ("dropped_fraction", "theme_sessions", "expert_usage", "router_entropy"):
    np.testing.assert_allclose(out.metrics[k], base.metrics[k], rtol=1e-5, atol=1e-6)


def test_einsum_and_gather_models_agree(built):
  cfg, _, _, params, rest, fwd = built
  other = "gather" if cfg.dispatch == "einsum" else "einsum"
  model = build_model(dataclasses.replace(cfg, dispatch=other), rngs=nnx.Rngs(0))  # same seed: same parameters
  graphdef2, params2, rest2 = nnx.split(model, nnx.Param, ...)
  a = fwd(params, rest, BATCH)
  b = jax.jit(lambda p, r: nnx.merge(graphdef2, p, r)(BATCH, deterministic=True))(params2, rest2)
  # Buffers are bit-identical (test_models_routing); downstream XLA fusion may differ by an ulp.
  np.testing.assert_allclose(a.logits, b.logits, rtol=1e-6, atol=1e-6)
  for k in a.metrics:
    np.testing.assert_allclose(a.metrics[k], b.metrics[k], rtol=1e-6, atol=1e-7)


def test_route_by_label():
  cfg = dataclasses.replace(BASE, backbone="gru4rec", route_by="label", capacity_factor=2.0)  # C = 3: no drops
  model = build_model(cfg, rngs=nnx.Rngs(0))
  assert model.router is None
  x, mask, _ = model.embedder.embed_batch(BATCH)
  plan, aux, metrics = model.route(x, mask, BATCH)
  labels = BATCH["session_theme"]
  for b in range(B):
    for s in range(S):
      assert bool(plan.keep[b, s, 0]) == (labels[b, s] >= 0)
      if labels[b, s] >= 0:
        assert int(plan.expert[b, s, 0]) == labels[b, s]
        assert int(plan.slot[b, s, 0]) == np.sum(labels[b, :s] == labels[b, s])  # chronological slot
  np.testing.assert_allclose(metrics["theme_sessions"], [np.mean(np.sum(labels == e, 1)) for e in range(K)])
  assert float(aux) == 0.0 and float(metrics["unrouted_fraction"]) == 0.0
  out = model(BATCH, deterministic=True)
  assert out.logits.shape == (B,) and np.all(np.isfinite(out.logits))
  with pytest.raises(KeyError, match="session_theme"):
    model({k: v for k, v in BATCH.items() if k != "session_theme"}, deterministic=True)


@pytest.mark.parametrize("switches, experts", [
  (dict(use_theme_experts=False), 2), (dict(use_global_expert=False, use_short_expert=False), K),
  (dict(use_short_expert=False, fusion="mean", router_mlp=True, gate_scaling="straight_through"), 1 + K)])
def test_expert_switches(switches, experts):
  model = build_model(dataclasses.replace(BASE, backbone="gru4rec", **switches), rngs=nnx.Rngs(0))
  out = model(BATCH, deterministic=True)
  assert out.metrics["fusion_weights"].shape == (experts,)
  assert np.all(np.isfinite(out.logits))
  assert (model.theme_experts is None) == (not switches.get("use_theme_experts", True))


def test_config_errors_and_dispatch(monkeypatch):
  with pytest.raises(ValueError, match="use_theme_experts"):
    build_model(dataclasses.replace(BASE, use_theme_experts=False, use_global_expert=False, use_short_expert=False),
                rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="ModelConfig.name='nope'"):
    build_model(dataclasses.replace(BASE, name="nope"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="ModelConfig.num_heads=3"):
    build_model(dataclasses.replace(BASE, num_heads=3), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="ModelConfig.top_k=3"):
    build_model(dataclasses.replace(BASE, top_k=3), rngs=nnx.Rngs(0))
  # MoE names go to mos_jax.models.moe.build_moe_model, imported lazily.
  import mos_jax.models as models_pkg  # noqa: PLC0415
  import sys  # noqa: PLC0415
  import types  # noqa: PLC0415

  fake = types.ModuleType("mos_jax.models.moe")
  fake.build_moe_model = lambda cfg, *, rngs: ("moe", cfg.name)
  monkeypatch.setitem(sys.modules, "mos_jax.models.moe", fake)
  monkeypatch.setattr(models_pkg, "moe", fake, raising=False)
  for name in ("gshard", "expert_choice", "dselect_k"):
    assert build_model(dataclasses.replace(BASE, name=name), rngs=nnx.Rngs(0)) == ("moe", name)


@pytest.mark.parametrize("task", ["ctr", "next"])
def test_bfloat16_matches_float32(task):
  """Same parameters, bfloat16 compute: logits within 3% of the largest |float32 logit| (bf16 keeps 8 mantissa bits,
  a relative step of 0.4%, and the error grows over a few layers; measured: at most 0.5%)."""
  cfg = dataclasses.replace(BASE, top_k=2, task=task)
  outs = []
  for dtype in ("float32", "bfloat16"):
    model = build_model(dataclasses.replace(cfg, dtype=dtype), rngs=nnx.Rngs(0))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda st, batch: nnx.merge(graphdef, st)(batch, deterministic=True))  # noqa: B023
    outs.append(run(state, BATCH))
  f32, bf16 = outs
  assert bf16.logits.dtype == jnp.float32 and bf16.aux_loss.dtype == jnp.float32
  a, b = np.asarray(f32.logits), np.asarray(bf16.logits)
  if task == "next":
    a, b = a[:, 1:], b[:, 1:]  # column 0 is the padding id (-1e9 in both)
  assert np.abs(a).max() > 0.1  # logits of a usable scale, so the relative bound means something
  np.testing.assert_allclose(b, a, rtol=0, atol=0.03 * np.abs(a).max())
  np.testing.assert_allclose(float(bf16.aux_loss), float(f32.aux_loss), rtol=0.03)


def test_target_routing_weights_theme_experts_by_the_candidates_theme():
  """fusion='mean' + target_routing: weight of expert e ∝ exp(prior_e) over the available experts, prior = 0 for the
  global and short-term experts and log p(theme k | target) (the router applied to the target embedding) for theme k."""
  cfg = dataclasses.replace(BASE, backbone="gru4rec", fusion="mean", target_routing=True, capacity_factor=4.0)
  model = build_model(cfg, rngs=nnx.Rngs(1))
  out = model(BATCH, deterministic=True)
  x, mask, target = model.embedder.embed_batch(BATCH)
  plan, _, _ = model.route(x, mask, BATCH)
  kernel, bias = np.asarray(model.router.proj.kernel[...]), np.asarray(model.router.proj.bias[...])
  z = np.asarray(target, np.float64) @ kernel + bias  # [B,K]
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  kept = np.asarray(plan.keep[..., 0]) & np.asarray(plan.valid[..., 0])
  avail_theme = np.stack([(kept & (np.asarray(plan.expert[..., 0]) == k)).any(1) for k in range(K)], 1)
  w = np.concatenate([np.ones((B, 2)), p], 1) * np.concatenate([np.ones((B, 2), bool), avail_theme], 1)
  w /= w.sum(1, keepdims=True)
  np.testing.assert_allclose(out.metrics["fusion_weights"], w.mean(0), rtol=1e-5, atol=1e-6)
  ent = -(p * np.log(p)).sum(1).mean()
  np.testing.assert_allclose(out.metrics["target_router_entropy"], ent, rtol=1e-5)
  with pytest.raises(ValueError, match="target_routing"):
    build_model(dataclasses.replace(cfg, task="next"), rngs=nnx.Rngs(0))


def test_router_inputs_last_item_and_attention_pooling():
  """router_input: last = the most recent valid item of each session; attention = softmax(x . q) over the valid items
  (a zero query gives the mean); padding sessions give zeros."""
  x = np.random.default_rng(3).normal(size=(B, S, T, 8)).astype(np.float32)
  mask = BATCH["items"] > 0
  for kind in ("mean", "last", "attention"):
    router = build_model(dataclasses.replace(BASE, router_input=kind), rngs=nnx.Rngs(0)).router
    if kind == "attention":
      np.testing.assert_allclose(router.summarize(x, mask), session_summary(x, mask), rtol=1e-6, atol=1e-6)
      router.pool_query[...] = jnp.asarray(np.linspace(-1, 1, 8), jnp.float32)
    got = np.asarray(router.summarize(x, mask))
    for b in range(B):
      for s in range(S):
        valid = np.flatnonzero(mask[b, s])
        if not len(valid):
          np.testing.assert_array_equal(got[b, s], 0)
          continue
        xs = x[b, s, valid].astype(np.float64)
        if kind == "mean":
          want = xs.mean(0)
        elif kind == "last":
          want = xs[-1]
        else:
          z = xs @ np.linspace(-1, 1, 8)
          want = (np.exp(z - z.max()) / np.exp(z - z.max()).sum()) @ xs
        np.testing.assert_allclose(got[b, s], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("params", ["shared", "global"])
def test_theme_params_shared_equals_separate_with_tied_weights(params):
  """theme_params=shared|global runs one encoder over every theme's buffer: the same as K stacked (separate)
  experts whose parameters are all copies of that encoder."""
  cfg = dataclasses.replace(BASE, top_k=2, capacity_factor=0.75)
  one = build_model(dataclasses.replace(cfg, theme_params=params), rngs=nnx.Rngs(0))
  sep = build_model(cfg, rngs=nnx.Rngs(1))
  state = nnx.to_pure_dict(nnx.state(one))
  tied = state.pop("shared_theme_expert") if params == "shared" else state["global_expert"]
  state["theme_experts"] = jax.tree.map(lambda v: jnp.broadcast_to(v, (K,) + jnp.shape(v)), tied)
  sep_state = nnx.state(sep)
  nnx.replace_by_pure_dict(sep_state, state)
  nnx.update(sep, sep_state)
  want, got = sep(BATCH, deterministic=True), one(BATCH, deterministic=True)
  np.testing.assert_allclose(got.logits, want.logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.metrics["fusion_weights"], want.metrics["fusion_weights"], rtol=1e-5, atol=1e-6)
  n = lambda m: sum(p.size for p in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
  assert n(one) < n(sep)
  with pytest.raises(ValueError, match="theme_params"):
    build_model(dataclasses.replace(cfg, theme_params="global", use_global_expert=False), rngs=nnx.Rngs(0))


def test_router_mi_weight_adds_the_mutual_information_loss():
  """aux += w * (mean_s H(p_s) - H(mean_s p_s)) over the real sessions."""
  base = build_model(BASE, rngs=nnx.Rngs(0))
  mi = build_model(dataclasses.replace(BASE, router_mi_weight=0.5), rngs=nnx.Rngs(0))
  a, b = base(BATCH, deterministic=True), mi(BATCH, deterministic=True)
  x, mask, _ = base.embedder.embed_batch(BATCH)
  probs = np.asarray(jax.nn.softmax(base.router(session_summary(x, mask), jnp.any(mask, -1)), -1), np.float64)
  p = probs[np.asarray(jnp.any(mask, -1))]
  cond = -(p * np.log(p)).sum(-1).mean()
  marg = -(p.mean(0) * np.log(p.mean(0))).sum()
  np.testing.assert_allclose(a.metrics["router_entropy"], cond, rtol=1e-5)
  np.testing.assert_allclose(b.metrics["mi_loss"], cond - marg, rtol=1e-5)
  np.testing.assert_allclose(b.aux_loss, a.aux_loss + 0.5 * (cond - marg), rtol=1e-4, atol=1e-7)
  with pytest.raises(ValueError, match="router_mi_weight"):
    build_model(dataclasses.replace(BASE, router_mi_weight=-1.0), rngs=nnx.Rngs(0))


def test_gate_scaling_multiplies_the_theme_outputs_so_items_and_positions_stay_alike():
  """gate_scaling=multiply with a constant gate g (zero router kernel, a bias sending every session to theme 0): the
  SASRec theme expert's output is g times its output on the unscaled sessions, so its items and learned positions
  keep their proportions (scaling the input instead, SASRec(g x) + positions, would not give g h). Checked through
  fusion=mean over the theme experts only and a bias-free next-item head, where the scores are linear in h. The
  router still gets a gradient from the task."""
  cfg = dataclasses.replace(BASE, task="next", capacity_factor=3.0, fusion="mean", use_global_expert=False,
                            use_short_expert=False)  # C = S: theme 0 holds every session
  model = build_model(cfg, rngs=nnx.Rngs(0))
  model.router.proj.kernel[...] = jnp.zeros_like(model.router.proj.kernel[...])
  model.router.proj.bias[...] = jnp.array([1.0, 0.0, 0.0])
  model.head.head.proj.bias[...] = jnp.zeros_like(model.head.head.proj.bias[...])
  g = float(np.exp(1.0) / (np.exp(1.0) + 2.0))  # softmax([1, 0, 0])[0]
  g_mul, params, rest = nnx.split(model, nnx.Param, ...)
  model.gate_scaling = "none"
  g_none = nnx.graphdef(model)
  cot = jnp.asarray(np.random.default_rng(2).normal(size=(B, cfg.num_items)), jnp.float32)

  @jax.jit
  def run(p):
    scores = lambda gd, q: nnx.merge(gd, q, rest)(BATCH, deterministic=True).logits[:, 1:]  # noqa: E731
    mul, vjp = jax.vjp(lambda q: scores(g_mul, q), p)
    return mul, scores(g_none, p), vjp(cot)[0]

  mul, none, grads = run(params)
  assert np.abs(np.asarray(none)).max() > 1e-3
  np.testing.assert_allclose(mul, g * np.asarray(none), rtol=1e-5, atol=1e-6)
  for leaf in ("kernel", "bias"):
    assert np.abs(np.asarray(grads["router"]["proj"][leaf])).max() > 1e-6, leaf


def test_prototype_router_learns_its_logit_scale():
  """router=prototype: logits = cos(summary, prototype) * exp(log_scale), log_scale starting at -log(temperature) and
  learned (router_learn_temperature), so the logits can leave [-1, 1]; False keeps the fixed 1 / temperature."""
  cfg = dataclasses.replace(BASE, router="prototype", router_temperature=0.5, num_themes=2)
  router = Router(cfg, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.exp(float(router.log_scale[...])), 2.0, rtol=1e-6)
  router.prototypes[...] = jnp.eye(2, 8, dtype=jnp.float32)
  summaries = jnp.zeros((1, 2, 8)).at[0, 0, 0].set(3.0).at[0, 1, :2].set(1.0)  # cosines [1, 0] and [.71, .71]
  mask = jnp.ones((1, 2), bool)
  cos = np.array([[[1.0, 0.0], [0.5**0.5, 0.5**0.5]]])
  np.testing.assert_allclose(router(summaries, mask), 2.0 * cos, rtol=1e-6, atol=1e-7)
  gd, params = nnx.split(router, nnx.Param)
  c = jnp.array([[[1.0, -2.0], [0.5, 3.0]]])
  grads = jax.grad(lambda p: jnp.sum(nnx.merge(gd, p)(summaries, mask) * c))(params)
  np.testing.assert_allclose(grads["log_scale"][...], np.sum(2.0 * cos * np.asarray(c)), rtol=1e-5)  # d/d log s
  router.log_scale[...] = jnp.asarray(np.log(5.0), jnp.float32)  # grown by training
  np.testing.assert_allclose(router(summaries, mask), 5.0 * cos, rtol=1e-6, atol=1e-7)
  fixed = Router(dataclasses.replace(cfg, router_learn_temperature=False), rngs=nnx.Rngs(0))
  assert fixed.log_scale is None and "log_scale" not in nnx.state(fixed, nnx.Param)
  fixed.prototypes[...] = jnp.eye(2, 8, dtype=jnp.float32)
  np.testing.assert_allclose(fixed(summaries, mask), 2.0 * cos, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="ModelConfig.router_learn_temperature='yes'"):
    dataclasses.replace(cfg, router_learn_temperature="yes").validate()
