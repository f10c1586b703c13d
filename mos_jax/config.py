"""The top-level run configuration and its command-line overrides (ml_collections style).

A config file is a Python file with ``get_config() -> Config``. Any field can then be overridden from the command line
by its dotted path, typed by the dataclass field's annotation::

  python train.py --config=configs/gshard.py --config.train.batch_size=256 --config.model.num_themes=8

Unknown fields and values that do not parse as the field's type are rejected with a message naming the flag, the field
and the expected type; ``validate`` then checks the values of the whole config (choices and ranges) before any work.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import types
import typing
from typing import Any, Sequence

from mos_jax.data.config import DataConfig
from mos_jax.models.config import ModelConfig
from mos_jax.training.config import TrainConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.py"


@dataclasses.dataclass
class Config:
  """Everything one run needs; saved with every checkpoint."""

  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  workdir: str = "runs/default"
  seed: int = 0  # parameter init and dropout; data order comes from data.seed


class ConfigError(ValueError):
  """A config file, flag or saved config that cannot be used, with the reason."""


# ---------------------------------------------------------------------------------------------------------------------
# Loading config files.


def load_config_file(path: str | pathlib.Path) -> Config:
  """Imports ``path`` (absolute, relative to the working directory, or to the repo root) and calls ``get_config()``."""
  p = pathlib.Path(path).expanduser()
  if not p.is_file() and not p.is_absolute() and (REPO_ROOT / p).is_file():
    p = REPO_ROOT / p
  if not p.is_file():
    raise ConfigError(f"--config={path}: no such config file")
  spec = importlib.util.spec_from_file_location(f"_mos_jax_config_{p.stem}", p)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # a broken config file: say which one
    raise ConfigError(f"--config={path}: could not import {p}: {type(e).__name__}: {e}") from e
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"--config={path}: {p} defines no get_config() function")
  cfg = module.get_config()
  if not isinstance(cfg, Config):
    raise ConfigError(f"--config={path}: get_config() returned {type(cfg).__name__}, expected mos_jax.config.Config")
  return cfg


# ---------------------------------------------------------------------------------------------------------------------
# Typed values.


def _type_name(tp: Any) -> str:
  return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")


def parse_value(text: str, tp: Any, *, where: str) -> Any:
  """Parses command-line ``text`` as a value of annotation ``tp``; ``where`` names the field in errors."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):  # Optional[X] / X | None
    if type(None) in args and text.strip().lower() in ("none", "null"):
      return None
    (inner,) = [a for a in args if a is not type(None)]
    return parse_value(text, inner, where=where)
  if origin is tuple:
    parts = [p.strip() for p in text.strip().strip("()[]").split(",") if p.strip()]
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(parse_value(p, args[0], where=where) for p in parts)
    if len(parts) != len(args):
      raise ConfigError(f"{where}: expected {len(args)} comma-separated values ({_type_name(tp)}), got {text!r}")
    return tuple(parse_value(p, a, where=where) for p, a in zip(parts, args))
  if tp is bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "y"):
      return True
    if low in ("false", "0", "no", "n"):
      return False
    raise ConfigError(f"{where}: expected a bool (true/false), got {text!r}")
  if tp is int:
    try:
      return int(text)
    except ValueError:
      raise ConfigError(f"{where}: expected an int, got {text!r}") from None
  if tp is float:
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f"{where}: expected a float, got {text!r}") from None
  if tp is str:
    return text
  raise ConfigError(f"{where}: fields of type {_type_name(tp)} cannot be set from the command line")


def _field_types(obj: Any) -> dict[str, Any]:
  return typing.get_type_hints(type(obj))


def set_field(cfg: Config, dotted: str, text: str, *, flag: str | None = None) -> None:
  """Sets ``cfg.<dotted>`` from its command-line text, in place."""
  flag = flag or f"--config.{dotted}={text}"
  names = dotted.split(".")
  obj = cfg
  for depth, name in enumerate(names):
    path = ".".join(names[: depth + 1])
    if not dataclasses.is_dataclass(obj):
      raise ConfigError(f"{flag}: config.{'.'.join(names[:depth])} is a value, it has no field {name!r}")
    hints = _field_types(obj)
    if name not in hints or name not in {f.name for f in dataclasses.fields(obj)}:
      known = ", ".join(f.name for f in dataclasses.fields(obj))
      raise ConfigError(f"{flag}: unknown field config.{path} (known fields of {type(obj).__name__}: {known})")
    if depth == len(names) - 1:
      if dataclasses.is_dataclass(getattr(obj, name)):
        raise ConfigError(f"{flag}: config.{path} is a group of fields; set one of them, e.g. --config.{path}.<field>=...")
      setattr(obj, name, parse_value(text, hints[name], where=f"{flag}: config.{path} ({_type_name(hints[name])})"))
      return
    obj = getattr(obj, name)


