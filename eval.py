"""Evaluates a trained run: ``python eval.py --workdir=WORKDIR [--split=test] [--checkpoint=best|latest] [--rules]``.

A thin wrapper around ``mos_jax.cli.eval`` (also installed as ``mos-eval``); see there and docs/metrics.md.
"""

import sys

from mos_jax.cli.eval import (format_rule_table, format_slice_table, format_table, main,  # noqa: F401
                              rule_slices)

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
