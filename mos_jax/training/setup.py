"""Builds what a run needs from its config: the prepared dataset, the model, the optimizer and the initial state.

Shared by ``train.py`` and ``eval.py`` so both construct exactly the same state tree (which Orbax restores into).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

import jax
import optax
from flax import nnx

from mos_jax.config import Config
from mos_jax.models.config import ModelConfig
from mos_jax.training import optimizer as optimizer_lib
from mos_jax.training import step as step_lib


@dataclasses.dataclass
class Run:
  cfg: Config  # model fields filled from the dataset
  dataset: Any  # mos_jax.data.PreparedDataset
  graphdef: nnx.GraphDef
  state: step_lib.TrainState  # freshly initialised, on the default device
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  total_steps: int
  num_train: int  # training examples


def fill_model_config(cfg: Config, meta: dict[str, Any]) -> None:
  """Copies the task and the dataset's sizes into ``cfg.model`` (docs/interfaces.md)."""
  missing = [k for k in ("num_items", "num_cats", "num_sessions", "session_len") if k not in meta]
  if missing:
    raise ValueError(f"prepared dataset meta lacks {missing}; re-prepare the dataset")
  cfg.model.task = cfg.data.task
  cfg.model.num_items = int(meta["num_items"])
  cfg.model.num_cats = int(meta["num_cats"])
  cfg.model.num_sessions = int(meta["num_sessions"])
  cfg.model.session_len = int(meta["session_len"])


def total_steps(cfg: Config, num_train: int) -> int:
  """``num_steps`` when set, else ``ceil(num_epochs * N / batch_size)``."""
  t = cfg.train
  if t.batch_size < 1:
    raise ValueError(f"config.train.batch_size must be >= 1, got {t.batch_size}")
  if t.num_steps > 0:
    return t.num_steps
  if t.num_epochs <= 0:
    raise ValueError(f"set config.train.num_steps > 0 or config.train.num_epochs > 0 (got {t.num_steps}, "
                     f"{t.num_epochs})")
  return max(1, math.ceil(t.num_epochs * num_train / t.batch_size))


# XLA:CPU options for a program that runs once: compile time matters, its run time (milliseconds) does not.
RUN_ONCE_CPU_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def init_model_state(model_cfg: ModelConfig, seed: int,
                     tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, step_lib.TrainState]:
  """(graphdef, initial TrainState) of ``build_model(model_cfg, rngs=nnx.Rngs(seed))`` and ``tx``.

  Built inside one ``jax.jit``: eagerly, every initializer and optimizer-moment allocation is its own small XLA
  program (about 80 for the default MoS), each compiled once per machine on a cold compilation cache; traced
  together they are one program (and a warm start skips ~80 cache lookups). The values are the eager ones up to one
  float32 ulp where XLA fuses an initializer's scale into its sampling (tests/test_setup.py).
  """
  from mos_jax.models import build_model  # noqa: PLC0415

  def make() -> nnx.Module:
    return build_model(model_cfg, rngs=nnx.Rngs(seed))

  graphdef, _, _ = step_lib.split_model(nnx.eval_shape(make))
  lowered = jax.jit(lambda: step_lib.init_state(make(), tx)[1]).lower()
  # The program runs once, so on CPU it is compiled with LLVM's optimisations off: 4x less compile time (about 5 s of
  # a cold `python train.py`), the same values to one ulp (docs/performance.md).
  options = RUN_ONCE_CPU_OPTIONS if jax.default_backend() == "cpu" else None
  state = lowered.compile(compiler_options=options)()
  return graphdef, state


def build_run(cfg: Config) -> Run:
  """Prepares (or loads the cached) dataset, fills ``cfg.model`` in place and builds model, optimizer and state."""
  from mos_jax import data as data_lib  # noqa: PLC0415  (kept lazy: importing the data layer reads no files)

  if cfg.data.task not in ("ctr", "next"):
    raise ValueError(f"config.data.task: expected 'ctr' or 'next', got {cfg.data.task!r}")
  if cfg.data.data_dir:  # saved absolute, so eval.py and resumes find the same files from any working directory
    cfg.data.data_dir = str(pathlib.Path(cfg.data.data_dir).expanduser().resolve())
  dataset = data_lib.load_prepared(data_lib.prepare_dataset(cfg.data))
  fill_model_config(cfg, dataset.meta)
  num_train = int(dataset.meta["num_examples"]["train"][cfg.data.task])  # no need to build the split to count it
  steps = total_steps(cfg, num_train)
  tx = optimizer_lib.make_optimizer(cfg.train, steps)
  graphdef, state = init_model_state(cfg.model, cfg.seed, tx)
  return Run(cfg=cfg, dataset=dataset, graphdef=graphdef, state=state, tx=tx,
             schedule=optimizer_lib.learning_rate_schedule(cfg.train, steps), total_steps=steps, num_train=num_train)