# ---------------------------------------------------------------------------------------------------------------------
# Validation of values (before any data preparation or compilation).

DATA_TASKS = ("ctr", "next")
EARLY_STOP_MODES = ("max", "min", "auto")


def _renamed(e: Exception, old: str, new: str) -> ConfigError:
  return ConfigError(str(e).replace(old, new, 1))


def _validate_train(t: TrainConfig) -> None:
  from mos_jax.training.optimizer import DECAYS  # noqa: PLC0415
  from mos_jax.training.parallel import PARALLELISMS  # noqa: PLC0415

  def bad(field, expected):
    raise ConfigError(f"config.train.{field}={getattr(t, field)!r}: expected {expected}")

  from mos_jax.training.distributed import DISTRIBUTED_MODES, check_explicit  # noqa: PLC0415
  from mos_jax.training.losses import NEXT_LOSSES, PROPOSALS  # noqa: PLC0415
  from mos_jax.training.sharding import EMBEDDING_SHARDINGS  # noqa: PLC0415

  choices = {"decay": DECAYS, "parallelism": PARALLELISMS, "early_stop_mode": EARLY_STOP_MODES,
             "next_loss": NEXT_LOSSES, "sampled_proposal": PROPOSALS, "embedding_sharding": EMBEDDING_SHARDINGS,
             "distributed": DISTRIBUTED_MODES}
  for field, allowed in choices.items():
    if getattr(t, field) not in allowed:
      bad(field, f"one of {allowed}")
  if t.eval_split not in ("train", "valid"):  # early stopping picks the best checkpoint on this split
    bad("eval_split", "one of ('train', 'valid') (the validation split selects the best checkpoint; selecting on "
                      "test would leak it into the reported test metrics)")
  for field in ("batch_size", "eval_batch_size", "mesh_expert", "mesh_model", "keep", "log_every", "num_sampled"):
    if getattr(t, field) < 1:
      bad(field, "an integer >= 1")
  for field in ("num_steps", "warmup_steps", "eval_every", "patience", "checkpoint_every",  # 0 = only at the end
                "eval_item_block"):  # 0 = unblocked
    if getattr(t, field) < 0:
      bad(field, "an integer >= 0")
  if t.mesh_data != -1 and t.mesh_data < 1:
    bad("mesh_data", "-1 (all devices) or an integer >= 1")
  if t.distributed == "explicit":
    problem = check_explicit(t)
    if problem:
      bad(*problem)
  if t.distributed != "off" and t.parallelism != "mesh":
    bad("parallelism", f"'mesh' with distributed={t.distributed!r} (pmap runs in one process)")
  if t.embedding_sharding != "none" and t.parallelism != "mesh":
    bad("embedding_sharding", "'none' with parallelism='pmap' (pmap replicates every parameter)")
  if t.num_steps == 0 and not t.num_epochs > 0:
    bad("num_epochs", "> 0 (or set num_steps > 0)")
  if not t.learning_rate > 0:
    bad("learning_rate", "> 0")
  if not 0.0 <= t.end_lr_ratio <= 1.0:
    bad("end_lr_ratio", "in [0, 1]")
  for field in ("b1", "b2"):
    if not 0.0 <= getattr(t, field) < 1.0:
      bad(field, "in [0, 1)")
  if not t.eps > 0:
    bad("eps", "> 0")
  if not t.sampled_alpha >= 0:
    bad("sampled_alpha", ">= 0 (0 = uniform)")
  for field in ("grad_clip_norm", "weight_decay"):
    if not getattr(t, field) >= 0:
      bad(field, ">= 0 (grad_clip_norm = 0 disables clipping)")


