"""Config files, command-line overrides and their errors, and the JSON round trip used by checkpoints."""

import dataclasses
import json
import pathlib

import pytest

from mos_jax import config as config_lib
from mos_jax.config import Config, ConfigError, parse_command_line

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.py"))


def test_default_is_mos_on_synthetic_ctr():
  cfg = parse_command_line([])
  assert (cfg.model.name, cfg.model.backbone, cfg.data.dataset, cfg.data.task) == ("mos", "sasrec", "synthetic", "ctr")
  assert cfg.workdir == "runs/default"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_file_loads_and_round_trips(path):
  cfg = config_lib.load_config_file(path)
  assert isinstance(cfg, Config)
  back = config_lib.config_from_dict(json.loads(json.dumps(config_lib.to_dict(cfg))))
  assert back == cfg


def test_variants_differ_from_default_only_where_intended():
  default = config_lib.load_config_file(REPO / "configs" / "default.py")
  backbone = config_lib.load_config_file(REPO / "configs" / "backbone.py")
  gshard = config_lib.load_config_file(REPO / "configs" / "gshard.py")
  assert sorted(config_lib.diff(default, backbone)) == ["model.name: 'mos' vs 'backbone'",
                                                        "workdir: 'runs/default' vs 'runs/backbone'"]
  assert "model.name: 'mos' vs 'gshard'" in config_lib.diff(default, gshard)


def test_real_data_configs_point_at_shared_data_and_take_one_flag():
  for name, folder, task in [("taobao_ctr", "taobao-userbehavior-head", "ctr"),
                             ("taobao_next", "taobao-userbehavior-head", "next"),
                             ("movielens_ctr", "ml-100k", "ctr"), ("movielens_next", "ml-100k", "next")]:
    cfg = parse_command_line([f"--config=configs/{name}.py"])
    assert pathlib.Path(cfg.data.data_dir) == REPO.parent / "shared" / "data" / folder
    assert cfg.data.task == task
    cfg = parse_command_line([f"--config=configs/{name}.py", "--config.data.data_dir=/elsewhere"])
    assert cfg.data.data_dir == "/elsewhere"


def test_overrides_are_typed_by_the_dataclass_fields():
  cfg = parse_command_line([
      "--config=configs/default.py", "--config.train.batch_size=256", "--config.model.num_themes=8",
      "--config.train.learning_rate=3e-4", "--config.model.use_short_expert=false", "--config.model.router=prototype",
      "--config.data.synthetic.sessions_per_user=3,9", "--config.train.no_decay=bias,embedding",
      "--workdir=/tmp/x", "--config.seed=7"])
  assert cfg.train.batch_size == 256 and isinstance(cfg.train.batch_size, int)
  assert cfg.model.num_themes == 8
  assert cfg.train.learning_rate == pytest.approx(3e-4) and isinstance(cfg.train.learning_rate, float)
  assert cfg.model.use_short_expert is False
  assert cfg.model.router == "prototype"
  assert cfg.data.synthetic.sessions_per_user == (3, 9)
  assert cfg.train.no_decay == ("bias", "embedding")
  assert cfg.workdir == "/tmp/x" and cfg.seed == 7
  in_cat = "--config.data.negatives=in_category"  # hard_neg_frac is only allowed with it
  assert parse_command_line([in_cat, "--config.data.hard_neg_frac=0.3"]).data.hard_neg_frac == 0.3  # float | None
  assert parse_command_line(["--config.data.hard_neg_frac=none"]).data.hard_neg_frac is None


def test_later_overrides_win_and_config_file_applies_first():
  cfg = parse_command_line(["--config.train.batch_size=8", "--config=configs/backbone.py",
                            "--config.train.batch_size=16"])
  assert cfg.model.name == "backbone" and cfg.train.batch_size == 16


