"""Multi-process training on CPU and elastic resume, end to end through the real loop (tests/mp_worker.py).

One chain of runs in one work directory, against one uninterrupted reference run (1 process, 4 devices, 7 steps):

1. 2 processes x 2 CPU devices (4 devices) train steps 1-2, validate at step 2 and stop as on a preemption
   (SIGTERM: checkpoint, return), resume in the same 2 processes for step 3 and stop again;
2. 1 process on 1 device (this pytest process) resumes that checkpoint for steps 4-5 (crossing an epoch boundary)
   and stops again;
3. 1 process x 4 devices resumes for steps 6-7 and finishes.

The chain's losses, validation metrics and parameters equal the reference's (atol 1e-5): each process of step 1 loads
only its half of every global batch, the data position saved by 2 processes is the same as 1 process's, and the
checkpoints restore onto other meshes. Rows of a global batch are ordered differently with 2 processes (shard i
holds every 2nd row), so equality is up to float summation order; the model has no dropout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mos_jax import config as config_lib
from mos_jax.training import checkpoint as ckpt_lib
from mos_jax.training import distributed
from mos_jax.training import sharding as sharding_lib
from mos_jax.training.config import TrainConfig
from mos_jax.training.loop import train
from mos_jax.training.parallel import Executor
from mos_jax.training.setup import build_run

HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("mp_worker", HERE / "mp_worker.py")
mp_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mp_worker)

TIMEOUT_S = 240  # per round of subprocesses; a hung collective must fail the test, not the suite
ATOL = 1e-5


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_workers(jobs: list[list[str]], logs: pathlib.Path, name: str, timeout: float = TIMEOUT_S) -> None:
  """Runs ``python tests/mp_worker.py ARGS`` for each job at once; kills them all and shows their stderr when one
  fails or the round runs past ``timeout``."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")  # the worker replaces XLA_FLAGS' device count with its own
  procs = []
  for i, args in enumerate(jobs):
    err = open(logs / f"{name}_{i}.log", "w")
    procs.append((subprocess.Popen([sys.executable, str(HERE / "mp_worker.py"), *args], env=env,
                                   stdout=subprocess.DEVNULL, stderr=err), err))
  deadline = time.monotonic() + timeout
  failed = None
  try:
    while failed is None and any(p.poll() is None for p, _ in procs):
      if time.monotonic() > deadline:
        failed = f"timed out after {timeout} s"
      elif any(p.poll() not in (None, 0) for p, _ in procs):
        failed = "a worker failed"  # the others would wait for it in their next collective
      else:
        time.sleep(0.1)
    if failed is None and any(p.returncode != 0 for p, _ in procs):
      failed = "a worker failed"
  finally:  # also on KeyboardInterrupt: no worker outlives the test
    for p, err in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
      err.close()
  if failed:
    tails = "\n".join(f"--- worker {args} (exit {p.returncode}):\n{pathlib.Path(err.name).read_text()[-3000:]}"
                      for (p, err), args in zip(procs, jobs))
    pytest.fail(f"{failed}\n{tails}")


def records(workdir: pathlib.Path) -> dict[tuple[int, str], dict]:
  out = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    r.pop("examples_per_s", None)  # wall clock
    out[(r.pop("step"), r.pop("split"))] = r
  return out


def saved(workdir: pathlib.Path, step: int) -> tuple[dict, dict]:
  """(parameters as numpy, data item) of a saved step, restored on one device of this process."""
  ckpts = ckpt_lib.Checkpoints(workdir, read_only=True)
  try:
    cfg = ckpts.saved_config(step)
    cfg.train.distributed, cfg.train.num_processes, cfg.train.process_id = "off", 1, 0
    state = build_run(cfg).state
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = sharding_lib.abstract_like(state, jax.tree.map(lambda _: one, state))
    restored, data_state, _ = ckpts.restore(step, target)
  finally:
    ckpts.close()
  return jax.tree.map(np.asarray, restored.params), data_state


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  """Runs the reference and the chain; returns (reference workdir, chain workdir, seconds taken)."""
  t0 = time.perf_counter()
  root = tmp_path_factory.mktemp("multiprocess")
  cache, ref, work, logs = (root / n for n in ("cache", "reference", "chain", "logs"))
  logs.mkdir()
  from mos_jax.data import prepare_dataset  # noqa: PLC0415

  prepare_dataset(mp_worker.tiny_config(str(work), str(cache)).data)  # once, before the processes look for it
  common = ["--cache", str(cache)]
  port = str(free_port())
  # Round 1: the 2-process segment and the uninterrupted reference side by side.
  run_workers([["--devices", "2", "--workdir", str(work), "--stop_at", "2,3", "--num_processes", "2",
                "--process_id", str(i), "--port", port, *common] for i in range(2)]
              + [["--devices", "4", "--workdir", str(ref), *common]], logs, "round1")
  t1 = time.perf_counter()
  # Round 2: 1 process, 1 device, here.
  stop_at = 5

  def preempt(step: int) -> None:
    if step == stop_at:
      os.kill(os.getpid(), signal.SIGTERM)

  result = train(mp_worker.tiny_config(str(work), str(cache)), devices=jax.devices()[:1], on_step=preempt)
  assert (result.status, result.step) == ("interrupted", stop_at)
  t2 = time.perf_counter()
  # Round 3: 1 process, 4 devices, to the end.
  run_workers([["--devices", "4", "--workdir", str(work), *common]], logs, "round3")
  t3 = time.perf_counter()
  print(f"multiprocess chain: round 1 (2 processes + reference) {t1 - t0:.1f} s, round 2 (here) {t2 - t1:.1f} s, "
        f"round 3 {t3 - t2:.1f} s")
  return ref, work, t3 - t0


