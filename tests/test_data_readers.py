"""Readers, filtering, id remapping and the prepared-folder guarantees (bad input, atomicity, caching)."""

import json
import os

import numpy as np
import pytest

from mos_jax.data import DataConfig, DataError, load_prepared, prepare_dataset
from mos_jax.data.events import build_events, kcore_mask
from mos_jax.data.readers import read_foursquare, read_generic, read_ml_latest, read_taobao, read_taobao_sslrec

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


# taobao-sslrec (events.csv, header, 0-based ids, CRLF like the shared file) and foursquare-nyc (checkins.csv).
SSLREC = ["user,item,behavior,timestamp", "0,0,buy,1000", "0,7,cart,1000", "0,7,buy,1060", "1,3,fav,900",
          "1,0,cart,950", "1,5,buy,5000", "2,3,buy,10", "2,5,buy,20", "2,0,buy,30"]
FOURSQUARE = ["user,item,timestamp", "1,10,60", "1,11,120", "1,10,60", "1,12,120", "2,10,300", "2,10,300",
              "2,10,300", "2,13,86400", "2,14,90000"]


@pytest.mark.parametrize("bad_line, message", [
    ("0,4,buy", r"line 3: missing field"),
    ("", r"line 3: missing field"),
    ("0,x,buy,1000", r"line 3: item 'x' is not an integer"),
    ("0,4,buy,noon", r"line 3: timestamp 'noon' is not an integer"),
    ("-1,4,buy,1000", r"line 3: user '-1' is negative"),
    ("0,4,pv_click,1000", r"line 3: unknown behavior 'pv_click'"),
    ("0,4,buy,1000,9", r"Expected 4 fields in line 3, saw 5"),
])
def test_taobao_sslrec_malformed_rows_name_file_and_line(tmp_path, bad_line, message):
  path = _write(tmp_path, SSLREC[:2] + [bad_line] + SSLREC[2:], name="events.csv")
  with pytest.raises(DataError, match=message) as e:
    read_taobao_sslrec(tmp_path)
  assert str(path) in str(e.value)


@pytest.mark.parametrize("bad_line, message", [
    ("1,10", r"line 3: missing field"),
    ("1,poi7,60", r"line 3: item 'poi7' is not an integer"),
    ("1,10,2012-04-03", r"line 3: timestamp '2012-04-03' is not an integer"),
    ("1,-10,60", r"line 3: item '-10' is negative"),
    ("1,10,60,40.7", r"Expected 3 fields in line 3, saw 4"),
])
def test_foursquare_malformed_rows_name_file_and_line(tmp_path, bad_line, message):
  path = _write(tmp_path, FOURSQUARE[:2] + [bad_line] + FOURSQUARE[2:], name="checkins.csv")
  with pytest.raises(DataError, match=message) as e:
    read_foursquare(tmp_path)
  assert str(path) in str(e.value)


def test_sslrec_and_foursquare_headers_and_missing_files(tmp_path):
  with pytest.raises(DataError, match=r"none of events.csv found"):
    read_taobao_sslrec(tmp_path)
  with pytest.raises(DataError, match=r"none of checkins.csv found"):
    read_foursquare(tmp_path)
  _write(tmp_path, SSLREC[1:], name="events.csv")  # no header: the first row is taken for one and rejected
  with pytest.raises(DataError, match=r"events.csv: line 1: expected header 'user,item,behavior,timestamp', "
                                      r"got '0,0,buy,1000'"):
    read_taobao_sslrec(tmp_path)
  _write(tmp_path, ["user,item,timestamp"] + [r.rsplit(",", 2)[0] + ",1000" for r in SSLREC[1:]], name="events.csv")
  with pytest.raises(DataError, match=r"events.csv: line 1: expected header 'user,item,behavior,timestamp'"):
    read_taobao_sslrec(tmp_path)
  _write(tmp_path, ["user,item,timestamp,lat"] + [r + ",40.7" for r in FOURSQUARE[1:]], name="checkins.csv")
  with pytest.raises(DataError, match=r"checkins.csv: line 1: expected header 'user,item,timestamp', "
                                      r"got 'user,item,timestamp,lat'"):
    read_foursquare(tmp_path)
  _write(tmp_path, [], name="checkins.csv", newline=False)
  with pytest.raises(DataError, match=r"checkins.csv: file is empty"):
    read_foursquare(tmp_path)


def test_foursquare_drops_exact_duplicates_only(tmp_path):
  path = _write(tmp_path, FOURSQUARE, name="checkins.csv")
  df, counts = read_foursquare(path)  # the file itself works as --data-dir too
  assert counts == {"skipped_duplicate_rows": 3}  # line 4 (= line 2) and lines 7, 8 (= line 6)
  # First copies kept in file order; (user 1, minute 2) with two different POIs stays two check-ins.
  assert list(zip(df["user"], df["item"], df["time"])) == [
      ("1", "10", 60), ("1", "11", 120), ("1", "12", 120), ("2", "10", 300), ("2", "13", 86400), ("2", "14", 90000)]
  assert (df["cat"] == "").all() and (df["behavior"] == "").all()
  _write(tmp_path, FOURSQUARE[:1] + ["01,010,60", "1,10,60.0", "1,10,120"], name="checkins.csv")
  df, counts = read_foursquare(tmp_path)  # ids and times compared after canonicalising ("01" = "1")
  assert counts == {"skipped_duplicate_rows": 1} and df["item"].tolist() == ["10", "10"]


def test_taobao_sslrec_zero_based_ids_and_unused_test_buy(tmp_path):
  path = tmp_path / "events.csv"
  path.write_bytes(("\r\n".join(SSLREC) + "\r\n").encode())  # CRLF, as the shared file
  (tmp_path / "test_buy.csv").write_text("user,item\n0,not an item\n")  # never read (no timestamps)
  df, counts = read_taobao_sslrec(tmp_path)
  assert counts == {} and len(df) == len(SSLREC) - 1
  assert df["time"].dtype == np.int64 and df["time"].tolist()[:3] == [1000, 1000, 1060]
  assert df["behavior"].tolist()[:3] == ["buy", "cart", "buy"] and (df["cat"] == "").all()
  # Id 0 is an ordinary original id: dense ids start at 1 (0 = padding) and map back to "0".
  ds = load_prepared(prepare_dataset(_cfg(tmp_path, tmp_path, dataset="taobao_sslrec")))
  assert ds.meta["num_users"] == 3 and ds.meta["num_items"] == 4 and ds.meta["num_cats"] == 0
  test = ds.split("test", "next")
  assert ds.original_ids("user", test["user"]).tolist() == ["0", "1", "2"]
  assert ds.original_ids("item", test["target_item"]).tolist() == ["7", "5", "0"]
  assert test["user"].min() >= 1 and test["target_item"].min() >= 1 and (test["cats"] == 0).all()
  assert ds.stats["raw_behaviors"] == {"buy": 6, "cart": 2, "fav": 1}