@pytest.mark.parametrize("argv, message", [
    (["--config.train.batchsize=3"], "unknown field config.train.batchsize"),
    (["--config.nope=3"], "unknown field config.nope"),
    (["--config.train.batch_size=abc"], "config.train.batch_size (int): expected an int, got 'abc'"),
    (["--config.train.batch_size=1.5"], "expected an int, got '1.5'"),
    (["--config.train.learning_rate=fast"], "config.train.learning_rate (float): expected a float"),
    (["--config.model.use_theme_experts=maybe"], "config.model.use_theme_experts (bool): expected a bool"),
    (["--config.data.synthetic.sessions_per_user=1,2,3"], "expected 2 comma-separated values"),
    (["--config.model=3"], "config.model is a group of fields"),
    (["--config.train.batch_size.x=3"], "config.train.batch_size is a value"),
    (["--config=configs/missing.py"], "no such config file"),
    (["--batch_size=3"], "unknown flag --batch_size"),
    (["positional"], "expected --config=FILE"),
])
def test_bad_flags_name_the_field_and_expected_type(argv, message):
  with pytest.raises(ConfigError) as e:
    parse_command_line(argv)
  assert message in str(e.value)
  assert argv[0] in str(e.value)  # the offending flag is quoted back


def test_config_file_without_get_config_is_refused(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("x = 1\n")
  with pytest.raises(ConfigError, match="defines no get_config"):
    config_lib.load_config_file(bad)
  bad.write_text("def get_config():\n  return {}\n")
  with pytest.raises(ConfigError, match="returned dict, expected mos_jax.config.Config"):
    config_lib.load_config_file(bad)
  bad.write_text("def get_config(:\n")
  with pytest.raises(ConfigError, match="could not import"):
    config_lib.load_config_file(bad)


def test_from_dict_rejects_unknown_and_mistyped_fields():
  d = config_lib.to_dict(Config())
  d["model"]["mystery"] = 1
  with pytest.raises(ConfigError, match=r"config.model: unknown fields \['mystery'\]"):
    config_lib.config_from_dict(d)
  d = config_lib.to_dict(Config())
  d["train"]["batch_size"] = "big"
  with pytest.raises(ConfigError, match="config.train.batch_size: expected int"):
    config_lib.config_from_dict(d)


def test_diff_lists_nested_differences():
  a, b = Config(), Config()
  b = dataclasses.replace(b, model=dataclasses.replace(b.model, num_themes=8))
  assert config_lib.diff(a.model, b.model, prefix="model.") == ["model.num_themes: 4 vs 8"]


# ---------------------------------------------------------------------------------------------------------------------
# Values are validated before any work: train.py exits 2 with one line naming the flag, the field and what is allowed.


@pytest.mark.parametrize("flag, message", [
    ("--config.model.backbone=bst", "config.model.backbone='bst': expected one of ('din', 'gru4rec', 'mamba4rec'"),
    ("--config.data.neg_ratio=-1", "config.data.neg_ratio=-1: expected an integer >= 0"),
    ("--config.data.negatives=hard", "config.data.negatives='hard': expected auto or one of ('uniform'"),
    ("--config.model.num_themes=0", "config.model.num_themes=0: expected an integer >= 1"),
    ("--config.model.name=moe", "config.model.name='moe': expected one of ('mos', 'backbone', 'gshard'"),
    ("--config.model.dropout=1.5", "config.model.dropout=1.5: expected in [0, 1)"),
    ("--config.data.task=foo", "config.data.task='foo': expected one of ('ctr', 'next')"),
    ("--config.train.decay=step", "config.train.decay='step': expected one of ('cosine', 'linear', 'constant')"),
    ("--config.train.parallelism=dp", "config.train.parallelism='dp': expected one of ('mesh', 'pmap')"),
    ("--config.train.batch_size=0", "config.train.batch_size=0: expected an integer >= 1"),
    ("--config.train.early_stop_mode=up", "config.train.early_stop_mode='up': expected one of ('max', 'min', 'auto')"),
    ("--config.train.eval_split=test", "config.train.eval_split='test': expected one of ('train', 'valid') (the "),
])
def test_train_main_rejects_bad_values_before_any_work(flag, message, capsys, tmp_path):
  import train  # noqa: PLC0415  (the script's main; returns before preparing data or building a model)

  assert train.main([flag, f"--workdir={tmp_path / 'run'}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {flag}: {message}"), err
  assert err.count("\n") == 1 and "Traceback" not in err
  assert not (tmp_path / "run").exists()  # nothing was written: the check ran first


def test_target_aware_hosts_are_refused_in_next_item_mode_before_any_work():
  with pytest.raises(ConfigError, match="config.model.backbone='din': expected a target-free encoder in task='next'"):
    parse_command_line(["--config.data.task=next", "--config.model.backbone=din"])
  parse_command_line(["--config.data.task=next", "--config.model.backbone=mamba4rec"])  # target-free: fine


def test_chunk_len_session_mode_and_ctr_negatives_are_checked_before_any_work():
  with pytest.raises(ConfigError, match=r"^--config.data.chunk_len=0: config.data.chunk_len=0: expected an integer "
                                        r">= 1 with session_mode='chunk'$"):
    parse_command_line(["--config.data.session_mode=chunk", "--config.data.chunk_len=0"])
  parse_command_line(["--config.data.chunk_len=0"])  # unused in gap mode: not an error
  with pytest.raises(ConfigError, match=r"^config.data.session_mode='time': expected one of \('gap', 'chunk'\)$"):
    config_lib.validate(dataclasses.replace(Config(), data=dataclasses.replace(Config().data, session_mode="time")))
  # CTR without negatives: every label is 1, AUC is undefined and no checkpoint is ever the best.
  with pytest.raises(ConfigError, match=r"^--config.data.neg_ratio=0: config.data.neg_ratio=0: expected an integer "
                                        r">= 1 with task='ctr' \(0 only for task='next'\)$"):
    parse_command_line(["--config.data.neg_ratio=0"])
  parse_command_line(["--config.data.task=next", "--config.data.neg_ratio=0"])  # next-item: no negatives needed


def test_moe_fields_are_checked_for_moe_models_and_saved_configs_are_validated():
  with pytest.raises(ConfigError, match=r"--config.model.moe.top_k=9: config.model.moe.top_k=9: expected an integer"):
    parse_command_line(["--config.model.name=gshard", "--config.model.moe.top_k=9"])
  parse_command_line(["--config.model.moe.top_k=9"])  # unused by MoS: not an error
  # A value set in a config file (no flag) is named by its field.
  cfg = Config()
  cfg.model.router = "mlp"
  with pytest.raises(ConfigError, match=r"^config.model.router='mlp': expected one of \('linear', 'prototype'\)$"):
    config_lib.validate(cfg)
  # Saved configs (checkpoints, eval-time loading) go through the same check.
  d = config_lib.to_dict(Config())
  d["model"]["fusion"] = "concat"
  with pytest.raises(ConfigError, match="config.model.fusion='concat'"):
    config_lib.config_from_dict(d)
  for path in CONFIGS:  # every shipped config is valid
    config_lib.validate(config_lib.load_config_file(path))


def test_train_script_exits_2_with_one_line(tmp_path):
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--config.model.backbone=bst",
                         f"--workdir={tmp_path}/run"], capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --config.model.backbone=bst: config.model.backbone='bst': expected one of ('din', 'gru4rec', "
      "'mamba4rec', 'sasrec', 'sdim', 'transact', 'twin')"]


def test_evaluation_split_options_are_checked_before_any_work():
  with pytest.raises(ConfigError, match=r"^--config.data.eval_targets_per_user=0: config.data.eval_targets_per_user=0: "
                                        r"expected an integer >= 1$"):
    parse_command_line(["--config.data.eval_targets_per_user=0"])
  assert parse_command_line(["--config.data.eval_targets_per_user=10"]).data.eval_targets_per_user == 10
  with pytest.raises(ConfigError, match=r"data.eval_targets_per_user=5: expected 1 with split_mode='time_cutoff'"):
    parse_command_line(["--config.data.split_mode=time_cutoff", "--config.data.eval_targets_per_user=5"])
  cfg = parse_command_line(["--config.data.split_mode=time_cutoff", "--config.data.eval_fraction=0.05"])
  assert (cfg.data.split_mode, cfg.data.eval_fraction) == ("time_cutoff", 0.05)
  assert Config().data.eval_targets_per_user == 1 and Config().data.split_mode == "per_user"  # today's protocol