@pytest.mark.multiprocess
def test_two_processes_train_like_one(chain):
  """Steps 1-3 (2 processes x 2 devices, stopped and resumed after step 2) and the validation at step 2 equal 1
  process x 4 devices; so do the saved parameters and the saved data position at step 3."""
  ref, work, _ = chain
  for step in (2, 3):
    assert json.loads((work / f"result_{step}.json").read_text()) == {"status": "interrupted", "step": step,
                                                                       "processes": 2, "devices": 4}
  got, want = records(work), records(ref)
  for step in (1, 2, 3):
    assert got[step, "train"].keys() == want[step, "train"].keys()
    for k, v in want[step, "train"].items():
      np.testing.assert_allclose(got[step, "train"][k], v, atol=ATOL, err_msg=f"step {step} {k}")
  assert want[1, "train"]["loss"] != want[3, "train"]["loss"] and want[1, "train"]["aux_loss"] > 0
  for k, v in want[2, "valid"].items():
    np.testing.assert_allclose(got[2, "valid"][k], v, atol=ATOL, err_msg=f"valid {k}")
  (got_params, got_data), (want_params, want_data) = saved(work, 3), saved(ref, 3)
  assert got_data == want_data == {"epoch": 0, "step": 3, "seed": 0, "num_examples": 80, "global_batch_size": 16}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=ATOL), got_params, want_params)


@pytest.mark.multiprocess
def test_resume_on_other_process_and_device_counts_continues_identically(chain):
  """2 processes -> 1 process / 1 device (steps 4-5, across the epoch boundary) -> 1 process / 4 devices (steps 6-7):
  every loss, validation and the final parameters equal the uninterrupted run's."""
  ref, work, _ = chain
  got, want = records(work), records(ref)
  assert sorted(got) == sorted(want)  # the same train and valid records, nothing lost or repeated
  for key, rec in want.items():
    for k, v in rec.items():
      np.testing.assert_allclose(got[key][k], v, atol=ATOL, err_msg=f"{key} {k}")
  (got_params, got_data), (want_params, want_data) = saved(work, 7), saved(ref, 7)
  assert got_data == want_data == {"epoch": 1, "step": 2, "seed": 0, "num_examples": 80, "global_batch_size": 16}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=ATOL), got_params, want_params)
  assert json.loads((work / "result_7.json").read_text())["status"] == "finished"


# ------------------------------------------------------------------------------------------------ without processes


@pytest.mark.parametrize("flags, message", [
    (["--config.train.distributed=everywhere"], "config.train.distributed='everywhere': expected one of"),
    (["--config.train.distributed=explicit"], "config.train.coordinator_address='': expected host:port"),
    (["--config.train.distributed=explicit", "--config.train.coordinator_address=localhost:http"],
     "coordinator_address='localhost:http': expected host:port"),
    (["--config.train.distributed=explicit", "--config.train.coordinator_address=127.0.0.1:1234",
      "--config.train.num_processes=2", "--config.train.process_id=2"],
     r"config.train.process_id=2: expected an integer in \[0, num_processes=2\)"),
    (["--config.train.distributed=auto", "--config.train.parallelism=pmap"],
     "config.train.parallelism='pmap': expected 'mesh' with distributed='auto'"),
])
def test_distributed_fields_are_validated(flags, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.parse_command_line(flags)


def test_explicit_config_without_initialize_is_refused_and_off_is_a_no_op():
  t = TrainConfig(distributed="explicit", coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1)
  with pytest.raises(distributed.DistributedError, match=r"asks for process 1 of 2, but JAX runs process 0 of 1: "
                                                         r"call mos_jax.training.distributed.initialize"):
    distributed.check_started(t)
  distributed.initialize(TrainConfig())  # off: nothing starts
  distributed.check_started(TrainConfig())
  assert not distributed.multi_process() and distributed.is_primary()


def test_pmap_refuses_several_processes(monkeypatch):
  monkeypatch.setattr(distributed, "multi_process", lambda: True)
  with pytest.raises(ValueError, match="parallelism='pmap' runs in one process, but JAX runs 1: use "
                                       "parallelism='mesh'"):
    Executor(TrainConfig(parallelism="pmap"), None, None, None, "ctr", None)
