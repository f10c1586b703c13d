"""Batch iterator: Grain and numpy backends agree, state restores exactly, padding and sharding are exact."""

import itertools
import json

import numpy as np
import pytest

from mos_jax.data import iterator as iterator_lib
from mos_jax.data import make_iterator

HAS_GRAIN = iterator_lib._grain() is not None
N = 23


def _arrays(n=N):
  return {"items": np.arange(n * 4, dtype=np.int32).reshape(n, 2, 2), "label": (np.arange(n) % 2).astype(np.float32),
          "user": np.arange(n, dtype=np.int32)}


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


CASES = [dict(shuffle=True, drop_remainder=True), dict(shuffle=True, drop_remainder=False),
         dict(shuffle=False, drop_remainder=False, pad_to_full=True),
         dict(shuffle=True, drop_remainder=False, pad_to_full=True, shard_index=1, shard_count=3)]


@pytest.mark.skipif(not HAS_GRAIN, reason="grain is not installed: only the numpy backend can run")
@pytest.mark.parametrize("case", CASES)
def test_grain_and_numpy_give_identical_batches(case):
  g = make_iterator(_arrays(), batch_size=5, seed=3, backend="grain", **case)
  n = make_iterator(_arrays(), batch_size=5, seed=3, backend="numpy", **case)
  assert g.backend == "grain" and n.backend == "numpy"
  _assert_same(_take(g, 13), _take(n, 13))  # crosses several epoch boundaries


RESTORE_BACKENDS = [("numpy", "numpy")] + ([("grain", "grain"), ("grain", "numpy")] if HAS_GRAIN else [])


