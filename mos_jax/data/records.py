"""ArrayRecord copies of a prepared dataset's examples: a tfds builder writes them, a Grain/numpy iterator reads them.

For data larger than RAM or many hosts: each process reads only its own rows, by random access, instead of every
process building the whole ``split()`` arrays in memory. Layout (inside a prepared folder)::

    OUT/array_record/mos_prepared/1.0.0/   dataset_info.json, features.json, metadata.json (= OUT/meta.json),
                                           mos_prepared-<split>_<task>.array_record-0000i-of-0000n

One tfds split per (split, task) — ``train_ctr``, ``valid_next``, ... — one record per row of
``PreparedDataset.split(split, task)``, in row order (``disable_shuffling``), so record i is row i and the iterator's
epoch order (iterator.py) picks the same rows as the numpy path. Train CTR rows hold the (seed 0, epoch 0)
negatives; training replaces them every epoch with ``epoch_fields`` exactly as on the numpy path.

Written with tensorflow-datasets' ``GeneratorBasedBuilder`` and ``file_format="array_record"`` (no TensorFlow is
imported); read with ``tfds`` ``as_data_source`` (array_record's ``ArrayRecordDataSource``, the class Grain exports
as ``grain.sources.ArrayRecordDataSource``). Records are read as raw bytes and decoded here from the
``tf.train.Example`` wire format tfds writes (grids as one bytes value, scalars as int64/float lists): ~4x faster
than tfds' generic numpy decoder, and checked against it in the tests. tfds and array_record are imported lazily:
the rest of mos_jax runs without them.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import tempfile
from typing import Callable

import numpy as np

from mos_jax.data import iterator as iterator_lib
from mos_jax.data.examples import SPLITS
from mos_jax.data.prepared import PreparedDataset, load_prepared
from mos_jax.data.readers import DataError

FOLDER = "array_record"  # inside a prepared folder
BUILDER = "mos_prepared"
VERSION = "1.0.0"
TASKS = ("ctr", "next")
PIP = "pip install tensorflow-datasets==4.9.10 array-record==0.8.6"


def _tfds():
  """The tensorflow_datasets module, or an ImportError naming the packages and the pip command."""
  try:
    import tensorflow_datasets as tfds  # noqa: PLC0415  (lazy: optional, the GPU image has neither package)
    from array_record.python import array_record_module  # noqa: F401, PLC0415
  except ImportError as e:
    raise ImportError(f"the ArrayRecord data format needs tensorflow-datasets and array-record ({e}); install them "
                      f"with: {PIP}") from e
  return tfds


def split_name(split: str, task: str) -> str:
  """The tfds split holding ``PreparedDataset.split(split, task)``: e.g. ``train_ctr``."""
  if split not in SPLITS or task not in TASKS:
    raise ValueError(f"ArrayRecord split ({split!r}, {task!r}): expected split in {SPLITS} and task in {TASKS}")
  return f"{split}_{task}"


def _feature(tfds, v: np.ndarray):
  if v.ndim == 1:
    return tfds.features.Scalar(dtype=v.dtype)
  # One bytes value per grid instead of an int64 list: 4x smaller for int32 and decoded with one frombuffer.
  return tfds.features.Tensor(shape=v.shape[1:], dtype=v.dtype, encoding=tfds.features.Encoding.BYTES)


@functools.cache
def _builder_class():
  """The tfds builder, defined once (tfds is imported lazily) and kept out of tfds' global registry."""
  tfds = _tfds()

  with tfds.core.registered.skip_registration():

    class MosPrepared(tfds.core.GeneratorBasedBuilder):
      """The examples of one prepared folder (``source``); the features come from its test split's first row."""
      name = BUILDER
      VERSION = tfds.core.Version(VERSION)

      def __init__(self, *, source: PreparedDataset, **kwargs):
        self.source = source  # before the base __init__, which already reads self.info
        super().__init__(**kwargs)

      def _arrays(self, split: str, task: str) -> dict[str, np.ndarray]:
        return self.source.split(split, task, seed=0, epoch=0)

      def _info(self):
        sample = {k: v[:1] for k, v in self._arrays("test", "next").items()}  # the keys and shapes of every split
        return tfds.core.DatasetInfo(builder=self, description="mos_jax prepared examples (docs/data.md)",
                                     features=tfds.features.FeaturesDict({k: _feature(tfds, v)
                                                                          for k, v in sample.items()}),
                                     metadata=tfds.core.MetadataDict(self.source.meta), disable_shuffling=True)

      def _split_generators(self, dl_manager):
        return {split_name(s, t): self._generate_examples(s, t) for s in SPLITS for t in TASKS}

      def _generate_examples(self, split: str, task: str):
        arrays = self._arrays(split, task)  # one split in memory at a time (generators run one after another)
        for i in range(len(arrays["label"])):
          yield i, {k: v[i] for k, v in arrays.items()}

  return MosPrepared


