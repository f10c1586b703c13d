"""Expert parallelism on a 4-device CPU mesh (data 2 x expert 2): the compiled train step's HLO and 1-device equality.

conftest.py fixes 2 devices in this process, so one child process (this file run as a script, with
``--xla_force_host_platform_device_count=4``) does all the JAX work once: for MoS (K = 4 themes) and GShard (E = 4
experts, a capacity that drops nothing) it trains 3 steps on 1 device and 3 steps with the AOT-compiled step of the
4-device mesh, and writes the losses, the parameters and that step's HLO text. The tests here read them: the
expert-axis collective (by its replica groups), the expert computation split K / 2 per device, equal runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mos_jax.models import ModelConfig, MoEConfig, build_model, expert_sharding, routing
from mos_jax.training import optimizer, sharding, step as step_lib
from mos_jax.training.config import TrainConfig
from mos_jax.training.parallel import Executor

REPO = pathlib.Path(__file__).resolve().parents[1]
B, S, T, K, STEPS = 6, 4, 4, 4, 3  # B / 2 = 3 rows and K / 2 = 2 experts per device: distinct sizes in the HLO
HEADS = 2
# Partition p of the compiled program is mesh.devices.flat[p]; mesh (data 2, expert 2): p = 2 * data + expert.
EXPERT_GROUPS = [(0, 1), (2, 3)]
DATA_GROUPS = [(0, 2), (1, 3)]
COMBINE = {"mos": "be,beh->bh", "gshard": "bec,ech->bh"}  # the einsum that sums the experts' outputs per row


def model_configs() -> dict[str, ModelConfig]:
  mos = ModelConfig(name="mos", backbone="sasrec", task="ctr", num_items=20, num_cats=5, num_sessions=S,
                    session_len=T, embed_dim=8, hidden_dim=8, num_layers=1, num_heads=HEADS, dropout=0.0,
                    num_themes=K, balance_loss_weight=0.1, z_loss_weight=0.01,
                    use_global_expert=False, use_short_expert=False)  # theme experts only: half the compile time
  # GShard capacity C = ceil(cf * k * B / E) = B with cf = E / k: no example is dropped, as in test_train_parallel.
  gshard = dataclasses.replace(mos, name="gshard", moe=MoEConfig(num_experts=K, top_k=1, capacity_factor=float(K)))
  return {"mos": mos, "gshard": gshard}


def batches() -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(0)
  out = []
  for _ in range(STEPS):
    items = rng.integers(1, 21, (B, S, T)).astype(np.int32)
    items[:, 0, :] = 0  # a padding session in front
    items[:, :, T - 1] *= rng.integers(0, 2, (B, S)).astype(np.int32)  # some padding at session ends
    out.append(dict(items=items, cats=np.where(items > 0, items % 5 + 1, 0).astype(np.int32),
                    times=np.zeros((B, S, T), np.int32), session_theme=np.full((B, S), -1, np.int32),
                    target_item=rng.integers(1, 21, B).astype(np.int32), target_cat=rng.integers(1, 6, B).astype(
                        np.int32), label=rng.integers(0, 2, B).astype(np.float32), user=np.arange(B, dtype=np.int32),
                    weight=np.array([1, 1, 1, 1, 1, 0], np.float32)))  # a padding row
  return out


# ---------------------------------------------------------------------------------------------------- child process


def _train(cfg: ModelConfig, n_devices: int) -> tuple[list[float], dict[str, np.ndarray], str | None]:
  """3 steps on the first ``n_devices`` devices (mesh expert = 2 when 4): losses, parameters, the step's HLO text."""
  # eps=1e-3: Adam would otherwise turn float noise in near-zero gradients into full-size updates of opposite signs.
  tcfg = TrainConfig(batch_size=B, eval_batch_size=B, learning_rate=1e-2, warmup_steps=1, eps=1e-3,
                     mesh_expert=2 if n_devices == 4 else 1)
  tx = optimizer.make_optimizer(tcfg, total_steps=STEPS)
  graphdef, state = step_lib.init_state(build_model(cfg, rngs=nnx.Rngs(0)), tx)
  ex = Executor(tcfg, graphdef, tx, optimizer.learning_rate_schedule(tcfg, STEPS), "ctr", state,
                devices=jax.devices()[:n_devices])
  hlo, losses = None, []
  if n_devices == 1:
    losses = [float(ex.train_step(b)["loss"]) for b in batches()]
  else:
    assert ex.mesh.shape == {"data": 2, "expert": 2, "model": 1}, ex.mesh.shape
    placed = [sharding.put_batch(b, sharding.batch_sharding(ex.mesh)) for b in batches()]
    compiled = ex._step.lower(ex.state, placed[0]).compile()  # the step train_step runs, compiled once here
    hlo = compiled.as_text()
    for b in placed:
      ex.state, metrics = compiled(ex.state, b)
      losses.append(float(metrics["loss"]))
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(ex.saveable_state().params))[0]
  return losses, {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}, hlo


