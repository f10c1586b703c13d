"""Checkpoints through the real loop: exact kill-and-resume, refusal of another model's checkpoint, clear errors for
corrupt or missing checkpoint directories, and eval.py on a finished run."""

import json
import os
import pathlib
import shutil
import signal
import sys

import jax
import numpy as np
import pytest

from mos_jax import config as config_lib
from mos_jax.training import checkpoint as ckpt_lib
from mos_jax.training.loop import train

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import eval as eval_script  # noqa: E402  (the repo-root eval.py)

STEPS = 6


def tiny_config(workdir: pathlib.Path, cache: pathlib.Path, **model) -> config_lib.Config:
  cfg = config_lib.Config(workdir=str(workdir), seed=0)
  cfg.data.cache_dir = str(cache)
  cfg.data.synthetic.num_users = 40
  cfg.data.num_sessions, cfg.data.session_len = 4, 4
  m = cfg.model
  m.embed_dim = m.hidden_dim = 8
  m.num_themes, m.dropout = 2, 0.1  # dropout on: the RNG stream state must come back too
  for k, v in model.items():
    setattr(m, k, v)
  t = cfg.train
  t.batch_size, t.eval_batch_size, t.num_steps, t.warmup_steps = 8, 64, STEPS, 2
  t.eval_every, t.checkpoint_every, t.log_every, t.keep, t.progress_bar = 3, 2, 1, 2, False
  return cfg


def params_of(workdir: pathlib.Path, step: int) -> dict:
  """Parameters of a saved step, read back as plain numpy (independent of the loop's own restore path)."""
  import orbax.checkpoint as ocp  # noqa: PLC0415

  with ocp.CheckpointManager(workdir / "checkpoints" / "latest") as m:
    tree = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  return jax.tree.map(np.asarray, tree["params"])


def train_records(workdir: pathlib.Path) -> list[dict]:
  out = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    r.pop("examples_per_s", None)  # wall-clock, differs between runs
    out.append(r)
  return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("prepared")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = train(tiny_config(workdir, cache))
  assert result.status == "finished" and result.step == STEPS
  return workdir


def assert_same_params(a: dict, b: dict) -> None:
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)  # exactly, not approximately


def test_run_layout_and_logs(uninterrupted):
  ck = uninterrupted / "checkpoints"
  assert sorted(int(p.name) for p in (ck / "latest").iterdir() if p.name.isdigit()) == [4, 6]  # keep = 2
  assert len([p for p in (ck / "best").iterdir() if p.name.isdigit()]) == 1
  records = train_records(uninterrupted)
  assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, STEPS + 1))
  assert [r["step"] for r in records if r["split"] == "valid"] == [3, 6]
  first = next(r for r in records if r["split"] == "train")
  assert {"loss", "task_loss", "aux_loss", "grad_norm", "lr", "dropped_fraction"} <= set(first)  # routing too
  assert any(p.name.startswith("events.out.tfevents") for p in (uninterrupted / "tensorboard").iterdir())
  saved = json.loads((uninterrupted / "config.json").read_text())
  assert saved["model"]["num_items"] > 0  # filled from the dataset


def test_sigterm_saves_and_rerun_continues_exactly(uninterrupted, cache, tmp_path):
  cfg = tiny_config(tmp_path, cache)

  def kill_at_3(step):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  first = train(cfg, on_step=kill_at_3)
  assert (first.status, first.step, first.stop_signal) == ("interrupted", 3, signal.SIGTERM)
  assert ckpt_lib.Checkpoints(tmp_path).latest_step() == 3
  second = train(tiny_config(tmp_path, cache))  # "re-running the same command"
  assert (second.status, second.step) == ("finished", STEPS)
  assert_same_params(params_of(tmp_path, STEPS), params_of(uninterrupted, STEPS))
  assert train_records(tmp_path) == train_records(uninterrupted)  # logs read as if never stopped
  assert train(tiny_config(tmp_path, cache)).status == "already_done"


def test_crash_resumes_from_last_async_checkpoint_exactly(uninterrupted, cache, tmp_path):
  def crash_at_5(step):
    if step == 5:
      raise RuntimeError("simulated crash")

  with pytest.raises(RuntimeError, match="simulated crash"):
    train(tiny_config(tmp_path, cache), on_step=crash_at_5)
  assert ckpt_lib.Checkpoints(tmp_path).latest_step() == 4  # written asynchronously while step 5 ran
  assert train(tiny_config(tmp_path, cache)).step == STEPS
  assert_same_params(params_of(tmp_path, STEPS), params_of(uninterrupted, STEPS))