def record_dir(prepared: str | os.PathLike) -> pathlib.Path:
  """Where the tfds dataset of a prepared folder lives (whether or not it was written)."""
  return pathlib.Path(prepared) / FOLDER / BUILDER / VERSION


def write_array_record(prepared: str | os.PathLike | PreparedDataset, *, num_shards: int | None = None
                       ) -> pathlib.Path:
  """Writes every (split, task) of a prepared folder as ArrayRecord shards into ``PREPARED/array_record`` (atomic:
  a temp folder renamed); a folder already written for the same fingerprint is kept. ``num_shards``: files per
  split (default: tfds' choice, one per 64 MB to 1 GiB). Returns ``record_dir(prepared)``."""
  tfds = _tfds()
  ds = prepared if isinstance(prepared, PreparedDataset) else load_prepared(prepared)
  out = record_dir(ds.path)
  if out.is_dir():
    _check_fingerprint(out, ds.meta)
    return out
  if (ds.path / FOLDER).exists():
    raise DataError(f"{ds.path / FOLDER}: exists but holds no {BUILDER}/{VERSION} dataset; remove it and prepare again")
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{FOLDER}.tmp-", dir=ds.path))
  try:
    builder = _builder_class()(source=ds, data_dir=str(tmp), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=num_shards))
    shutil.rmtree(tmp / "downloads", ignore_errors=True)  # tfds' empty download folder
    try:
      os.rename(tmp, ds.path / FOLDER)  # atomic on one filesystem
    except OSError:
      if not out.is_dir():  # someone else may have finished first; otherwise a real error
        raise
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return out


def _check_fingerprint(path: pathlib.Path, meta: dict) -> None:
  try:
    have = json.loads((path / "metadata.json").read_text())["fingerprint"]
  except (OSError, ValueError, KeyError) as e:
    raise DataError(f"{path}: not an ArrayRecord copy written by mos_jax (metadata.json: {e}); remove "
                    f"{path.parent.parent} and prepare again with --format=array_record") from e
  if have != meta["fingerprint"]:
    raise DataError(f"{path}: ArrayRecord copy of another prepared dataset (fingerprint {have}, the folder has "
                    f"{meta['fingerprint']}); remove {path.parent.parent} and prepare again")


