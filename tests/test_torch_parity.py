"""Parity of the PyTorch reference (mos_jax.reference.torch) with the JAX models, and weight conversion.

Same weights in both (JAX init perturbed so that biases and norms are not trivial): CTR logits / next-item scores,
loss and every parameter gradient within atol 1e-5 / rtol 1e-4 (float32, CPU, dropout off); routing decisions
(top-k experts, kept mask, slots; GShard dispatch) exactly equal; two AdamW steps (warmup, clipping, weight-decay
mask) give the same parameters; conversion JAX -> torch -> JAX is the identity, also through the CLI and Orbax.
The name-mapping tests run without torch; everything else is skipped when torch is not installed.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mos_jax.convert import flat_params
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


_MODELS: dict = {}


def jax_model(cfg: ModelConfig, seed: int = 0) -> nnx.Module:
  """A JAX model with every parameter perturbed (biases, norms, the fusion bias are not at their init values).

  Built once per config (module cache: eager initialisation compiles every op, which dominates a cold run); the
  perturbation is drawn in numpy for the same reason. Tests must not change the returned model.
  """
  key = (repr(cfg), seed)
  if key not in _MODELS:
    model = build_model(cfg, rngs=nnx.Rngs(seed))
    _, params, _ = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(seed + 1)
    noise = lambda p: jnp.asarray(np.asarray(p) + 0.2 * rng.standard_normal(p.shape, np.float32))  # noqa: E731
    nnx.update(model, jax.tree.map(noise, params))
    _MODELS[key] = model
  return _MODELS[key]


def torch_model(torch, cfg: ModelConfig, jmodel: nnx.Module):
  from mos_jax.reference.torch import build_model as build_torch  # noqa: PLC0415

  tmodel = build_torch(cfg)
  _, params, _ = nnx.split(jmodel, nnx.Param, ...)
  sd = {k: torch.tensor(v) for k, v in names.jax_to_torch(flat_params(params)).items()}
  tmodel.load_state_dict(sd, strict=True)
  return tmodel


def to_torch(torch, batch):
  return {k: torch.tensor(np.asarray(v)) for k, v in batch.items()}


def jax_loss_grads(model: nnx.Module, batch, task: str):
  """(logits, aux, loss, grads as torch names) of the training-mode forward (dropout is 0)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def f(p, batch):
    out = nnx.merge(graphdef, p, rest, copy=True)(batch, deterministic=False)
    loss, _ = losses.total_loss(out.logits, out.aux_loss, batch, task)
    return loss, (out.logits, out.aux_loss)

  (loss, (logits, aux)), grads = jax.value_and_grad(f, has_aux=True)(params, batch)
  return np.asarray(logits), float(aux), float(loss), names.jax_to_torch(flat_params(grads))


def torch_loss_grads(torch, tmodel, batch, task: str):
  from mos_jax.reference.torch import total_loss  # noqa: PLC0415

  tmodel.train()
  tmodel.zero_grad(set_to_none=True)
  out = tmodel(to_torch(torch, batch))
  loss, _ = total_loss(out.logits, out.aux_loss, to_torch(torch, batch), task)
  loss.backward()
  grads = {n: p.grad.numpy() for n, p in tmodel.named_parameters()}
  return out.logits.detach().numpy(), float(out.aux_loss.detach()), float(loss.detach()), grads


def assert_close(name: str, got, want, report: dict) -> None:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  report[name] = float(np.max(np.abs(got - want))) if got.size else 0.0
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=name)


def check_parity(torch, cfg: ModelConfig, batch) -> dict:
  """Logits, aux loss, loss and every gradient; returns the max abs difference of each group."""
  jm = jax_model(cfg)
  tm = torch_model(torch, cfg, jm)
  jl, ja, jloss, jg = jax_loss_grads(jm, batch, cfg.task)
  tl, ta, tloss, tg = torch_loss_grads(torch, tm, batch, cfg.task)
  report: dict[str, float] = {}
  assert_close("logits", tl, jl, report)
  assert_close("aux_loss", ta, ja, report)
  assert_close("loss", tloss, jloss, report)
  assert sorted(tg) == sorted(jg)
  worst = 0.0
  for n in jg:
    np.testing.assert_allclose(tg[n], jg[n], atol=ATOL, rtol=RTOL, err_msg=f"gradient of {n}")
    worst = max(worst, float(np.max(np.abs(tg[n] - jg[n]))))
  report["grads"] = worst
  assert any(np.abs(g).max() > 1e-3 for g in jg.values())  # the gradients are not trivially zero
  print(cfg.name, cfg.backbone, cfg.task, {k: f"{v:.1e}" for k, v in report.items()})
  return report


