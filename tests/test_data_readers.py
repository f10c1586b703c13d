"""Readers, filtering, id remapping and the prepared-folder guarantees (bad input, atomicity, caching)."""

import json
import os

import numpy as np
import pytest

from mos_jax.data import DataConfig, DataError, load_prepared, prepare_dataset
from mos_jax.data.events import build_events, kcore_mask
from mos_jax.data.readers import read_generic, read_ml_latest, read_taobao

GOOD = [f"{u},{100 + (u * 7 + k) % 9},{5 + k % 2},{'pv' if k % 3 else 'buy'},{1000 + 60 * k + u}"
        for u in (1, 2, 3) for k in range(6)]


def _write(tmp_path, lines, name="UserBehavior.csv", newline=True):
  path = tmp_path / name
  path.write_text("\n".join(lines) + ("\n" if newline else ""))
  return path


def _cfg(tmp_path, data_dir, **kw):
  return DataConfig(dataset=kw.pop("dataset", "taobao"), data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"),
                    num_sessions=2, session_len=3, min_user_events=kw.pop("min_user_events", 3), **kw)


@pytest.mark.parametrize("bad_line, message", [
    ("4,200,5,pv", r"line 3: missing field"),
    ("4,abc,5,pv,1000", r"line 3: item_id 'abc' is not an integer"),
    ("4,200,5,pv,noon", r"line 3: timestamp 'noon' is not an integer"),
    ("4,200,5,click,1000", r"line 3: unknown behavior 'click'"),
    ("", r"line 3: missing field"),
])
def test_taobao_malformed_rows_name_file_and_line(tmp_path, bad_line, message):
  path = _write(tmp_path, GOOD[:2] + [bad_line] + GOOD[2:])
  with pytest.raises(DataError, match=message) as e:
    read_taobao(tmp_path)
  assert str(path) in str(e.value) and "expected" in str(e.value)


def test_taobao_extra_field_empty_file_and_header(tmp_path):
  _write(tmp_path, GOOD[:2] + ["4,200,5,pv,1000,9"])
  with pytest.raises(DataError, match=r"UserBehavior.csv: .*Expected 5 fields in line 3, saw 6"):
    read_taobao(tmp_path)
  _write(tmp_path, [], newline=False)
  with pytest.raises(DataError, match="UserBehavior.csv: file is empty"):
    read_taobao(tmp_path)
  _write(tmp_path, ["user_id,item_id,category_id,behavior_type,timestamp"] + GOOD)
  with pytest.raises(DataError, match=r"line 1: 'user_id' is not a user id; Taobao files have no header"):
    read_taobao(tmp_path)


def test_taobao_truncated_last_line_is_skipped_with_its_user(tmp_path):
  _write(tmp_path, GOOD + ["9,100,5,pv,5000", "9,101,5,pv"], newline=False)
  df, counts = read_taobao(tmp_path)
  assert counts == {"skipped_truncated_last_line": 1, "skipped_truncated_user_rows": 1}
  assert len(df) == len(GOOD) and "9" not in set(df["user"])
  # The same short line in the middle (or with a final newline) is an error, not a skip.
  _write(tmp_path, GOOD + ["9,100,5,pv,5000", "9,101,5,pv"], newline=True)
  with pytest.raises(DataError, match="line 20: missing field"):
    read_taobao(tmp_path)


def test_wrong_header_and_generic_columns(tmp_path):
  (tmp_path / "ratings.csv").write_text("user,movie,rating,ts\n1,2,3.0,100\n")
  with pytest.raises(DataError, match=r"ratings.csv: line 1: expected header 'userId,movieId,rating,timestamp'"):
    read_ml_latest(tmp_path)
  path = tmp_path / "log.csv"
  path.write_text("uid,iid,when,kind\na,x,2024-01-01T00:00:00Z,view\na,y,2024-01-01T00:00:30Z,view\n")
  df, _ = read_generic(path, "user=uid,item=iid,time=when,behavior=kind")
  assert df["time"].tolist() == [1704067200, 1704067230] and df["behavior"].tolist() == ["view", "view"]
  with pytest.raises(DataError, match=r"log.csv: line 1: header lacks column\(s\) \['ts'\]"):
    read_generic(path, "user=uid,item=iid,time=ts")
  path.write_text("uid,iid,when\na,x,2024-01-01T00:00:00Z\na,y,yesterday\n")
  with pytest.raises(DataError, match=r"log.csv: line 3: time 'yesterday' is neither unix seconds nor ISO-8601"):
    read_generic(path, "user=uid,item=iid,time=when")