class ArrayRecordExamples:
  """Random access to one (split, task) of a prepared folder's ArrayRecord copy: ``len()``, ``read(indices)``.

  Every shard listed in ``dataset_info.json`` is opened once up front, so a missing, truncated or foreign shard is
  a ``DataError`` naming the file before any batch is read.
  """

  def __init__(self, prepared: str | os.PathLike, split: str, task: str):
    tfds = _tfds()
    from array_record.python import array_record_module  # noqa: PLC0415
    from tensorflow_datasets.proto import tf_example_pb2  # noqa: PLC0415  (the wire format tfds writes)
    self._example = tf_example_pb2.Example
    self.path = record_dir(prepared)
    self.name = split_name(split, task)
    if not (self.path / "dataset_info.json").is_file():
      raise DataError(f"{self.path}: no ArrayRecord copy of {prepared}; run python -m mos_jax.data.prepare "
                      f"--format=array_record (same options) or records.write_array_record(PREPARED)")
    self.meta = json.loads((pathlib.Path(prepared) / "meta.json").read_text())
    _check_fingerprint(self.path, self.meta)
    builder = tfds.builder_from_directory(str(self.path))
    info = builder.info.splits[self.name]
    for f, n in zip(info.filepaths, info.shard_lengths):
      f = pathlib.Path(str(f))
      if not f.is_file():
        raise DataError(f"{f}: missing ArrayRecord shard of split {self.name} ({n} records expected)")
      try:
        reader = array_record_module.ArrayRecordReader(str(f))
        got = reader.num_records()
        reader.close()
      except Exception as e:  # noqa: BLE001  (the C++ reader raises RuntimeError / ValueError variants)
        raise DataError(f"{f}: unreadable ArrayRecord shard of split {self.name}: {e}") from e
      if got != n:
        raise DataError(f"{f}: ArrayRecord shard of split {self.name} holds {got} records, dataset_info.json says {n}")
    self.files = [pathlib.Path(str(f)) for f in info.filepaths]
    self._starts = np.cumsum([0] + list(info.shard_lengths))
    self._source = builder.as_data_source(split=self.name,
                                          deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    feats = builder.info.features
    self.specs = {k: (tuple(feats[k].shape), np.dtype(feats[k].np_dtype)) for k in feats.keys()}

  def __len__(self) -> int:
    return len(self._source)

  def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``indices`` (int, 0 <= i < len) as batch arrays with the written shapes and dtypes."""
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    try:
      raws = self._source.__getitems__(indices)
    except Exception as e:  # noqa: BLE001  name the shard(s) the rows live in
      files = sorted({str(self.files[np.searchsorted(self._starts, i, side="right") - 1]) for i in indices
                      if 0 <= i < len(self)})
      raise DataError(f"reading rows of ArrayRecord split {self.name} from {files}: {e}") from e
    cols: dict[str, list] = {k: [] for k in self.specs}
    for raw in raws:
      feature = self._example.FromString(raw).features.feature
      for k, (shape, dtype) in self.specs.items():
        f = feature[k]
        if shape:
          cols[k].append(f.bytes_list.value[0])
        elif dtype.kind == "f":
          cols[k].append(f.float_list.value[0])
        else:
          cols[k].append(f.int64_list.value[0])
    out = {}
    for k, (shape, dtype) in self.specs.items():
      if shape:
        out[k] = np.frombuffer(b"".join(cols[k]), dtype=dtype).reshape((len(raws),) + shape)
      else:
        out[k] = np.array(cols[k], dtype=dtype)
    return out


class RecordBatchIterator(iterator_lib.BatchIterator):
  """``BatchIterator`` whose rows come from an ``ArrayRecordExamples`` instead of in-memory arrays.

  The parent iterates an index column, so order, sharding, padding, the Grain/numpy backends and the state are the
  parent's own (a state restores across the two formats); ``_gather`` turns each index batch into records.
  """

  def __init__(self, records: ArrayRecordExamples, **kwargs):
    self.records = records
    super().__init__({"_row": np.arange(len(records), dtype=np.int64)}, **kwargs)

  def _fields(self, epoch: int) -> dict[str, np.ndarray]:
    if self.epoch_fields is None:
      return self.arrays
    n = self.num_examples
    new = {k: np.asarray(v) for k, v in self.epoch_fields(epoch).items()}
    for k, v in new.items():
      spec = self.records.specs.get(k)
      if spec is None or v.shape != (n,) + spec[0]:
        raise ValueError(f"epoch_fields({epoch}) gave {k!r} {v.shape}; expected one of the records' keys with shape "
                         f"{(n,) + spec[0] if spec else None} ({sorted(self.records.specs)})")
    return {**self.arrays, **new}

  def _gather(self, idx: np.ndarray, arrays: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    picked = super()._gather(idx, arrays)  # padding rows point at row 0, their weight is 0
    real = picked.pop("weight")
    batch = self.records.read(picked.pop("_row"))
    for k, v in picked.items():  # this epoch's fields replace the stored ones
      batch[k] = v.astype(batch[k].dtype, copy=False)
    w = batch["weight"] if "weight" in batch else np.ones(len(real), np.float32)
    batch["weight"] = np.where(real > 0, w, 0).astype(np.float32)
    return batch


def make_record_iterator(prepared: str | os.PathLike, split: str, task: str, *, batch_size: int, seed: int,
                         shuffle: bool, drop_remainder: bool, pad_to_full: bool = False,
                         num_epochs: int | None = None, shard_index: int = 0, shard_count: int = 1,
                         backend: str = "auto",
                         epoch_fields: Callable[[int], dict[str, np.ndarray]] | None = None) -> RecordBatchIterator:
  """``make_iterator`` over the ArrayRecord copy of ``prepared`` (split, task): the same batches, order and state
  as ``make_iterator(load_prepared(prepared).split(split, task), ...)`` with the same arguments."""
  return RecordBatchIterator(ArrayRecordExamples(prepared, split, task), batch_size=batch_size, seed=seed,
                             shuffle=shuffle, drop_remainder=drop_remainder, pad_to_full=pad_to_full,
                             num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count, backend=backend,
                             epoch_fields=epoch_fields)
