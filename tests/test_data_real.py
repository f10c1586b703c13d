"""Each real dataset in ../shared/data prepares end to end; stats.json agrees with the counts in its SOURCE.md."""

import re

import numpy as np
import pytest

from mos_jax.data import DataConfig, load_prepared, prepare_dataset
from mos_jax.data.prepare import main as prepare_cli

# folder, dataset name, options matching the way SOURCE.md measured sessions
REAL = {
    "taobao-userbehavior-head": ("taobao", dict(session_gap="30m", min_user_events=4)),
    "ml-100k": ("ml-100k", dict(session_gap="30m")),
    "ml-latest-small": ("ml-latest-small", dict(session_gap="30m")),
    "amazon-grocery-rechorus": ("amazon-rechorus", dict(session_gap="1d")),
}


def _n(text: str, pattern: str, group: int = 1) -> int:
  m = re.search(pattern, text, flags=re.S)
  assert m, f"SOURCE.md no longer states {pattern!r}"
  return int(m.group(group).replace(",", ""))


@pytest.fixture(scope="session")
def prepared_real(shared_data, tmp_path_factory):
  """One prepared copy per dataset, shared by the tests of this session."""
  out = {}
  for folder, (name, opts) in REAL.items():
    if not (shared_data / folder).is_dir():
      continue
    cfg = DataConfig(dataset=name, data_dir=str(shared_data / folder), num_sessions=16, session_len=16,
                     cache_dir=str(tmp_path_factory.mktemp("real")), **opts)
    out[folder] = load_prepared(prepare_dataset(cfg))
  return out


def _get(prepared_real, shared_data, folder):
  if folder not in prepared_real:
    pytest.skip(f"{shared_data / folder} is absent")
  return prepared_real[folder], (shared_data / folder / "SOURCE.md").read_text()


def test_taobao_matches_source(prepared_real, shared_data):
  ds, src = _get(prepared_real, shared_data, "taobao-userbehavior-head")
  st = ds.stats
  pat = r"([\d,]+) rows from ([\d,]+) users. There are ([\d,]+) distinct items and ([\d,]+) distinct categories"
  assert st["raw_rows"] == _n(src, pat, 1) and st["raw_users"] == _n(src, pat, 2)
  assert st["raw_items"] == _n(src, pat, 3) and st["raw_cats"] == _n(src, pat, 4)
  assert st["skipped_truncated_last_line"] == 1
  assert st["skipped_truncated_user_rows"] == _n(src, r"incomplete \(([\d,]+) rows\)")
  for b in ("pv", "cart", "fav", "buy"):
    assert st["raw_behaviors"][b] == _n(src, rf"Behaviours:.*?{b} ([\d,]+)")
  assert st["sessions"] == _n(src, r"30-minute gap gives ([\d,]+) sessions")
  assert st["sessions_per_user"]["median"] == _n(src, r"sessions \([\d.]+ per user, median (\d+)")
  assert st["test_history_len"]["max"] == _n(src, r"Interactions per user:.*?max ([\d,]+)") - 1


def test_ml100k_matches_source(prepared_real, shared_data):
  ds, src = _get(prepared_real, shared_data, "ml-100k")
  st = ds.stats
  pat = r"([\d,]+) ratings from ([\d,]+) users on ([\d,]+) items"
  assert (st["raw_rows"], st["raw_users"], st["raw_items"]) == tuple(_n(src, pat, i) for i in (1, 2, 3))
  assert st["raw_genres"] == _n(src, r"Genres: (\d+) flag columns")
  assert st["sessions"] == _n(src, r"30-minute gap gives ([\d,]+) sessions")
  assert st["test_history_len"]["max"] == _n(src, r"Interactions per user:.*?max ([\d,]+)") - 1


def test_ml_latest_matches_source(prepared_real, shared_data):
  ds, src = _get(prepared_real, shared_data, "ml-latest-small")
  st = ds.stats
  pat = r"([\d,]+) ratings from ([\d,]+) users. ([\d,]+) distinct movies are rated"
  assert (st["raw_rows"], st["raw_users"], st["raw_items"]) == tuple(_n(src, pat, i) for i in (1, 2, 3))
  assert st["raw_genres"] == _n(src, r"Genres: (\d+) labels")
  assert st["sessions"] == _n(src, r"30-minute gap gives ([\d,]+) sessions")
  assert st["rows_out_of_order"] > 0  # ratings.csv is sorted by movieId inside a user, not by time