def child(out: pathlib.Path) -> None:
  assert jax.device_count() == 4, jax.devices()
  cache = os.environ.get("MOS_JAX_COMPILATION_CACHE")  # set by run4 to conftest.py's persistent cache
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  report = {}
  for name, cfg in model_configs().items():
    l1, p1, _ = _train(cfg, 1)
    l4, p4, hlo = _train(cfg, 4)
    np.savez(out / f"{name}_params1.npz", **p1)
    np.savez(out / f"{name}_params4.npz", **p4)
    (out / f"{name}.hlo").write_text(hlo)
    report[name] = {"losses1": l1, "losses4": l4}
  (out / "report.json").write_text(json.dumps(report))


# ---------------------------------------------------------------------------------------------------- HLO reading


class Collective(NamedTuple):
  op: str  # all-reduce | all-gather | all-to-all | reduce-scatter | collective-permute
  shape: str  # result shape(s) as printed
  groups: list[tuple[int, ...]] | None  # partition ids of each replica group, sorted
  op_name: str  # the JAX op it came from (metadata), '' if none


_COLLECTIVE = re.compile(r"^\s*%\S+ = (.+?) (all-reduce|all-gather|all-to-all|reduce-scatter|collective-permute)"
                         r"(?:-start)?\((.*)$")


def _iota(dims: str, perm: str | None) -> np.ndarray:
  shape = [int(v) for v in dims.split(",")]
  a = np.arange(int(np.prod(shape))).reshape(shape)
  return a.transpose([int(v) for v in perm.split(",")]) if perm else a


def replica_groups(attrs: str) -> list[tuple[int, ...]] | None:
  """The replica groups of a collective's attribute text, in any of XLA's three printed forms:
  ``{{0,1},{2,3}}``, iota ``[2,2]<=[2,2]T(1,0)`` and mesh ``mesh['axis_0'=2,'axis_1'=2] {'axis_1'}`` (optionally
  with ``device_ids=([dims]T(perm))``): the devices along the named axes form a group."""
  m = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", attrs)
  if m:
    return sorted(tuple(sorted(int(v) for v in g.split(",") if v)) for g in re.findall(r"\{([\d,]*)\}", m.group(1)))
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attrs)
  if m:
    groups = _iota(m.group(3), m.group(4)).reshape(int(m.group(1)), int(m.group(2)))
    return sorted(tuple(sorted(g)) for g in groups.tolist())
  m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))? \{([^}]*)\}",
                attrs)
  if m:
    axes = re.findall(r"'(\w+)'=(\d+)", m.group(1))
    names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
    ids = _iota(m.group(2), m.group(3)).reshape(sizes) if m.group(2) else np.arange(int(np.prod(sizes))).reshape(sizes)
    chosen = [names.index(a) for a in re.findall(r"'(\w+)'", m.group(4))]
    other = [i for i in range(len(names)) if i not in chosen]
    groups = ids.transpose(other + chosen).reshape(-1, int(np.prod([sizes[i] for i in chosen])))
    return sorted(tuple(sorted(g)) for g in groups.tolist())
  return None


