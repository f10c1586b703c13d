"""Writing analysis outputs atomically (a temporary file in the same folder, then renamed) and the shared plot style.

Figures are built with ``matplotlib.figure.Figure`` directly (the Agg renderer, no pyplot): no global figure state,
no display needed.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any

import numpy as np
from matplotlib.figure import Figure


class AnalysisError(ValueError):
  """Input an analysis cannot use (a missing file, a run of the wrong kind), with what was expected."""


def _plain(x: Any) -> Any:
  """numpy scalars / arrays -> Python values; NaN and inf -> None (strict JSON)."""
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, np.ndarray):
    return _plain(x.tolist())
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def write_json(path: str | os.PathLike, obj: Any) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(_plain(obj), indent=1) + "\n", encoding="utf-8")
  os.replace(tmp, path)
  return path


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
  os.replace(tmp, path)
  return path


def palette(n: int, name: str = "tab10") -> list:
  """``n`` colours of a qualitative colormap (tab10, tab20, Dark2, ...), cycled when it has fewer."""
  from matplotlib import colormaps  # noqa: PLC0415

  cmap = colormaps[name]
  return [cmap(i % cmap.N) for i in range(n)]


def summary(x: np.ndarray) -> dict[str, float | int]:
  """count, mean, median, p90, max of a 1-d array (count only when empty)."""
  x = np.asarray(x, np.float64)
  if len(x) == 0:
    return {"count": 0}
  q = np.percentile(x, [50, 90])
  return {"count": int(len(x)), "mean": float(x.mean()), "median": float(q[0]), "p90": float(q[1]),
          "max": float(x.max())}