def test_checkpoint_of_another_model_config_is_refused(uninterrupted, cache, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    train(tiny_config(workdir, cache, num_themes=4))
  msg = str(e.value)
  assert "was written by a different model config" in msg
  assert "model.num_themes: 2 vs 4" in msg and "fresh --workdir" in msg


def test_resume_with_another_batch_size_is_refused(uninterrupted, cache, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  cfg = tiny_config(workdir, cache)
  cfg.train.batch_size = 4
  with pytest.raises(ckpt_lib.CheckpointError, match="another schedule .*\n  train.batch_size: 8 -> 4\n"):
    train(cfg)
  # Allowing schedule changes does not make the saved data position meaningful for another batch size.
  cfg.train.allow_schedule_change = True
  with pytest.raises(ckpt_lib.CheckpointError, match="cannot resume .*batch_size=8, this iterator has 4"):
    train(cfg)


def test_resume_with_another_schedule_is_refused_unless_allowed(uninterrupted, cache, tmp_path):
  from mos_jax.training.optimizer import learning_rate_schedule  # noqa: PLC0415

  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  cfg = tiny_config(workdir, cache)
  cfg.train.learning_rate, cfg.train.num_steps, cfg.train.decay = 2e-3, STEPS + 2, "linear"
  cfg.train.num_epochs = 3.0  # ignored while num_steps > 0 in both runs: not a schedule change
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    train(cfg)
  msg = str(e.value)
  assert f"latest/{STEPS} was trained with another schedule (checkpoint -> now):" in msg
  changes = [line.strip() for line in msg.splitlines() if line.startswith("  train.")]
  assert changes == [f"train.num_steps: {STEPS} -> {STEPS + 2}", "train.learning_rate: 0.001 -> 0.002",
                     "train.decay: 'cosine' -> 'linear'"]
  assert "--config.train.allow_schedule_change=true" in msg
  assert ckpt_lib.Checkpoints(workdir).latest_step() == STEPS  # nothing was trained or written
  cfg.train.allow_schedule_change = True
  result = train(cfg)
  assert (result.status, result.step) == ("finished", STEPS + 2)
  lr = {r["step"]: r["lr"] for r in train_records(workdir) if r["split"] == "train"}
  new = learning_rate_schedule(cfg.train, STEPS + 2)
  assert lr[STEPS + 1] == pytest.approx(float(new(STEPS)), rel=1e-6)  # the new schedule from the restored step
  assert lr[STEPS + 2] == pytest.approx(float(new(STEPS + 1)), rel=1e-6)
  assert ckpt_lib.schedule_changes(cfg.train, cfg.train) == []


def test_corrupt_checkpoint_gets_a_clear_error(uninterrupted, cache, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  for f in (workdir / "checkpoints" / "latest" / str(STEPS) / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  with pytest.raises(ckpt_lib.CheckpointError, match=rf"checkpoint .*latest/{STEPS} is unreadable"):
    train(tiny_config(workdir, cache))
  shutil.rmtree(workdir / "checkpoints" / "best" / str(STEPS), ignore_errors=True)
  for d in (workdir / "checkpoints" / "best").iterdir():
    if d.is_dir():
      shutil.rmtree(d / "config")
  assert eval_script.main([f"--workdir={workdir}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: checkpoint ") and "unreadable" in err and "Traceback" not in err


def test_missing_checkpoint_dirs_get_a_clear_error(tmp_path, capsys):
  assert eval_script.main([f"--workdir={tmp_path / 'nope'}"]) == 2
  assert "no such directory" in capsys.readouterr().err
  assert eval_script.main([f"--workdir={tmp_path}"]) == 2
  assert "no checkpoints" in capsys.readouterr().err
  (tmp_path / "checkpoints").write_text("not a directory")
  with pytest.raises(ckpt_lib.CheckpointError, match="is not a directory"):
    ckpt_lib.Checkpoints(tmp_path)


def test_eval_script_restores_best_and_writes_json(uninterrupted, capsys):
  assert eval_script.main([f"--workdir={uninterrupted}", "--split=test"]) == 0
  out = capsys.readouterr().out
  assert "auc" in out and "gauc" in out and "logloss" in out
  report = json.loads((uninterrupted / "eval_test.json").read_text())
  assert report["checkpoint"] == "best" and report["split"] == "test"
  assert 0.0 <= report["metrics"]["auc"] <= 1.0 and report["metrics"]["num_examples"] > 0
  assert not list(uninterrupted.glob("*.tmp"))
  # On the validation split eval.py reproduces exactly what the loop measured at the best step.
  assert eval_script.main([f"--workdir={uninterrupted}", "--split=valid"]) == 0
  valid = json.loads((uninterrupted / "eval_valid.json").read_text())
  at_best = [r for r in train_records(uninterrupted) if r["split"] == "valid" and r["step"] == valid["step"]]
  assert len(at_best) == 1
  for k in ("logloss", "auc", "gauc"):
    assert valid["metrics"][k] == pytest.approx(at_best[0][k], rel=1e-6), k  # 1 vs 2 devices: float32 sums


def test_array_record_format_trains_the_same_run(uninterrupted, cache, tmp_path):
  """data.format='array_record' reads the train rows from the on-disk copy: the same losses and parameters (CTR, with
  per-epoch negatives); a resume may switch the format, since the batches are the same."""
  pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")
  cfg = tiny_config(tmp_path, cache)
  cfg.data.format = "array_record"
  assert train(cfg).status == "finished"
  assert train_records(tmp_path) == train_records(uninterrupted)
  assert_same_params(params_of(tmp_path, STEPS), params_of(uninterrupted, STEPS))
  assert train(tiny_config(tmp_path, cache)).status == "already_done"  # numpy again: accepted as the same run