def validate(cfg: Config) -> Config:
  """Checks every value of ``cfg`` that can be checked before the dataset is prepared; returns ``cfg``.

  Raises ConfigError naming the field (``config.model.backbone='din': expected one of ...``). Model sizes that
  training fills from the prepared dataset (num_items, num_cats, num_sessions, session_len, task) are checked only when
  already filled (num_items > 0, as in a saved config). The data fields are checked by ``DataConfig.validate`` when
  it exists; ``data.task`` is checked here because the model depends on it.
  """
  data_check = getattr(cfg.data, "validate", None)
  if callable(data_check):
    try:
      data_check()
    except ConfigError:
      raise
    except (ValueError, TypeError) as e:
      raise _renamed(e, "DataConfig.", "config.data.") from None
  if cfg.data.task not in DATA_TASKS:
    raise ConfigError(f"config.data.task={cfg.data.task!r}: expected one of {DATA_TASKS}")
  from mos_jax.models import encoder_names  # noqa: PLC0415  (the encoder registry)

  if cfg.model.backbone not in encoder_names():
    raise ConfigError(f"config.model.backbone={cfg.model.backbone!r}: expected one of {encoder_names()}")
  model = dataclasses.replace(cfg.model, task=cfg.data.task, moe=dataclasses.replace(cfg.model.moe))
  if model.num_items == 0:  # not filled yet: any size >= 1 stands in for it
    model.num_items = 1
  try:
    model.validate()
  except ValueError as e:
    raise _renamed(e, "ModelConfig.", "config.model.") from None
  _validate_train(cfg.train)
  if not cfg.workdir:
    raise ConfigError("config.workdir='': expected a directory path")
  return cfg


# ---------------------------------------------------------------------------------------------------------------------
# Command lines.


def parse_command_line(argv: Sequence[str], *, default_config: str | pathlib.Path = DEFAULT_CONFIG) -> Config:
  """``--config=FILE``, then ``--config.a.b=VALUE`` overrides in order; ``--workdir=DIR`` is ``--config.workdir``."""
  path: str | pathlib.Path = default_config
  overrides: list[tuple[str, str, str]] = []
  for arg in argv:
    if not arg.startswith("--") or "=" not in arg:
      raise ConfigError(f"{arg}: expected --config=FILE, --config.FIELD=VALUE or --workdir=DIR")
    key, value = arg[2:].split("=", 1)
    if key == "config":
      path = value
    elif key.startswith("config."):
      overrides.append((key[len("config."):], value, arg))
    elif key == "workdir":
      overrides.append(("workdir", value, arg))
    else:
      raise ConfigError(f"{arg}: unknown flag --{key} (expected --config=FILE, --config.FIELD=VALUE or --workdir=DIR)")
  cfg = load_config_file(path)
  for dotted, value, arg in overrides:
    set_field(cfg, dotted, value, flag=arg)
  try:
    return validate(cfg)
  except ConfigError as e:  # quote back the flag that set the offending field, when one did
    msg = str(e)
    flags = [arg for dotted, _, arg in overrides if msg.startswith(f"config.{dotted}=")]
    raise ConfigError(f"{flags[-1]}: {msg}" if flags else msg) from None


# ---------------------------------------------------------------------------------------------------------------------
# Dict round trip (checkpoints store the config as JSON).


def to_dict(cfg: Any) -> dict[str, Any]:
  """A JSON-friendly nested dict (tuples become lists)."""
  return dataclasses.asdict(cfg)


def _from_value(value: Any, tp: Any, where: str) -> Any:
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    if value is None:
      return None
    (tp,) = [a for a in args if a is not type(None)]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
  if dataclasses.is_dataclass(tp):
    return from_dict(tp, value, where=where)
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{where}: expected a list for {_type_name(tp)}, got {value!r}")
    inner = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
    return tuple(_from_value(v, t, where) for v, t in zip(value, inner))
  if tp is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if tp in (bool, int, float, str) and not isinstance(value, tp):
    raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
  return value


def from_dict(cls: type, data: dict[str, Any], *, where: str = "config") -> Any:
  """Rebuilds dataclass ``cls`` from ``to_dict`` output; unknown keys are an error, missing keys keep defaults."""
  if not isinstance(data, dict):
    raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - names)
  if unknown:
    raise ConfigError(f"{where}: unknown fields {unknown} for {cls.__name__}")
  return cls(**{k: _from_value(v, hints[k], f"{where}.{k}") for k, v in data.items()})


def config_from_dict(data: dict[str, Any]) -> Config:
  """A saved config (checkpoints, eval-time loading), validated like a command line."""
  return validate(from_dict(Config, data))


def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
  """Human-readable differences between two configs (or sub-configs) of the same type."""
  out = []
  for f in dataclasses.fields(a):
    va, vb = getattr(a, f.name), getattr(b, f.name)
    if dataclasses.is_dataclass(va):
      out += diff(va, vb, f"{prefix}{f.name}.")
    elif va != vb:
      out.append(f"{prefix}{f.name}: {va!r} vs {vb!r}")
  return out
