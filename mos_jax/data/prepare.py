"""Command line: prepare a dataset into a folder (see docs/data.md).

    python -m mos_jax.data.prepare --dataset taobao --data-dir ../shared/data/taobao-userbehavior-head --out /tmp/tb
    python -m mos_jax.data.prepare --dataset synthetic --out /tmp/syn
    python -m mos_jax.data.prepare --dataset synthetic --out /tmp/syn --format array_record   # + ArrayRecord copy
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from mos_jax.data.build import prepare_dataset
from mos_jax.data.config import DataConfig, SyntheticConfig
from mos_jax.data.readers import DataError


def _bool(text: str) -> bool:
  if text.lower() in ("1", "true", "yes"):
    return True
  if text.lower() in ("0", "false", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=None, help="output folder (default: cache_dir/<dataset>-<fingerprint>)")
  for prefix, cls in (("", DataConfig), ("syn-", SyntheticConfig)):
    for f in dataclasses.fields(cls):
      if f.name == "synthetic" or (cls is DataConfig and f.name in ("seed", "task")):
        continue  # neither changes the prepared folder (train negatives are drawn at iteration time)
      default = f.default
      if isinstance(default, tuple):
        kind = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731  e.g. --syn-session-len 2,8
      elif isinstance(default, bool):
        kind = _bool
      else:
        kind = float if default is None else type(default)  # the only None default is hard_neg_frac
      p.add_argument(f"--{prefix}{f.name.replace('_', '-')}", dest=f"{prefix.replace('-', '_')}{f.name}",
                     type=kind, default=default, help=f"default: {default}")
  return p


def main(argv: list[str] | None = None) -> int:
  args = vars(_parser().parse_args(argv))
  out = args.pop("out")
  syn = SyntheticConfig(**{k[4:]: args.pop(k) for k in list(args) if k.startswith("syn_")})
  cfg = DataConfig(**args, synthetic=syn)
  try:
    path = prepare_dataset(cfg, out)
  except (DataError, ValueError, ImportError) as e:  # ImportError: --format=array_record without tfds
    print(f"error: {e}", file=sys.stderr)
    return 2
  stats = json.loads((path / "stats.json").read_text())
  print(f"{path}: {stats['users']} users, {stats['items']} items, {stats['cats']} categories; examples (ctr) "
        f"train {stats['train_examples_ctr']}, valid {stats['valid_examples_ctr']}, test {stats['test_examples_ctr']}")
  if cfg.format == "array_record":
    from mos_jax.data import records  # noqa: PLC0415
    print(f"{records.record_dir(path)}: ArrayRecord copy (tfds splits <split>_<task>)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