# ------------------------------------------------------------------------------------------------ name mapping (numpy)


@pytest.mark.parametrize("kw", [dict(), dict(name="backbone", backbone="gru4rec", task="next"), dict(name="gshard")])
def test_name_mapping_round_trip_is_identity(kw):
  cfg = gshard_cfg() if kw.get("name") == "gshard" else make_cfg(**kw)  # the parity tests' configs (model cache)
  params = nnx.split(jax_model(cfg), nnx.Param, ...)[1]
  flat = flat_params(params)
  sd = names.jax_to_torch(flat)
  back = names.torch_to_jax(sd, flat)
  assert sorted(back, key=str) == sorted(flat, key=str)
  for path in flat:
    assert back[path].dtype == flat[path].dtype
    np.testing.assert_array_equal(back[path], flat[path])
  if kw.get("name", "mos") == "mos":
    k = make_cfg().num_themes
    assert sd["theme_experts.2.blocks.0.qkv.weight"].shape == (24, 8)  # [out, in] per expert
    np.testing.assert_array_equal(sd["theme_experts.1.pos.weight"], flat[("theme_experts", "pos", "embedding")][1])
    assert not any(n.startswith(f"theme_experts.{k}.") for n in sd)
  if kw.get("backbone") == "gru4rec":
    np.testing.assert_array_equal(sd["encoder.cell.weight_hh"], flat[("encoder", "rec", "kernel")].T)


def test_name_mapping_errors_name_the_parameter():
  flat = flat_params(nnx.split(jax_model(make_cfg(name="backbone")), nnx.Param, ...)[1])
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


def test_sasrec_backbone_ctr_parity(torch):
  check_parity(torch, make_cfg(name="backbone"), make_batch(0))


def test_gru4rec_backbone_next_item_parity(torch):
  cfg = make_cfg(name="backbone", backbone="gru4rec", task="next")
  report = check_parity(torch, cfg, make_batch(1))
  assert report["logits"] < ATOL


def test_mos_sasrec_ctr_parity_and_routing(torch):
  cfg = make_cfg()
  batch = make_batch(2)
  check_parity(torch, cfg, batch)
  jm = jax_model(cfg)
  tm = torch_model(torch, cfg, jm)

  @nnx.jit
  def route(m, batch):
    x, mask, _ = m.embedder.embed_batch(batch)
    return m.route(x, mask, batch)[0]

  plan = route(jm, batch)
  tx, tmask, _ = tm.embedder.embed_batch(to_torch(torch, batch))
  tplan, _, _ = tm.route(tx, tmask)
  np.testing.assert_array_equal(tplan.valid.numpy(), np.asarray(plan.valid))
  valid = np.asarray(plan.valid)
  np.testing.assert_array_equal(np.where(valid, tplan.expert.numpy(), -1), np.where(valid, np.asarray(plan.expert), -1))
  np.testing.assert_array_equal(tplan.keep.numpy(), np.asarray(plan.keep))
  np.testing.assert_array_equal(tplan.slot.numpy(), np.asarray(plan.slot))
  np.testing.assert_allclose(tplan.gate.detach().numpy(), np.asarray(plan.gate), atol=ATOL, rtol=RTOL)
  keep = np.asarray(plan.keep)
  assert (valid & ~keep).any() and keep.any()  # capacity drops some choices: the drop policy is exercised


def test_mos_next_item_time_priority_parity(torch):
  cfg = make_cfg(task="next", routing_priority="time", drop_policy="newest", gate_scaling="straight_through",
                 router="prototype", backbone="gru4rec")
  check_parity(torch, cfg, make_batch(3))


