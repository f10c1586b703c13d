"""Rank comparisons that hold on every CPU kind: two differently computed score matrices may differ in the last bit."""

import numpy as np


def near_ties(logits: np.ndarray, target: np.ndarray, rtol: float = 1e-5) -> np.ndarray:
  """int [B]: candidates (items 1..V other than the target) whose score is within rounding of the target's."""
  s = np.asarray(logits, np.float64)
  t = s[np.arange(len(target)), target][:, None]
  close = np.abs(s[:, 1:] - t) <= rtol * np.maximum(np.abs(t), 1.0)
  return close.sum(axis=1) - 1  # the target itself is always close


def assert_ranks_agree(got: np.ndarray, want: np.ndarray, logits: np.ndarray, target: np.ndarray) -> None:
  """Ranks equal, except that a rank may move past candidates within rounding of the target's score (usually none)."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (got.shape, want.shape)
  slack = near_ties(logits, np.asarray(target))
  assert np.all(np.abs(got - want) <= slack), f"ranks {got} vs {want}, near ties {slack}"
