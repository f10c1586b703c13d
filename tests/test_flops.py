"""count_flops vs XLA: exact against the dot ops of the lowered HLO, bounded against compiled cost_analysis().

Tolerance: count_flops counts matrix products only (2*M*N*K). XLA's cost analysis also counts element-wise work
(layer norms, GELU, softmax, masks, bias adds: O(L*D + L^2) per block against O(L*D^2) for the matmuls; SASRec's last
block runs its matmuls for one position but its input layer norm on all), so with D = 64 it must lie in
[analytic, 1.20 * analytic]; measured excess 11-16% for every model. The matmul part itself is
checked exactly: the sum of 2 * |out| * |contracted| over the ``dot`` ops of the lowered HLO equals ``executed``.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from mos_jax.models import ModelConfig, MoEConfig, build_model
from mos_jax.models.flops import count_flops, encoder_flops
from mos_jax.models.flops_hlo import hlo_dot_flops, loop_dot_flops, while_body_dot_flops

B = 8


def _cfg(name, **kw):
  base = dict(name=name, task="ctr", num_items=50, num_cats=5, num_sessions=4, session_len=8, embed_dim=64,
              hidden_dim=64, num_heads=2, head_hidden=64, dropout=0.0, moe=MoEConfig(num_experts=4))
  return ModelConfig(**{**base, **kw})


def _xla(cfg):
  model = build_model(cfg, rngs=nnx.Rngs(0))
  gdef, state = nnx.split(model)
  rng = np.random.default_rng(0)
  s, t = cfg.num_sessions, cfg.session_len
  batch = dict(items=rng.integers(1, cfg.num_items + 1, (B, s, t)).astype(np.int32),
               cats=rng.integers(1, cfg.num_cats + 1, (B, s, t)).astype(np.int32),
               target_item=rng.integers(1, cfg.num_items + 1, B).astype(np.int32),
               target_cat=rng.integers(1, cfg.num_cats + 1, B).astype(np.int32), weight=np.ones(B, np.float32))
  # Training-mode forward (dropout is 0): count_flops counts the training routing (capacity over the batch); at
  # evaluation GShard / Expert Choice route per example over E*B slots (docs/baselines.md).
  lowered = jax.jit(lambda st, b: nnx.merge(gdef, st, copy=True)(b, deterministic=False).logits).lower(state, batch)
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax returns a list
  hlo = lowered.as_text(dialect="hlo")
  _xla.last_hlo = hlo
  return hlo_dot_flops(hlo) / B, cost["flops"] / B


CASES = [
    dict(name="backbone"),
    dict(name="mos"),
    dict(name="mos", dispatch="gather", router="prototype", router_mlp=True, task="next"),
    dict(name="gshard"),
    dict(name="gshard", dispatch="gather", task="next"),
    dict(name="expert_choice"),
    dict(name="dselect_k"),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_count_flops_matches_xla(kw):
  cfg = _cfg(**kw)
  dots, xla_total = _xla(cfg)
  got = count_flops(cfg, batch_size=B)
  np.testing.assert_allclose(got["executed"], dots, rtol=1e-9)
  assert got["executed"] <= xla_total <= 1.20 * got["executed"], (xla_total, got)


@pytest.mark.parametrize("sessions, session_len", [(1, 1), (2, 3)], ids=["L1", "L6"])
def test_gru_formula_matches_xla(sessions, session_len):
  # A static count sees the scanned recurrent matmul once; it runs L = S*T times (the scan's trip count).
  cfg = _cfg("backbone", backbone="gru4rec", num_sessions=sessions, session_len=session_len)
  length = sessions * session_len
  dots, _ = _xla(cfg)
  body = while_body_dot_flops(_xla.last_hlo) / B
  h = cfg.hidden_dim
  np.testing.assert_allclose(body, 2 * h * 3 * h, rtol=1e-9)  # the loop body holds the recurrent matmul, once
  np.testing.assert_allclose(count_flops(cfg)["executed"], dots + (length - 1) * body, rtol=1e-9)
  assert loop_dot_flops(_xla.last_hlo) == [(length, body * B)]  # trip count read from the loop condition


def test_breakdown_and_active_vs_executed():
  for name in ("mos", "backbone", "gshard", "expert_choice", "dselect_k"):
    f = count_flops(_cfg(name), batch_size=B)
    assert f["total"] == pytest.approx(f["experts"] + f["router"] + f["fusion"] + f["head"])
  enc = encoder_flops(_cfg("backbone"), 32)
  assert count_flops(_cfg("gshard"))["experts"] == pytest.approx(2 * enc)  # top-2: two full-sequence experts active
  assert count_flops(_cfg("dselect_k"))["experts"] == pytest.approx(2 * enc)  # k selectors
  assert count_flops(_cfg("dselect_k"))["executed"] > 4 * enc  # but the dense implementation runs all 4
  assert count_flops(_cfg("gshard", dispatch="gather"))["dispatch"] < count_flops(_cfg("gshard"))["dispatch"]


def test_errors_name_the_field():
  with pytest.raises(ValueError, match="backbone='nope'"):
    count_flops(_cfg("backbone", backbone="nope"))
  with pytest.raises(ValueError, match="name='x'"):
    count_flops(_cfg("x"))
  with pytest.raises(ValueError, match="batch_size"):
    count_flops(_cfg("gshard"), batch_size=0)


# The long-sequence hosts (docs/model.md, "Hosts"): small widths keep the compiles short; twin's topk (20) lies
# between the theme buffers' C*T (16) and the full sequence (32), so both branches of min(topk, L) are checked.
# The matmul part is exact for all; Mamba4Rec's conv and selective scan are element-wise by design (count_flops leaves
# them out), so XLA's total exceeds the analytic one by more there: measured 22% (backbone), bounded at 30%.
HOSTS = ("din", "sdim", "twin", "transact", "mamba4rec")


def _host_cfg(name, backbone, **kw):
  cfg = _cfg(name, backbone=backbone, **kw)
  cfg.sdim.attention_dim = cfg.twin.attention_dim = 32
  cfg.twin.topk = 20
  cfg.transact.ffn_dim, cfg.transact.last_k = 96, 2
  cfg.mamba4rec.d_state = 8
  return cfg


@pytest.mark.parametrize("backbone", HOSTS)
def test_host_flops_match_xla(backbone):
  for name in ("backbone", "mos") if backbone in ("twin", "mamba4rec") else ("backbone",):
    cfg = _host_cfg(name, backbone, hidden_dim=48)
    dots, xla_total = _xla(cfg)
    got = count_flops(cfg, batch_size=B)
    np.testing.assert_allclose(got["executed"], dots, rtol=1e-9, err_msg=f"{name}/{backbone}")
    bound = 1.30 if backbone == "mamba4rec" else 1.10
    assert got["executed"] <= xla_total <= bound * got["executed"], (name, backbone, xla_total / got["executed"])