def test_gshard_parity_and_routing(torch):
  cfg = gshard_cfg()
  batch = make_batch(4, b=6)
  batch["weight"][5] = 0.0  # a padding row is never routed
  check_parity(torch, cfg, batch)
  jm = jax_model(cfg)
  tm = torch_model(torch, cfg, jm)

  @nnx.jit
  def route(m, batch):
    _, _, _, feats, valid = m.embed(batch)
    return feats, valid, m.route(feats, valid, deterministic=False)

  feats, valid, r = route(jm, batch)
  tm.train()
  tfeat = torch.tensor(np.asarray(feats))
  tr = tm.route(tfeat, torch.tensor(np.asarray(valid)))
  np.testing.assert_array_equal(tr.dispatch.detach().numpy(), np.asarray(r.dispatch))
  np.testing.assert_allclose(tr.combine.detach().numpy(), np.asarray(r.combine), atol=ATOL, rtol=RTOL)
  assert float(r.metrics["dropped_fraction"]) > 0
  tm.eval()  # evaluation: every example routed on its own, nothing dropped
  with torch.no_grad():
    tl = tm(to_torch(torch, batch)).logits.numpy()
  jl = nnx.jit(lambda m, b: m(b, deterministic=True).logits)(jm, batch)
  np.testing.assert_allclose(tl, np.asarray(jl), atol=ATOL, rtol=RTOL)


def test_unported_switches_are_refused(torch):
  from mos_jax.reference.torch import build_model as build_torch  # noqa: PLC0415

  with pytest.raises(ValueError, match=r"ModelConfig.backbone='din' is not ported"):
    build_torch(make_cfg(backbone="din"))
  with pytest.raises(ValueError, match=r"ModelConfig.name='dselect_k' is not ported"):
    build_torch(make_cfg(name="dselect_k"))
  with pytest.raises(ValueError, match=r"ModelConfig.target_routing=True is not ported"):
    build_torch(make_cfg(target_routing=True))


# ------------------------------------------------------------------------------------------------ optimizer


def test_adamw_steps_match_optax(torch):
  from mos_jax.reference.torch import make_optimizer, train_step  # noqa: PLC0415
  from mos_jax.reference.torch.training import decays, learning_rate  # noqa: PLC0415

  cfg = make_cfg()
  # eps = 1e-4, not the default 1e-8: some gradients are 0 in exact arithmetic (the key bias of attention: softmax
  # ignores a constant shift) and float noise (~1e-9) in both frameworks; with eps = 1e-8 Adam would turn that noise
  # into steps of +-lr in either direction. A large eps also makes its placement (outside the sqrt) matter more.
  tcfg = TrainConfig(learning_rate=1e-2, warmup_steps=1, decay="cosine", end_lr_ratio=0.1, weight_decay=0.1,
                     grad_clip_norm=0.5, eps=1e-4)
  total = 5
  schedule = optimizer_lib.learning_rate_schedule(tcfg, total)
  for count in range(total + 1):
    assert learning_rate(tcfg, total, count) == pytest.approx(float(schedule(count)), rel=1e-6, abs=1e-12)
  jm = jax_model(cfg)
  tm = torch_model(torch, cfg, jm)
  tx = optimizer_lib.make_optimizer(tcfg, total)
  graphdef, state = step_lib.init_state(jm, tx)
  jmask = flat_params(optimizer_lib.decay_mask(state.params, tcfg.no_decay))  # {path: bool}
  shapes = flat_params(state.params)
  mask = {name: bool(jmask[path]) for path in jmask for name, _, _ in names.torch_names(path, shapes[path].shape)}
  flags = decays(tm, tcfg.no_decay)
  assert mask == flags
  assert flags["theme_experts.0.blocks.0.qkv.weight"] and not flags["embedder.item.weight"]
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
      "  cfg.model.embed_dim = cfg.model.hidden_dim = 8\n"
      "  cfg.model.num_themes = 2\n"
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
  assert payload["step"] == 3 and "theme_experts.1.pos.weight" in payload["state_dict"]
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