@pytest.mark.parametrize("backends", RESTORE_BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_restore_from_state_continues_exactly(backends, case):
  ref = make_iterator(_arrays(), batch_size=4, seed=11, backend=backends[0], **case)
  expected = _take(ref, 15)
  for k in (0, 3, 5, 6, 11):  # inside an epoch, right at an epoch end, later epochs
    first = make_iterator(_arrays(), batch_size=4, seed=11, backend=backends[0], **case)
    _take(first, k)
    state = json.loads(json.dumps(first.get_state()))
    resumed = make_iterator(_arrays(), batch_size=4, seed=11, backend=backends[1], **case)
    resumed.set_state(state)
    _assert_same(_take(resumed, 15 - k), expected[k:])


def test_each_epoch_is_a_permutation_and_padding_has_zero_weight():
  it = make_iterator(_arrays(), batch_size=5, seed=0, shuffle=True, drop_remainder=False, pad_to_full=True,
                     num_epochs=2, backend="numpy")
  batches = list(it)
  assert len(batches) == 10 and all(b["user"].shape == (5,) for b in batches)
  for e in range(2):
    ep = batches[5 * e:5 * e + 5]
    users = np.concatenate([b["user"][b["weight"] > 0] for b in ep])
    assert sorted(users.tolist()) == list(range(N))
    assert sum(float(b["weight"].sum()) for b in ep) == N
  assert batches[4]["weight"].tolist() == [1, 1, 1, 0, 0]
  assert not np.array_equal(np.concatenate([b["user"] for b in batches[:5]]),
                            np.concatenate([b["user"] for b in batches[5:]]))  # reshuffled per epoch
  with pytest.raises(StopIteration):
    next(it)


def test_drop_remainder_and_shards():
  it = make_iterator(_arrays(), batch_size=5, seed=0, shuffle=True, drop_remainder=True, num_epochs=1,
                     backend="numpy")
  batches = list(it)
  assert len(batches) == 4 and len(set(np.concatenate([b["user"] for b in batches]).tolist())) == 20
  # Training shards: disjoint, equal batch counts. Eval shards with padding: together cover every example once.
  for pad in (False, True):
    seen = []
    for i in range(3):
      sh = make_iterator(_arrays(), batch_size=4, seed=2, shuffle=True, drop_remainder=not pad, pad_to_full=pad,
                         num_epochs=1, shard_index=i, shard_count=3, backend="numpy")
      bs = list(sh)
      assert len(bs) == (2 if pad else 1)  # 8 padded slots per shard vs 7 examples, cut to one batch of 4
      seen += [u for b in bs for u, w in zip(b["user"].tolist(), b["weight"].tolist()) if w > 0]
    assert len(seen) == len(set(seen)) and len(seen) == (N if pad else 12)


def test_bad_state_and_options():
  it = make_iterator(_arrays(), batch_size=4, seed=1, shuffle=True, drop_remainder=True, backend="numpy")
  with pytest.raises(ValueError, match="saved with seed=2"):
    it.set_state({**it.get_state(), "seed": 2})
  with pytest.raises(ValueError, match="give no batch of 64"):
    make_iterator(_arrays(), batch_size=64, seed=1, shuffle=True, drop_remainder=True)
  with pytest.raises(ValueError, match="arrays differ in leading size"):
    make_iterator({"a": np.zeros(3), "b": np.zeros(4)}, batch_size=1, seed=0, shuffle=False, drop_remainder=False)
  assert list(itertools.islice(it, 1))[0]["weight"].dtype == np.float32


def test_without_grain_auto_falls_back_to_numpy(monkeypatch):
  monkeypatch.setattr(iterator_lib, "_grain", lambda: None)
  it = make_iterator(_arrays(), batch_size=4, seed=1, shuffle=True, drop_remainder=True, backend="auto")
  assert it.backend == "numpy"
  with pytest.raises(ImportError, match="grain is not installed"):
    make_iterator(_arrays(), batch_size=4, seed=1, shuffle=True, drop_remainder=True, backend="grain")


def _step_rows(its):
  """Sorted real (weight > 0) users of one step of every shard together: the global batch as a set."""
  rows = []
  for it in its:
    b = next(it)
    rows += b["user"][b["weight"] > 0].tolist()
  return sorted(rows)


@pytest.mark.parametrize("pad", [False, True], ids=["train", "eval-padded"])
def test_state_is_process_invariant_and_resumes_on_any_shard_count(pad):
  """n shards with a per-shard batch of B / n: step s of all shards together is the unsharded global batch s; the
  saved state is the same for every n, and a 2-shard state resumes on 1 or 4 shards with the same global batches."""
  n_rows, B = 37, 8  # 4 full batches per epoch (train) / 5 with the padded tail (eval)
  opts = dict(seed=5, shuffle=True, drop_remainder=not pad, pad_to_full=pad, backend="numpy")

  def shards(n):
    return [make_iterator(_arrays(n_rows), batch_size=B // n, shard_index=i, shard_count=n, **opts) for i in range(n)]

  ref = shards(1)
  expected = [_step_rows(ref) for _ in range(11)]  # crosses two epoch boundaries
  assert expected[0] != expected[4 + pad]  # reshuffled per epoch
  for n in (2, 4):
    its = shards(n)
    assert [_step_rows(its) for _ in range(6)] == expected[:6]
    states = [json.loads(json.dumps(it.get_state())) for it in its]
    assert all(s == states[0] for s in states)  # identical on every process: Orbax writes it from process 0 only
    assert states[0] == {"epoch": 1, "step": 6 - 4 - pad, "seed": 5, "num_examples": n_rows, "global_batch_size": 8}
  for m in (1, 4):  # the 4-shard state (== the 2-shard one) resumes on another shard count
    resumed = shards(m)
    for it in resumed:
      it.set_state(states[0])
    assert [_step_rows(resumed) for _ in range(5)] == expected[6:11]


def test_state_refuses_another_global_batch_and_reads_old_states():
  it = make_iterator(_arrays(), batch_size=4, seed=1, shuffle=True, drop_remainder=True, backend="numpy")
  two = make_iterator(_arrays(), batch_size=2, seed=1, shuffle=True, drop_remainder=True, shard_index=1,
                      shard_count=2, backend="numpy")
  two.set_state(it.get_state())  # 4 rows per step either way
  with pytest.raises(ValueError, match="saved with global_batch_size=4, this iterator has 2"):
    make_iterator(_arrays(), batch_size=2, seed=1, shuffle=True, drop_remainder=True,
                  backend="numpy").set_state(it.get_state())
  # A state written before global_batch_size existed: batch_size x shard_count.
  old = {"epoch": 2, "step": 1, "seed": 1, "num_examples": N, "shard_index": 0, "shard_count": 2, "batch_size": 2}
  it.set_state(old)
  assert (it.epoch, it.step) == (2, 1)
  with pytest.raises(ValueError, match="global_batch_size=2, this iterator has 4"):
    it.set_state({**old, "shard_count": 1})