def test_amazon_matches_source(prepared_real, shared_data):
  ds, src = _get(prepared_real, shared_data, "amazon-grocery-rechorus")
  st = ds.stats
  assert st["raw_rows"] == _n(src, r"for ([\d,]+) interactions in total")
  assert st["raw_users"] == _n(src, r"There are ([\d,]+) users and")
  assert st["raw_items"] == _n(src, r"users and ([\d,]+) items")
  assert st["raw_cats"] == _n(src, r"([\d,]+) distinct `i_category` values including 0") - 1
  assert st["sessions"] == _n(src, r'1-day gap gives ([\d,]+) "sessions"')
  # Our test target is ReChorus' test.csv row of each user: last by time, ties kept in train/dev/test order.
  test_rows = (shared_data / "amazon-grocery-rechorus" / "test.csv").read_text().splitlines()[1:]
  expected = {u: i for u, i, _ in (r.split(",") for r in test_rows)}
  a = ds.split("test", "next")
  got = dict(zip(ds.original_ids("user", a["user"]), ds.original_ids("item", a["target_item"])))
  assert got == expected


@pytest.mark.parametrize("folder", sorted(REAL))
def test_batch_contract_on_real_data(prepared_real, shared_data, folder):
  ds, _ = _get(prepared_real, shared_data, folder)
  a = ds.split("valid", "ctr")
  n = len(a["label"])
  assert n == ds.meta["num_examples"]["valid"]["ctr"] and n > 0
  for k in ("items", "cats", "times"):
    assert a[k].shape == (n, 16, 16) and a[k].dtype == np.int32
  assert a["session_theme"].shape == (n, 16) and (a["session_theme"] == -1).all()  # real data: unknown
  filled = a["items"] > 0
  assert (filled[:, :, 1:] <= filled[:, :, :-1]).all()  # padding items only at the end of a session
  nonempty = filled[:, :, 0]
  assert (nonempty[:, 1:] >= nonempty[:, :-1]).all() and nonempty[:, -1].all()  # padding sessions at the front
  assert (a["times"][filled] >= 0).all() and (a["times"][~filled] == 0).all()
  assert a["items"].max() <= ds.meta["num_items"] and a["cats"].max() <= ds.meta["num_cats"]
  assert set(np.unique(a["label"]).tolist()) == {0.0, 1.0}


def test_cli_prepares_and_reuses(shared_data, tmp_path, capsys):
  src = shared_data / "ml-100k" / "u.data"  # --data-dir may name the file itself
  if not src.is_file():
    pytest.skip(f"{src} is absent")
  args = ["--dataset", "ml-100k", "--data-dir", str(src), "--out", str(tmp_path / "ml"), "--session-gap", "1d"]
  assert prepare_cli(args) == 0
  assert "943 users, 1682 items" in capsys.readouterr().out
  assert load_prepared(tmp_path / "ml").stats["sessions"] == _n(
      (shared_data / "ml-100k" / "SOURCE.md").read_text(), r"1-day gap gives ([\d,]+) sessions")
  assert prepare_cli(args + ["--neg-ratio", "4"]) == 2
  assert "already holds a different prepared dataset" in capsys.readouterr().err


# taobao-sslrec and foursquare-nyc: the readers on a slice (the first users of each file, written to tmp_path as the
# same bytes), checked against an independent parse of that slice.


def _slice(shared_data, folder, name, tmp_path, keep_users):
  """The file's header and its rows of the first ``keep_users`` users (files are sorted by user), bytes unchanged."""
  src = shared_data / folder / name
  if not src.is_file():
    pytest.skip(f"{src} is absent")
  lines, users = [], []
  with open(src, "rb") as f:
    lines.append(f.readline())
    for line in f:
      user = line.split(b",", 1)[0]
      if not users or users[-1] != user:
        if len(users) == keep_users:
          break
        users.append(user)
      lines.append(line)
  (tmp_path / name).write_bytes(b"".join(lines))
  rows = [ln.decode().rstrip("\r\n").split(",") for ln in lines[1:]]
  return tmp_path, rows


