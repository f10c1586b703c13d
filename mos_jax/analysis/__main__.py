"""Command line of the analyses (docs/analysis.md)::

    python -m mos_jax.analysis hopping --dataset NAME --data-dir DIR [--config FILE] [--config.data.X=V ...] --out DIR
    python -m mos_jax.analysis routing --workdir W [--split test] [--checkpoint best|latest] --out DIR
    python -m mos_jax.analysis curves --workdir W [W2 ...] --out DIR
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m mos_jax.analysis", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  h = sub.add_parser("hopping", help="session-hopping statistics of a dataset",
                     description="Any other --config.data.FIELD=VALUE sets that DataConfig field (e.g. session_gap).")
  h.add_argument("--dataset", default=None, help="synthetic | csv | a reader's name (taobao, taobao_sslrec, foursquare, "
                 "ml-100k, ml-latest-small, amazon-rechorus; default: the config's, synthetic)")
  h.add_argument("--data-dir", default=None, help="raw data folder or file (unused for synthetic)")
  h.add_argument("--config", default=None, help="a config file whose data section is the starting point "
                 "(default: DataConfig defaults)")
  h.add_argument("--out", required=True)
  h.add_argument("--users", type=int, default=6, help="users in the timeline figure")
  h.add_argument("--seed", type=int, default=0, help="picks the timeline users")
  r = sub.add_parser("routing", help="routing analysis of a trained MoS run")
  r.add_argument("--workdir", required=True)
  r.add_argument("--split", default="test", choices=("train", "valid", "test"))
  r.add_argument("--checkpoint", default="best", choices=("best", "latest"))
  r.add_argument("--out", required=True)
  r.add_argument("--users", type=int, default=6, help="users in the timeline figure")
  r.add_argument("--seed", type=int, default=0, help="picks the timeline users")
  r.add_argument("--batch_size", type=int, default=0, help="0 = the run's eval_batch_size")
  c = sub.add_parser("curves", help="train / valid curves of one or more runs")
  c.add_argument("--workdir", nargs="+", required=True)
  c.add_argument("--out", required=True)
  return p


def _data_config(args: argparse.Namespace, overrides: list[str]):
  from mos_jax import config as config_lib  # noqa: PLC0415

  cfg = config_lib.load_config_file(args.config) if args.config else config_lib.Config()
  if args.dataset is not None:
    cfg.data.dataset = args.dataset
  if args.data_dir is not None:
    cfg.data.data_dir = args.data_dir
  for arg in overrides:
    if not arg.startswith("--config.data.") or "=" not in arg:
      raise config_lib.ConfigError(f"{arg}: hopping accepts only --config.data.FIELD=VALUE overrides")
    key, value = arg[2:].split("=", 1)
    config_lib.set_field(cfg, key[len("config."):], value, flag=arg)
  return cfg.data


def main(argv: list[str] | None = None) -> int:
  p = _parser()
  args, extra = p.parse_known_args(argv)
  if extra and args.command != "hopping":
    p.error(f"unrecognized arguments: {' '.join(extra)}")
  from mos_jax import config as config_lib  # noqa: PLC0415
  from mos_jax.analysis.output import AnalysisError  # noqa: PLC0415
  from mos_jax.data import DataError  # noqa: PLC0415

  errors: tuple[type[Exception], ...] = (AnalysisError, config_lib.ConfigError, DataError)
  try:
    if args.command == "hopping":
      from mos_jax.analysis.hopping import analyze_hopping  # noqa: PLC0415

      res = analyze_hopping(_data_config(args, extra), args.out, timeline_users=args.users, seed=args.seed)
      print(f"{res['dataset']}: {res['users']} users, {res['sessions']} sessions "
            f"({res['sessions_per_user'].get('mean', 0):.1f} per user)")
      for k, v in res["by"].items():
        print(f"  by {k}: hop rate {v['hop_rate']}, hop-back rate {v['hop_back_rate']}, mean return distance "
              f"{v['return_distance_sessions'].get('mean')} sessions, median "
              f"{v['return_distance_hours'].get('median')} h")
    elif args.command == "routing":
      from mos_jax.runtime import start_jax  # noqa: PLC0415

      start_jax()
      from mos_jax.analysis.routing import analyze_routing  # noqa: PLC0415
      from mos_jax.training.checkpoint import CheckpointError  # noqa: PLC0415

      errors += (CheckpointError,)
      res = analyze_routing(args.workdir, args.out, split=args.split, checkpoint=args.checkpoint,
                            timeline_users=args.users, seed=args.seed, batch_size=args.batch_size)
      print(f"{res['num_sessions']} sessions of {res['num_examples']} {args.split} examples routed to "
            f"{res['num_themes']} themes {res['theme_sessions']}; dropped {res['dropped_fraction']:.4f}")
      for k, v in res["vs"].items():
        print(f"  vs {k}: purity {v['purity']:.4f}, NMI {v['nmi']:.4f}")
    else:
      from mos_jax.analysis.curves import plot_curves  # noqa: PLC0415

      res = plot_curves(args.workdir, args.out)
      for r in res["runs"]:
        print(f"{r['label']}: final train loss {r['final_train_loss']}, best valid {r['best_valid']}")
  except Exception as e:  # noqa: BLE001  only the known error kinds are reported briefly
    if not isinstance(e, errors):
      raise
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
