"""ArrayRecord copy of a prepared folder (records.py): the same batches, dtypes and state as the numpy path."""

import dataclasses
import json
import sys

import numpy as np
import pytest

from mos_jax.data import DataConfig, DataError, SyntheticConfig, load_prepared, make_iterator, prepare_dataset
from mos_jax.data import iterator as iterator_lib

pytest.importorskip("tensorflow_datasets", reason="the ArrayRecord format needs tensorflow-datasets")
from mos_jax.data import records  # noqa: E402

TINY = SyntheticConfig(num_users=60, num_themes=3, items_per_theme=8, cats_per_theme=2, sessions_per_user=(6, 9))
BACKENDS = ["numpy"] + (["grain"] if iterator_lib._grain() is not None else [])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A tiny synthetic folder with a 2-file ArrayRecord copy per split, and its loaded numpy twin."""
  cfg = DataConfig(cache_dir=str(tmp_path_factory.mktemp("prep")), num_sessions=3, session_len=4, neg_ratio=2,
                   synthetic=TINY)
  path = prepare_dataset(cfg)
  records.write_array_record(path, num_shards=2)
  return cfg, path, load_prepared(path)


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_same(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for k in w:
      assert g[k].dtype == w[k].dtype and g[k].shape == w[k].shape, k
      np.testing.assert_array_equal(g[k], w[k], err_msg=k)


# (split, task, iterator options): training with per-epoch negatives, and padded evaluation.
CASES = [("train", "ctr", dict(shuffle=True, drop_remainder=True)),
         ("valid", "next", dict(shuffle=False, drop_remainder=False, pad_to_full=True)),
         ("test", "ctr", dict(shuffle=True, drop_remainder=False))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shard", [(0, 1), (0, 2), (1, 2)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}_{c[1]}")
def test_same_batches_as_the_numpy_path(prepared, case, shard, backend):
  _, path, ds = prepared
  split, task, opts = case
  arrays = ds.split(split, task, seed=5)
  fields = ds.epoch_fields(arrays, seed=5) if (split, task) == ("train", "ctr") else None
  kw = dict(batch_size=32, seed=5, shard_index=shard[0], shard_count=shard[1], epoch_fields=fields, **opts)
  want = make_iterator(arrays, backend="numpy", **kw)
  got = records.make_record_iterator(path, split, task, backend=backend, **kw)
  assert got.backend == backend and got.batches_per_epoch == want.batches_per_epoch
  _assert_same(_take(got, 2 * want.batches_per_epoch + 1), _take(want, 2 * want.batches_per_epoch + 1))
  assert got.get_state() == want.get_state()


def test_state_restores_exactly_and_across_formats(prepared):
  _, path, ds = prepared
  arrays = ds.split("train", "ctr", seed=1)
  kw = dict(batch_size=32, seed=1, shuffle=True, drop_remainder=True, backend="numpy")
  ref = records.make_record_iterator(path, "train", "ctr", epoch_fields=ds.train_epoch_fields(seed=1), **kw)
  n = ref.batches_per_epoch
  expected = _take(ref, 2 * n)
  for k in (3, n, n + 2):  # inside the first epoch, at its end, inside the second
    first = records.make_record_iterator(path, "train", "ctr", epoch_fields=ds.train_epoch_fields(seed=1), **kw)
    _take(first, k)
    resumed = records.make_record_iterator(path, "train", "ctr", epoch_fields=ds.train_epoch_fields(seed=1), **kw)
    resumed.set_state(json.loads(json.dumps(first.get_state())))
    _assert_same(_take(resumed, 2 * n - k), expected[k:])
  # a state saved by the numpy path continues on the ArrayRecord path (and the batches are the numpy path's)
  numpy_it = make_iterator(arrays, epoch_fields=ds.epoch_fields(arrays, seed=1), **kw)
  _take(numpy_it, n + 2)
  resumed = records.make_record_iterator(path, "train", "ctr", epoch_fields=ds.train_epoch_fields(seed=1), **kw)
  resumed.set_state(numpy_it.get_state())
  _assert_same(_take(resumed, 3), _take(numpy_it, 3))


def test_train_epoch_fields_equal_the_ones_from_the_arrays(prepared):
  _, _, ds = prepared
  a = ds.epoch_fields(ds.split("train", "ctr", seed=7), seed=7)
  b = ds.train_epoch_fields(seed=7)
  for e in (0, 3):
    _assert_same([b(e)], [a(e)])


def test_decoder_matches_tfds_and_files_carry_the_meta(prepared):
  import tensorflow_datasets as tfds
  _, path, ds = prepared
  r = records.ArrayRecordExamples(path, "test", "next")
  assert len(r.files) == 2 and all(f.name.startswith("mos_prepared-test_next.array_record-") for f in r.files)
  src = tfds.builder_from_directory(str(records.record_dir(path))).as_data_source(split="test_next")
  idx = np.array([len(r) - 1, 0, 3])  # rows in both files, out of order
  got = r.read(idx)
  for j, i in enumerate(idx):
    for k, v in src[int(i)].items():
      np.testing.assert_array_equal(got[k][j], v, err_msg=k)
  assert json.loads((records.record_dir(path) / "metadata.json").read_text()) == ds.meta


def test_prepare_with_format_adds_the_copy_and_keeps_the_fingerprint(prepared, tmp_path):
  cfg, _, _ = prepared
  cfg = dataclasses.replace(cfg, cache_dir=str(tmp_path))
  path = prepare_dataset(cfg)
  assert not (path / records.FOLDER).exists()
  with pytest.raises(DataError, match="no ArrayRecord copy of .*--format=array_record"):
    records.ArrayRecordExamples(path, "train", "ctr")
  from mos_jax.data.prepare import main
  flags = ["--num-sessions", "3", "--session-len", "4", "--neg-ratio", "2", "--syn-num-users", "60", "--syn-num-themes",
           "3", "--syn-items-per-theme", "8", "--syn-cats-per-theme", "2", "--syn-sessions-per-user", "6,9"]
  assert main(["--out", str(path), "--format", "array_record"] + flags) == 0  # same folder: the copy is added
  assert prepare_dataset(dataclasses.replace(cfg, format="array_record")) == path
  valid = load_prepared(path).split("valid", "ctr")
  assert len(records.ArrayRecordExamples(path, "valid", "ctr")) == len(valid["label"])
  with pytest.raises(ValueError, match="DataConfig.format='tfrecord': expected one of"):
    prepare_dataset(dataclasses.replace(cfg, format="tfrecord"))


def _copy_with(path, tmp_path, name, damage):
  import shutil
  out = tmp_path / "copy"
  shutil.copytree(path, out)
  f = next((records.record_dir(out)).glob(f"mos_prepared-{name}.array_record-00001-of-00002"))
  damage(f)
  return out, f


def test_missing_or_corrupt_shard_is_an_error_naming_the_file(prepared, tmp_path):
  _, path, _ = prepared
  out, f = _copy_with(path, tmp_path, "train_ctr", lambda f: f.unlink())
  with pytest.raises(DataError, match=f"{f}: missing ArrayRecord shard of split train_ctr"):
    records.make_record_iterator(out, "train", "ctr", batch_size=4, seed=0, shuffle=True, drop_remainder=True)
  f.write_bytes(b"not an array record file")
  with pytest.raises(DataError, match=f"{f}: unreadable ArrayRecord shard of split train_ctr"):
    records.ArrayRecordExamples(out, "train", "ctr")
  data = bytearray((records.record_dir(path) / f.name).read_bytes())
  data[100:200] = bytes(100)  # inside the first chunk: the reader opens, reading rows of this file fails
  f.write_bytes(bytes(data))
  r = records.ArrayRecordExamples(out, "train", "ctr")
  r.read([0, 1])  # rows of the intact first file still read
  with pytest.raises(DataError, match=f"reading rows of ArrayRecord split train_ctr from \\['{f}'\\]"):
    r.read(np.arange(r._starts[1], len(r)))


def test_without_tfds_the_error_names_the_pip_command(prepared, monkeypatch):
  _, path, _ = prepared
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails as if not installed
  with pytest.raises(ImportError, match="needs tensorflow-datasets and array-record .*pip install "
                                        "tensorflow-datasets==4.9.10 array-record==0.8.6"):
    records.ArrayRecordExamples(path, "train", "ctr")
  with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
    prepare_dataset(dataclasses.replace(prepared[0], format="array_record"))