def test_taobao_sslrec_reader_on_a_slice(shared_data, tmp_path):
  from mos_jax.data.readers import read_taobao_sslrec  # noqa: PLC0415
  folder, rows = _slice(shared_data, "taobao-sslrec", "events.csv", tmp_path, keep_users=200)
  df, counts = read_taobao_sslrec(folder)
  assert list(df.columns) == ["user", "item", "time", "cat", "behavior"] and counts == {}
  assert df["time"].dtype == np.int64 and len(df) == len(rows)
  assert [list(r) for r in zip(df["user"], df["item"], df["behavior"], df["time"].astype(str))] == rows
  assert (df["cat"] == "").all() and set(df["behavior"]) == {"fav", "cart", "buy"}
  assert df["user"].iloc[0] == "0" and "0" in set(df["item"])  # 0-based ids, kept as ordinary ids
  cfg = DataConfig(dataset="taobao_sslrec", data_dir=str(folder), cache_dir=str(tmp_path / "cache"),
                   num_sessions=12, session_len=4, session_gap="30m", min_user_events=3)
  ds = load_prepared(prepare_dataset(cfg))
  st = ds.stats
  assert st["users"] == st["raw_users"] == 200 and st["events"] == len(rows) and st["rows_out_of_order"] == 0
  assert st["items"] == len({r[1] for r in rows}) and ds.meta["num_cats"] == 0
  for b in ("fav", "cart", "buy"):
    assert st["raw_behaviors"][b] == sum(r[2] == b for r in rows)
  # Dense ids start at 1 (0 = padding); each user's test target is its last row (ties keep file order).
  last = {r[0]: r[1] for r in rows}
  test = ds.split("test", "ctr")
  pos = test["label"] == 1
  assert test["user"].min() >= 1 and test["target_item"].min() >= 1 and (test["cats"] == 0).all()
  assert dict(zip(ds.original_ids("user", test["user"][pos]), ds.original_ids("item", test["target_item"][pos]))) \
      == last


def _sessions(rows, gap):
  """Independent count of gap sessions over (user, time)-sorted rows."""
  n, prev = 0, None
  for u, _, t in sorted(rows, key=lambda r: (int(r[0]), int(r[2]))):
    if prev is None or prev[0] != u or int(t) - prev[1] > gap:
      n += 1
    prev = (u, int(t))
  return n


def test_foursquare_reader_on_a_slice(shared_data, tmp_path):
  from mos_jax.data.readers import read_foursquare  # noqa: PLC0415
  folder, rows = _slice(shared_data, "foursquare-nyc", "checkins.csv", tmp_path, keep_users=10)
  unique = list(dict.fromkeys(map(tuple, rows)))  # first copies, in file order
  assert len(unique) < len(rows)  # the slice holds exact duplicates (3 of 881 rows)
  df, counts = read_foursquare(folder)
  assert list(df.columns) == ["user", "item", "time", "cat", "behavior"] and df["time"].dtype == np.int64
  assert counts == {"skipped_duplicate_rows": len(rows) - len(unique)}
  assert list(zip(df["user"], df["item"], df["time"].astype(str))) == unique
  assert (df["cat"] == "").all() and (df["behavior"] == "").all() and (df["time"] % 60 == 0).all()
  cfg = DataConfig(dataset="foursquare", data_dir=str(folder), cache_dir=str(tmp_path / "cache"),
                   num_sessions=32, session_len=4, session_gap="6h")
  ds = load_prepared(prepare_dataset(cfg))
  st = ds.stats
  assert st["skipped_duplicate_rows"] == len(rows) - len(unique) and st["events"] == st["raw_rows"] == len(unique)
  assert st["users"] == 10 and st["items"] == len({r[1] for r in unique}) and st["rows_out_of_order"] == 0
  assert st["sessions"] == _sessions(unique, 6 * 3600)
  a = ds.split("valid", "ctr")
  assert a["items"].shape == (20, 32, 4) and (a["cats"] == 0).all()


def test_foursquare_duplicates_match_source(shared_data):
  """The whole file (≈ 1 s to read on a busy core): the duplicates skipped are the ones SOURCE.md counts."""
  from mos_jax.data.readers import read_foursquare  # noqa: PLC0415
  folder = shared_data / "foursquare-nyc"
  if not (folder / "checkins.csv").is_file():
    pytest.skip(f"{folder} is absent")
  src = (folder / "SOURCE.md").read_text()
  df, counts = read_foursquare(folder)
  assert counts["skipped_duplicate_rows"] == _n(src, r"([\d,]+) rows are exact duplicates")
  assert len(df) + counts["skipped_duplicate_rows"] == _n(src, r"([\d,]+) check-ins from")
  assert df["user"].nunique() == _n(src, r"check-ins from ([\d,]+) users")
  assert df["item"].nunique() == _n(src, r"users at ([\d,]+) POIs")