def collectives(hlo: str) -> list[Collective]:
  out = []
  for line in hlo.splitlines():
    m = _COLLECTIVE.match(line)
    if m:
      name = re.search(r'op_name="([^"]*)"', line)
      out.append(Collective(m.group(2), m.group(1), replica_groups(m.group(3)), name.group(1) if name else ""))
  return out


def op_shapes(hlo: str, op_name_end: str) -> set[tuple[int, ...]]:
  """Result shapes of the float32 ops whose JAX op name ends with ``op_name_end`` (XLA may lower a dot with a unit
  dimension as a multiply and a reduction, so every op carrying the name counts)."""
  pat = re.compile(r"= f32\[([\d,]*)\]\S* [\w-]+\(.*op_name=\"([^\"]*)\"")
  return {tuple(int(v) for v in m.group(1).split(",")) for m in map(pat.search, hlo.splitlines())
          if m and m.group(2).endswith(op_name_end)}


# ---------------------------------------------------------------------------------------------------- tests


def test_replica_groups_in_every_printed_form():
  assert replica_groups("channel_id=1, replica_groups={{0,2},{1,3}}, dimensions={0}") == DATA_GROUPS
  assert replica_groups("replica_groups=[2,2]<=[4], use_global_device_ids=true") == EXPERT_GROUPS
  assert replica_groups("replica_groups=[2,2]<=[2,2]T(1,0), to_apply=%add") == DATA_GROUPS
  assert replica_groups("replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_1'}, use_global") == EXPERT_GROUPS
  assert replica_groups("replica_groups=mesh['axis_0'=2,'axis_1'=1,'axis_2'=1,'axis_3'=2] {'axis_0'}, d") == DATA_GROUPS
  assert replica_groups("replica_groups=mesh['axis_0'=2,'axis_1'=2], device_ids=([2,2]T(1,0)) {'axis_0'}, d") == (
      EXPERT_GROUPS)  # devices transposed: the first axis of the view is the mesh's second
  assert replica_groups("source_target_pairs={{1,0},{3,2}}") is None
  line = ('  %all-reduce.3 = f32[3,8]{1,0} all-reduce(%x), channel_id=15, replica_groups=[2,2]<=[4], '
          'use_global_device_ids=true, to_apply=%add, metadata={op_name="jit(f)/jvp(be,beh->bh)/dot_general"}')
  assert collectives(line) == [Collective("all-reduce", "f32[3,8]{1,0}", EXPERT_GROUPS,
                                          "jit(f)/jvp(be,beh->bh)/dot_general")]


def test_hints_only_under_a_mesh_with_an_expert_axis():
  """``constrain`` returns its input itself (nothing traced) with no mesh, an expert axis of 1 or under pmap; under
  the 2 forced devices as (data 1, expert 2) it adds the constraint, leaving a dimension that does not divide."""
  if jax.device_count() < 2:
    pytest.skip("needs the 2 CPU devices tests/conftest.py forces")
  assert (expert_sharding.DATA, expert_sharding.EXPERT) == (sharding.DATA, sharding.EXPERT)  # one set of names
  x, y = jnp.ones((4, 2, 3)), jnp.ones((3, 4))
  axes = (expert_sharding.DATA, expert_sharding.EXPERT)
  assert expert_sharding.constrain(x, axes) is x
  data_only = sharding.make_mesh(TrainConfig(mesh_data=2), jax.devices()[:2])
  assert step_lib.with_mesh(lambda a: expert_sharding.constrain(a, axes) is a, data_only)(x)
  seen = []
  jax.pmap(lambda a: seen.append(expert_sharding.constrain(a, axes) is a) or a, axis_name="data")(jnp.ones((2, 4, 2)))
  assert seen == [True]
  expert = sharding.make_mesh(TrainConfig(mesh_expert=2), jax.devices()[:2])
  both = step_lib.with_mesh(lambda a, b: (expert_sharding.constrain(a, axes), expert_sharding.constrain(b, axes[::-1])),
                            expert)
  jaxpr = jax.make_jaxpr(both)(x, y)
  assert [(e.primitive.name, e.params["sharding"].spec) for e in jaxpr.eqns] == [
      ("sharding_constraint", P("data", "expert")), ("sharding_constraint", P(None, "data"))]  # 3 experts: not split


