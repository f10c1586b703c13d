"""Parity of the PyTorch reference (mos_jax.reference.torch) with the JAX models, and weight conversion.

Same weights in both (drawn in numpy around the init's scale, so that biases and norms are not trivial): CTR logits /
next-item scores, loss, aux loss, routing metrics and every parameter gradient within atol 1e-5 / rtol 1e-4 (float32,
CPU, dropout off); routing decisions (top-k experts, kept mask, slots; GShard dispatch) exactly equal; the weight-decay
masks equal; two AdamW steps (warmup, clipping, weight-decay mask) give the same parameters; conversion JAX -> torch ->
JAX is the identity, also through the CLI and Orbax. The name-mapping tests run without torch; everything else is
skipped when torch is not installed.

Cold-cache cost is dominated by compiling the JAX side, so every JAX model is built abstractly (nothing runs
eagerly), and each config compiles one function giving forward, loss, gradients and routing (``jax_case``, module
scope), shared by the tests that need it.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mos_jax.convert import flat_params, params_from_flat
from mos_jax.models import ModelConfig, build_model
from mos_jax.reference import names
from mos_jax.training import losses
from mos_jax.training import optimizer as optimizer_lib
from mos_jax.training import step as step_lib
from mos_jax.training.config import TrainConfig

ATOL, RTOL = 1e-5, 1e-4
B, S, T = 4, 5, 3


@pytest.fixture(scope="module")
def torch():
  return pytest.importorskip("torch")


def make_cfg(**kw) -> ModelConfig:
  base = dict(num_items=30, num_cats=5, num_sessions=S, session_len=T, embed_dim=8, hidden_dim=8, num_heads=2,
              num_themes=3, top_k=2, capacity_factor=0.7, dropout=0.0, head_hidden=16)
  base.update(kw)
  return ModelConfig(**base)


def gshard_cfg() -> ModelConfig:
  cfg = make_cfg(name="gshard")
  cfg.moe.num_experts, cfg.moe.capacity_factor = 3, 0.5  # C = ceil(0.5 * 2 * 6 / 3) = 2 at B = 6: drops happen
  return cfg


def make_batch(seed: int = 0, b: int = B) -> dict[str, np.ndarray]:
  """Padding sessions in front, padding items at the end of sessions; row 1 has a single short session."""
  rng = np.random.default_rng(seed)
  items = rng.integers(1, 31, size=(b, S, T)).astype(np.int32)
  lens = rng.integers(1, T + 1, size=(b, S))
  items[np.arange(T)[None, None, :] >= lens[..., None]] = 0
  items[0, :1] = 0
  items[1, :-1] = 0
  items[1, -1, 1:] = 0
  cats = np.where(items > 0, items % 5 + 1, 0).astype(np.int32)
  target = rng.integers(1, 31, size=(b,)).astype(np.int32)
  return {"items": items, "cats": cats, "target_item": target, "target_cat": (target % 5 + 1).astype(np.int32),
          "label": (rng.random(b) < 0.5).astype(np.float32), "weight": np.ones(b, np.float32)}


# name -> (ModelConfig overrides, batch seed, batch size); every parity config, each compiled once
CASES = {
  "sasrec_backbone_ctr": (dict(name="backbone", num_layers=2), 0, B),
  "gru4rec_backbone_next": (dict(name="backbone", backbone="gru4rec", task="next"), 1, B),
  "mos_sasrec_ctr": (dict(), 2, B),  # k = 2, capacity drops
  "mos_gru4rec_next": (dict(task="next", routing_priority="time", drop_policy="newest",
                            gate_scaling="straight_through", router="prototype", backbone="gru4rec"), 3, B),
  "gshard": (dict(name="gshard"), 4, 6),
  # the newer MoS switches: target routing, MI loss, attention pooling (+ router MLP), one shared theme encoder
  "mos_target_routing_ctr": (dict(target_routing=True, router_mi_weight=0.1, router_input="attention",
                                  theme_params="shared", router_mlp=True), 6, B),
  # the global expert's encoder runs the theme buffers; last-item summaries; fusion mean; top-1
  "mos_global_theme_next": (dict(task="next", theme_params="global", router_input="last", router_mi_weight=0.05,
                                 fusion="mean", top_k=1), 7, B),
}


def case_cfg(case: str) -> ModelConfig:
  kw = CASES[case][0]
  return gshard_cfg() if kw.get("name") == "gshard" else make_cfg(**kw)


def case_batch(case: str) -> dict[str, np.ndarray]:
  _, seed, b = CASES[case]
  batch = make_batch(seed, b=b)
  if CASES[case][0].get("name") == "gshard":
    batch["weight"][5] = 0.0  # a padding row is never routed
  return batch


def _draw(rng: np.random.Generator, path: tuple, shape: tuple[int, ...]) -> np.ndarray:
  """A parameter at its init's scale plus N(0, 0.2^2): LayerNorm scales near 1, kernels ~ 1/sqrt(fan_in), tables and
  prototypes ~ 1/sqrt(D), biases (and the fusion bias, the pooling query) not at 0."""
  leaf = str(path[-1])
  noise = 0.2 * rng.standard_normal(shape)
  if leaf == "scale":
    return (1.0 + noise).astype(np.float32)
  if leaf in ("kernel", "embedding", "prototypes"):
    fan = shape[-2] if leaf == "kernel" else shape[-1]
    return (rng.standard_normal(shape) / np.sqrt(fan) + noise).astype(np.float32)
  return noise.astype(np.float32)


def build_jax_model(cfg: ModelConfig, seed: int = 0) -> nnx.Module:
  """A JAX model with numpy-drawn parameters (``_draw``).

  Built with ``nnx.eval_shape``: eager initialisation would compile every init op (15 s for MoS on 2 busy cores).
  The only other state, dropout RNG keys and counts, gets concrete values (dropout is 0).
  """
  abstract = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(seed)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  rng = np.random.default_rng(seed + 1)
  params = params_from_flat(params, {path: _draw(rng, path, tuple(v.shape)) for path, v in nnx.to_flat_state(params)})
  key_data = np.asarray(jax.random.key_data(jax.random.key(seed)))

  def concrete(path, v):
    value = v.get_value() if hasattr(v, "get_value") else v.value
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
      return v.replace(jax.random.wrap_key_data(np.broadcast_to(key_data, value.shape + key_data.shape)))
    if str(path[-1]) == "count":
      return v.replace(jnp.zeros(value.shape, value.dtype))
    raise AssertionError(f"unexpected non-parameter state {path}: {value}")

  rest = nnx.from_flat_state([(path, concrete(path, v)) for path, v in nnx.to_flat_state(rest)])
  return nnx.merge(graphdef, params, rest)


@pytest.fixture(scope="module")
def jax_models():
  """case -> JAX model, built once per module (tests must not change the models)."""
  cache: dict = {}

  def get(case: str) -> nnx.Module:
    if case not in cache:
      cache[case] = build_jax_model(case_cfg(case))
    return cache[case]

  return get


@pytest.fixture(scope="module")
def jax_case(jax_models):
  """case -> numpy results of one jitted call (training-mode forward, loss, gradients, routing; GShard's eval
  logits), computed once per module."""
  cache: dict = {}

  def get(case: str) -> dict:
    if case not in cache:
      cache[case] = jax_results(jax_models(case), case_batch(case), case_cfg(case))
    return cache[case]

  return get


def jax_results(model: nnx.Module, batch, cfg: ModelConfig) -> dict:
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def f(p, batch):
    m = nnx.merge(graphdef, p, rest, copy=True)
    out = m(batch, deterministic=False)
    loss, _ = losses.total_loss(out.logits, out.aux_loss, batch, cfg.task)
    extra = {}
    if cfg.name == "mos":
      x, mask, _ = m.embedder.embed_batch(batch)
      extra["plan"] = m.route(x, mask, batch)[0]._asdict()
    if cfg.name == "gshard":
      _, _, _, feats, valid = m.embed(batch)
      r = m.route(feats, valid, deterministic=False)
      extra.update(feats=feats, valid=valid, dispatch=r.dispatch, combine=r.combine,
                   eval_logits=m(batch, deterministic=True).logits)
    return loss, dict(logits=out.logits, aux=out.aux_loss, metrics=dict(out.metrics), **extra)

  (loss, aux), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params, batch)
  res = jax.tree.map(np.asarray, aux)
  res.update(loss=float(loss), grads=names.jax_to_torch(flat_params(grads)))
  return res


def torch_model(torch, cfg: ModelConfig, jmodel: nnx.Module):
  from mos_jax.reference.torch import build_model as build_torch  # noqa: PLC0415

  tmodel = build_torch(cfg)
  _, params, _ = nnx.split(jmodel, nnx.Param, ...)
  sd = {k: torch.tensor(v) for k, v in names.jax_to_torch(flat_params(params)).items()}
  tmodel.load_state_dict(sd, strict=True)
  return tmodel


def to_torch(torch, batch):
  return {k: torch.tensor(np.asarray(v)) for k, v in batch.items()}


def torch_results(torch, tmodel, batch, task: str) -> dict:
  """Training-mode logits, aux loss, loss, metrics and every parameter gradient of the torch model."""
  from mos_jax.reference.torch import total_loss  # noqa: PLC0415

  tmodel.train()
  tmodel.zero_grad(set_to_none=True)
  tb = to_torch(torch, batch)
  out = tmodel(tb)
  loss, _ = total_loss(out.logits, out.aux_loss, tb, task)
  loss.backward()
  return dict(logits=out.logits.detach().numpy(), aux=float(out.aux_loss.detach()), loss=float(loss.detach()),
              metrics={k: v.detach().numpy() for k, v in out.metrics.items()},
              grads={n: p.grad.numpy() for n, p in tmodel.named_parameters()})


def assert_close(name: str, got, want, report: dict) -> None:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  report[name] = max(report.get(name, 0.0), float(np.max(np.abs(got - want))) if got.size else 0.0)
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=name)


def torch_decay_flags_match_optax(tmodel, jmodel, no_decay: tuple[str, ...]) -> dict[str, bool]:
  """The torch reference's weight-decay flags, checked parameter by parameter against optax's mask."""
  from mos_jax.reference.torch.training import decays  # noqa: PLC0415

  params = nnx.split(jmodel, nnx.Param, ...)[1]
  jmask, shapes = flat_params(optimizer_lib.decay_mask(params, no_decay)), flat_params(params)
  want = {name: bool(jmask[path]) for path in jmask for name, _, _ in names.torch_names(path, shapes[path].shape)}
  flags = decays(tmodel, no_decay)
  assert flags == want
  return flags


# ------------------------------------------------------------------------------------------------ name mapping (numpy)


@pytest.mark.parametrize("case", ["mos_sasrec_ctr", "gru4rec_backbone_next", "gshard", "mos_target_routing_ctr"])
def test_name_mapping_round_trip_is_identity(jax_models, case):
  flat = flat_params(nnx.split(jax_models(case), nnx.Param, ...)[1])
  sd = names.jax_to_torch(flat)
  back = names.torch_to_jax(sd, flat)
  assert sorted(back, key=str) == sorted(flat, key=str)
  for path in flat:
    assert back[path].dtype == flat[path].dtype
    np.testing.assert_array_equal(back[path], flat[path])
  if case == "mos_sasrec_ctr":
    k = make_cfg().num_themes
    assert sd["theme_experts.2.blocks.0.qkv.weight"].shape == (24, 8)  # [out, in] per expert
    np.testing.assert_array_equal(sd["theme_experts.1.pos.weight"], flat[("theme_experts", "pos", "embedding")][1])
    assert not any(n.startswith(f"theme_experts.{k}.") for n in sd)
  if case == "gru4rec_backbone_next":
    np.testing.assert_array_equal(sd["encoder.cell.weight_hh"], flat[("encoder", "rec", "kernel")].T)
  if case == "mos_target_routing_ctr":  # one unstacked theme encoder; the pooling query keeps its name and layout
    assert not any(n.startswith("theme_experts.") for n in sd)
    np.testing.assert_array_equal(sd["shared_theme_expert.blocks.0.qkv.weight"],
                                  flat[("shared_theme_expert", "blocks", 0, "qkv", "kernel")].T)
    np.testing.assert_array_equal(sd["router.pool_query"], flat[("router", "pool_query")])


def test_name_mapping_errors_name_the_parameter(jax_models):
  flat = flat_params(nnx.split(jax_models("sasrec_backbone_ctr"), nnx.Param, ...)[1])
  sd = names.jax_to_torch(flat)
  bad = dict(sd, **{"encoder.out.weight": np.zeros((3, 8), np.float32)})
  with pytest.raises(names.ConversionError, match=r"encoder\.out\.weight: expected shape \(8, 8\).*got \(3, 8\)"):
    names.torch_to_jax(bad, flat)
  missing = {k: v for k, v in sd.items() if k != "head.head.out.bias"}
  with pytest.raises(names.ConversionError, match=r"missing \['head\.head\.out\.bias'\]"):
    names.torch_to_jax(missing, flat)
  with pytest.raises(names.ConversionError, match=r"unexpected \['extra\.weight'\]"):
    names.torch_to_jax(dict(sd, **{"extra.weight": np.zeros(2, np.float32)}), flat)


# ------------------------------------------------------------------------------------------------ forward / gradients


@pytest.mark.parametrize("case", list(CASES))
def test_parity(torch, jax_models, jax_case, case):
  """Logits, aux loss, loss, routing metrics and every gradient; routing decisions exactly; weight-decay masks."""
  cfg, batch = case_cfg(case), case_batch(case)
  want = jax_case(case)
  tm = torch_model(torch, cfg, jax_models(case))
  got = torch_results(torch, tm, batch, cfg.task)
  report: dict[str, float] = {}
  assert_close("logits", got["logits"], want["logits"], report)
  assert_close("aux_loss", got["aux"], want["aux"], report)
  assert_close("loss", got["loss"], want["loss"], report)
  shared = sorted(set(got["metrics"]) & set(want["metrics"]))
  if cfg.name == "mos":
    assert sorted(got["metrics"]) == sorted(want["metrics"])
  for k in shared:
    assert_close(f"metrics/{k}", got["metrics"][k], want["metrics"][k], report)
  assert sorted(got["grads"]) == sorted(want["grads"])
  for n, g in want["grads"].items():
    assert_close(f"gradient of {n}", got["grads"][n], g, report)
  assert any(np.abs(g).max() > 1e-3 for g in want["grads"].values())  # the gradients are not trivially zero
  torch_decay_flags_match_optax(tm, jax_models(case), TrainConfig().no_decay)

  if cfg.name == "mos":
    plan = want["plan"]
    with torch.no_grad():
      tx, tmask, _ = tm.embedder.embed_batch(to_torch(torch, batch))
      tplan = tm.route(tx, tmask)[0]
    valid = plan["valid"]
    np.testing.assert_array_equal(tplan.valid.numpy(), valid)
    np.testing.assert_array_equal(np.where(valid, tplan.expert.numpy(), -1), np.where(valid, plan["expert"], -1))
    np.testing.assert_array_equal(tplan.keep.numpy(), plan["keep"])
    np.testing.assert_array_equal(tplan.slot.numpy(), plan["slot"])
    assert_close("gate", tplan.gate.numpy(), plan["gate"], report)
    assert (valid & ~plan["keep"]).any() and plan["keep"].any()  # capacity drops some choices: drop policy exercised
  if cfg.name == "gshard":
    tm.train()
    with torch.no_grad():
      tr = tm.route(torch.tensor(want["feats"]), torch.tensor(want["valid"]))
    np.testing.assert_array_equal(tr.dispatch.numpy(), want["dispatch"])
    assert_close("combine", tr.combine.numpy(), want["combine"], report)
    assert float(want["metrics"]["dropped_fraction"]) > 0
    tm.eval()  # evaluation: every example routed on its own, nothing dropped
    with torch.no_grad():
      assert_close("eval_logits", tm(to_torch(torch, batch)).logits.numpy(), want["eval_logits"], report)
  if cfg.target_routing:  # the candidate's theme prior changes the prediction, so the parity above covers it
    off = torch_model(torch, dataclasses.replace(cfg, target_routing=False), jax_models(case))
    off.train()
    with torch.no_grad():
      assert np.abs(off(to_torch(torch, batch)).logits.numpy() - got["logits"]).max() > 1e-3
  if cfg.router_mi_weight:
    assert abs(float(want["metrics"]["mi_loss"])) > 1e-3
  if cfg.router_input == "attention":
    assert np.abs(want["grads"]["router.pool_query"]).max() > 1e-4
  grads = max(v for k, v in report.items() if k.startswith("gradient of"))
  print(case, {k: f"{v:.1e}" for k, v in report.items() if not k.startswith("gradient of")}, f"grads {grads:.1e}")


def test_unported_switches_are_refused(torch):
  from mos_jax.reference.torch import build_model as build_torch  # noqa: PLC0415

  with pytest.raises(ValueError, match=r"ModelConfig.backbone='din' is not ported"):
    build_torch(make_cfg(backbone="din"))
  with pytest.raises(ValueError, match=r"ModelConfig.name='dselect_k' is not ported"):
    build_torch(make_cfg(name="dselect_k"))
  with pytest.raises(ValueError, match=r"ModelConfig.route_by='label' is not ported"):
    build_torch(make_cfg(route_by="label"))
  with pytest.raises(ValueError, match=r"ModelConfig.dtype='bfloat16' is not ported"):
    build_torch(make_cfg(dtype="bfloat16"))


# ------------------------------------------------------------------------------------------------ optimizer


def test_adamw_steps_match_optax(torch, jax_models):
  """Two AdamW steps on the smallest config (the weight-decay masks of every config: test_parity)."""
  from mos_jax.reference.torch import make_optimizer, train_step  # noqa: PLC0415
  from mos_jax.reference.torch.training import learning_rate  # noqa: PLC0415

  case = "sasrec_backbone_ctr"
  cfg = case_cfg(case)
  # eps = 1e-4, not the default 1e-8: some gradients are 0 in exact arithmetic (the key bias of attention: softmax
  # ignores a constant shift) and float noise (~1e-9) in both frameworks; with eps = 1e-8 Adam would turn that noise
  # into steps of +-lr in either direction. A large eps also makes its placement (outside the sqrt) matter more.
  tcfg = TrainConfig(learning_rate=1e-2, warmup_steps=1, decay="cosine", end_lr_ratio=0.1, weight_decay=0.1,
                     grad_clip_norm=0.5, eps=1e-4)
  total = 5
  schedule = optimizer_lib.learning_rate_schedule(tcfg, total)
  for count in range(total + 1):
    assert learning_rate(tcfg, total, count) == pytest.approx(float(schedule(count)), rel=1e-6, abs=1e-12)
  jm = jax_models(case)
  tm = torch_model(torch, cfg, jm)
  flags = torch_decay_flags_match_optax(tm, jm, tcfg.no_decay)
  assert flags["encoder.blocks.0.qkv.weight"] and not flags["embedder.item.weight"] and not flags["encoder.norm.weight"]
  tx = optimizer_lib.make_optimizer(tcfg, total)
  graphdef, state = step_lib.init_state(jm, tx)
  step = jax.jit(step_lib.make_train_step(graphdef, tx, schedule, cfg.task))
  opt, sched = make_optimizer(tm, tcfg, total)
  batch = make_batch(5)
  norms = []
  for _ in range(2):  # step 0 has lr 0 (warmup) but moves the moments; step 1 moves the parameters
    state, metrics = step(state, batch)
    out = train_step(tm, opt, sched, to_torch(torch, batch), cfg.task, tcfg.grad_clip_norm)
    assert out["loss"] == pytest.approx(float(metrics["loss"]), abs=ATOL, rel=RTOL)
    norms.append(float(metrics["grad_norm"]))
  assert norms[0] > tcfg.grad_clip_norm  # clipping is exercised
  want = names.jax_to_torch(flat_params(state.params))
  start = names.jax_to_torch(flat_params(nnx.split(jm, nnx.Param, ...)[1]))
  worst = 0.0
  for n, p in tm.named_parameters():
    np.testing.assert_allclose(p.detach().numpy(), want[n], atol=ATOL, rtol=RTOL, err_msg=n)
    worst = max(worst, float(np.max(np.abs(p.detach().numpy() - want[n]))))
  assert max(np.abs(want[n] - start[n]).max() for n in want) > 1e-3  # the parameters did move
  print("adamw params max abs diff", f"{worst:.1e}")


# ------------------------------------------------------------------------------------------------ conversion CLI


def test_convert_cli_round_trip(torch, tmp_path, capsys):
  """A saved run -> model.pt -> a new workdir: identical parameters, and bad input fails naming the problem."""
  from mos_jax import config as config_lib  # noqa: PLC0415
  from mos_jax import convert  # noqa: PLC0415
  from mos_jax.training import checkpoint as ckpt_lib  # noqa: PLC0415
  from mos_jax.training.setup import build_run  # noqa: PLC0415

  cfg_file = tmp_path / "tiny.py"
  cfg_file.write_text(
      "from mos_jax.config import Config\n\n\ndef get_config():\n"
      "  cfg = Config(seed=0)\n"
      f"  cfg.data.cache_dir = {str(tmp_path / 'prepared')!r}\n"
      "  cfg.data.synthetic.num_users = 30\n"
      "  cfg.data.num_sessions, cfg.data.session_len = 4, 4\n"
      "  cfg.model.backbone = 'gru4rec'\n"  # fewer init ops than SASRec: eager init compiles one program per op
      "  cfg.model.embed_dim = cfg.model.hidden_dim = 8\n"
      "  cfg.model.num_themes = 2\n"
      "  cfg.model.router_input, cfg.model.target_routing = 'attention', True\n"
      "  cfg.train.batch_size, cfg.train.num_steps = 8, 3\n"
      "  return cfg\n")
  src = tmp_path / "src"
  cfg = config_lib.parse_command_line([f"--config={cfg_file}", f"--workdir={src}"])
  run = build_run(cfg)
  params = jax.tree.map(lambda p: p + 0.01, run.state.params)  # not the init a fresh run would give
  state = run.state.replace(params=params, step=jnp.asarray(3, jnp.int32))
  ckpts = ckpt_lib.Checkpoints(src, async_save=False)
  ckpts.save(3, state, data_state={}, loop_state={}, cfg=run.cfg, kind="best")
  ckpts.wait()
  ckpts.close()
  pt = tmp_path / "model.pt"
  assert convert.main(["--to-torch", f"--workdir={src}", f"--out={pt}"]) == 0
  payload = torch.load(pt, weights_only=True)
  assert payload["step"] == 3 and "theme_experts.1.cell.weight_ih" in payload["state_dict"]
  assert "router.pool_query" in payload["state_dict"]
  dst = tmp_path / "dst"
  assert convert.main([f"--from-torch={pt}", f"--config={cfg_file}", f"--workdir={dst}"]) == 0
  from mos_jax.training.restore import restore_run  # noqa: PLC0415

  restored = flat_params(restore_run(dst, "best").executor.saveable_state().params)  # what eval.py reads
  want = flat_params(params)
  assert sorted(restored, key=str) == sorted(want, key=str)
  for path, value in want.items():
    np.testing.assert_array_equal(restored[path], value)
  # Refusals name the problem.
  capsys.readouterr()
  assert convert.main([f"--from-torch={pt}", f"--config={cfg_file}", f"--workdir={dst}"]) == 2  # not fresh
  assert "already exists; convert into a fresh --workdir" in capsys.readouterr().err
  sd = dict(payload["state_dict"])
  sd["router.proj.weight"] = torch.zeros(5, 8)
  bad = tmp_path / "bad.pt"
  torch.save({"state_dict": sd}, bad)
  assert convert.main([f"--from-torch={bad}", f"--config={cfg_file}", f"--workdir={tmp_path / 'x'}"]) == 2
  assert "parameter router.proj.weight: expected shape (2, 8)" in capsys.readouterr().err
  other = tmp_path / "other.pt"
  torch.save(dict(payload, config=dict(payload["config"], model=dict(payload["config"]["model"], num_themes=3))),
             other)
  assert convert.main([f"--from-torch={other}", f"--config={cfg_file}", f"--workdir={tmp_path / 'y'}"]) == 2
  assert "another model config (file vs --config): model.num_themes: 3 vs 2" in capsys.readouterr().err
  assert not (tmp_path / "x" / "checkpoints").exists() and not (tmp_path / "y" / "checkpoints").exists()