def test_remap_round_trip_sorting_and_out_of_order_count(tmp_path):
  lines = GOOD[:6] + GOOD[12:] + [GOOD[6 + k] for k in (3, 0, 1, 2, 4, 5)]  # user 2's rows out of time order
  _write(tmp_path, lines)
  df, _ = read_taobao(tmp_path)
  events, stats = build_events(df, min_user_events=1, kcore=0, source="t")
  assert stats["rows_out_of_order"] == 1
  assert np.all(np.diff(events.time[events.user == events.user[0]]) >= 0)
  for u in ("1", "2", "3"):  # dense -> original ids give back each user's time-sorted rows
    dense_u = int(np.flatnonzero(events.user_ids == u)[0])
    rows = df[df["user"] == u].sort_values("time", kind="stable")
    mask = events.user == dense_u
    assert events.item_ids[events.item[mask]].tolist() == rows["item"].tolist()
    assert events.cat_ids[events.cat[mask]].tolist() == rows["cat"].tolist()
  assert events.item_ids[0] == "" and events.item.min() >= 1


def test_kcore_and_too_few_events(tmp_path):
  user = np.array(["a", "a", "a", "b", "b", "c"])
  item = np.array(["x", "y", "x", "x", "y", "z"])
  np.testing.assert_array_equal(kcore_mask(user, item, 2), [True, True, True, True, True, False])
  _write(tmp_path, GOOD)
  with pytest.raises(DataError, match="no user has at least 50 events"):
    prepare_dataset(_cfg(tmp_path, tmp_path, min_user_events=50))


def test_prepare_is_cached_atomic_and_refuses_a_different_out(tmp_path):
  _write(tmp_path, GOOD)
  cfg = _cfg(tmp_path, tmp_path)
  out = prepare_dataset(cfg)
  mtime = os.stat(out / "meta.json").st_mtime_ns
  assert prepare_dataset(cfg) == out and os.stat(out / "meta.json").st_mtime_ns == mtime  # reused
  ds = load_prepared(out)
  last_rows = [str(100 + (u * 7 + 5) % 9) for u in (1, 2, 3)]  # each user's last item in GOOD
  assert ds.original_ids("item", ds.split("test", "next")["target_item"]).tolist() == last_rows
  assert json.loads((out / "stats.json").read_text())["raw_rows"] == len(GOOD)
  with pytest.raises(DataError, match="already holds a different prepared dataset"):
    prepare_dataset(_cfg(tmp_path, tmp_path, neg_ratio=3), out)
  # A failing prepare leaves nothing behind: no OUT, no temporary folder.
  _write(tmp_path, GOOD + ["4,200,5,pv,oops"])
  target = tmp_path / "cache" / "broken"
  before = set(os.listdir(tmp_path / "cache"))
  with pytest.raises(DataError, match="line 19"):
    prepare_dataset(_cfg(tmp_path, tmp_path), target)
  assert set(os.listdir(tmp_path / "cache")) == before


def test_generic_parquet_and_tsv_missing_values(tmp_path):
  import pandas as pd  # noqa: PLC0415
  pd.DataFrame({"u": [1, 1, 2], "i": ["a", None, "c"], "t": [10, 20, 30]}).to_parquet(tmp_path / "log.parquet")
  with pytest.raises(DataError, match=r"log.parquet: row 2: missing field"):
    read_generic(tmp_path / "log.parquet", "user=u,item=i,time=t")
  (tmp_path / "log.tsv").write_text("u\ti\tt\n1\ta\t10\n1\tb\t20\n")
  df, _ = read_generic(tmp_path / "log.tsv", "user=u,item=i,time=t")
  assert df["item"].tolist() == ["a", "b"] and df["time"].tolist() == [10, 20]


def test_missing_data_dir_and_unknown_dataset(tmp_path):
  with pytest.raises(DataError, match=r"--data-dir '' does not exist \(dataset 'taobao' needs the raw files\)"):
    prepare_dataset(DataConfig(dataset="taobao", cache_dir=str(tmp_path)))
  with pytest.raises(DataError, match=r"unknown dataset 'steam'; expected synthetic, csv or one of"):
    prepare_dataset(DataConfig(dataset="steam", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c")))
  assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_large_integer_ids_stay_exact(tmp_path):
  _write(tmp_path, GOOD[:3] + ["1,9007199254740993,5,pv,2000", "1,9007199254740992,5,pv,2001"])
  df, _ = read_taobao(tmp_path)
  assert df["item"].tolist()[-2:] == ["9007199254740993", "9007199254740992"]  # float64 would merge them


def test_line_numbers_survive_dropping_the_truncated_user(tmp_path):
  # user 9 also has an early row; dropping its rows must not shift the line reported for a later error.
  _write(tmp_path, ["9,100,5,pv,10"] + GOOD[:4] + ["1,100,5,pv,x"] + ["9,101,5,pv"], newline=False)
  with pytest.raises(DataError, match="line 6: timestamp 'x' is not an integer"):
    read_taobao(tmp_path)