@pytest.fixture(scope="module")
def run4(tmp_path_factory) -> pathlib.Path:
  """The child process's outputs (one JAX start-up and two compiles per model for every test here)."""
  out = tmp_path_factory.mktemp("expert_parallel")

  # LLVM optimisation level 0: the child compiles in ~60% of the CPU time; the HLO passes (SPMD partitioning, the
  # collectives read here) are the same, and both runs compared share the flag.
  inherited = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
  flags = " ".join(inherited + ["--xla_force_host_platform_device_count=4", "--xla_backend_optimization_level=0"])
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, PYTHONPATH=str(REPO),
             MOS_JAX_COMPILATION_CACHE=jax.config.jax_compilation_cache_dir or "")
  proc = subprocess.run([sys.executable, __file__, str(out)], capture_output=True, text=True, timeout=300, env=env,
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return out


@pytest.mark.parametrize("name", ["mos", "gshard"])
def test_expert_axis_collective_combines_the_experts(run4, name):
  """Each device holds K / 2 experts' outputs; the combine einsum's partial sums are all-reduced over the expert
  axis (the groups of devices that share a data index), the gradients of the replicated parameters over data."""
  found = collectives((run4 / f"{name}.hlo").read_text())
  combine = [c for c in found if c.op == "all-reduce" and f"/jvp({COMBINE[name]})/" in c.op_name]  # forward
  assert combine and all(c.groups == EXPERT_GROUPS for c in combine), combine
  assert any(c.op == "all-reduce" and c.groups == DATA_GROUPS for c in found)  # data-parallel gradient sum
  assert {tuple(g) for c in found if c.groups for g in c.groups} <= set(EXPERT_GROUPS + DATA_GROUPS + [(0, 1, 2, 3)])


@pytest.mark.parametrize("name", ["mos", "gshard"])
def test_each_device_runs_half_the_experts_on_half_the_rows(run4, name):
  """The stacked experts' attention scores [experts, rows, heads, L] (a vmap over experts of SASRec's
  ``BTNH,BSNH->BNTS`` for one query: the one-layer encoder's block computes the last position only): K / 2 experts
  per device, on B / 2 rows (MoS) or C / 2 = B / 2 slots (GShard, C = B)."""
  cfg = model_configs()[name]
  # MoS: a theme expert reads its C sessions of T items; GShard: an expert reads the whole S * T sequence.
  length = T * (routing.capacity(S, K, cfg.top_k, cfg.capacity_factor, cfg.capacity_multiple) if name == "mos" else S)
  shapes = op_shapes((run4 / f"{name}.hlo").read_text(), "/jvp(vmap(vmap(BTNH,BSNH->BNTS)))/dot_general")
  assert shapes == {(K // 2, B // 2, HEADS, length)}, shapes


@pytest.mark.parametrize("name", ["mos", "gshard"])
def test_four_devices_train_like_one(run4, name):
  report = json.loads((run4 / "report.json").read_text())[name]
  assert report["losses1"][0] != report["losses1"][-1]  # the steps do move the parameters
  np.testing.assert_allclose(report["losses4"], report["losses1"], rtol=0, atol=1e-5)
  with np.load(run4 / f"{name}_params1.npz") as one, np.load(run4 / f"{name}_params4.npz") as four:
    assert sorted(one.files) == sorted(four.files)
    assert any("experts" in k for k in one.files)
    for k in one.files:
      np.testing.assert_allclose(four[k], one[k], rtol=0, atol=1e-5, err_msg=k)


if __name__ == "__main__":  # the child process of ``run4``
  child(pathlib.Path(sys.argv[1]))
