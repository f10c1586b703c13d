"""benchmarks/compile_options.py's argument checks (the measurement itself compiles real train steps: a benchmark)."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import compile_options  # noqa: E402


def test_options_default_first_and_bad_json_named(capsys):
  a = compile_options.parse_args(["--options", '{"O1": {"xla_backend_optimization_level": 1}}'])
  assert a.options == {"default": {}, "O1": {"xla_backend_optimization_level": 1}}
  assert list(compile_options.parse_args([]).options)[0] == "default"
  with pytest.raises(SystemExit):
    compile_options.parse_args(["--options", "{O1: 1}"])
  assert "--options: expected a JSON object" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    compile_options.parse_args(["--options", '{"O1": 1}'])
  assert "expected a JSON object {name: {option: value}}" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    compile_options.parse_args(["--rounds", "0"])
