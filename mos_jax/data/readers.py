"""Readers: raw interaction logs -> one common interaction table.

Every reader returns a ``pandas.DataFrame`` with columns ``user`` and ``item`` (original ids as strings), ``time``
(int64 unix seconds), ``cat`` (original category as a string, ``""`` = unknown) and ``behavior`` (string, ``""`` when
the source has none), rows in file order, plus a dict of counts for ``stats.json``. Bad input raises ``DataError``
naming the file, the line and the expected form.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pandas as pd

TAOBAO_BEHAVIORS = ("pv", "cart", "fav", "buy")


class DataError(ValueError):
  """Malformed input: the message names the file, the line (1-based) and what was expected."""


def _read_delimited(path: pathlib.Path, sep: str, names: list[str] | None, *, encoding: str = "utf-8",
                    usecols: list[int] | None = None) -> pd.DataFrame:
  """All fields as strings; blank lines kept as rows so row i maps to a known line."""
  if not path.is_file():
    raise DataError(f"{path}: file not found")
  if path.stat().st_size == 0:
    raise DataError(f"{path}: file is empty")
  try:
    return pd.read_csv(path, sep=sep, header=None if names else 0, names=names, dtype=str, keep_default_na=False,
                       skip_blank_lines=False, encoding=encoding, usecols=usecols, engine="c")
  except pd.errors.ParserError as e:  # e.g. "Expected 5 fields in line 3, saw 6"
    raise DataError(f"{path}: {e}".strip()) from None
  except pd.errors.EmptyDataError:
    raise DataError(f"{path}: file is empty") from None


def _check_header(path: pathlib.Path, df: pd.DataFrame, expected: list[str], exact: bool = False) -> None:
  """The header starts with ``expected`` (is exactly it with ``exact``); the error quotes the file's first line as
  written (pandas renames repeated names, e.g. when a data row was taken for a header)."""
  got = [str(c) for c in df.columns]
  if (got if exact else got[:len(expected)]) != expected:
    with open(path, encoding="utf-8", errors="replace") as f:
      first = f.readline().rstrip("\r\n")
    raise DataError(f"{path}: line 1: expected header {','.join(expected)!r}, got {first!r}")


def _require_fields(path: pathlib.Path, df: pd.DataFrame, fields: list[str], first_line: int, form: str,
                    where: str = "line") -> None:
  """Missing (empty) fields -> error at the first offending line (the index holds each row's position in the file)."""
  empty = np.zeros(len(df), bool)
  for f in fields:
    empty |= (df[f].to_numpy(dtype=str) == "")
  if empty.any():
    i = int(np.argmax(empty))
    raise DataError(f"{path}: {where} {df.index[i] + first_line}: missing field(s); expected {form}")


def _to_int(path: pathlib.Path, col: pd.Series, field: str, first_line: int, form: str, where: str = "line"
            ) -> np.ndarray:
  """Integer column, or an error at the first non-integer value (parsed as text: 64-bit ids stay exact)."""
  text = col.astype(str).str.strip()
  ok = text.str.fullmatch(r"[+-]?\d{1,18}(\.0*)?").to_numpy(dtype=bool)
  if not ok.all():
    i = int(np.argmin(ok))
    raise DataError(f"{path}: {where} {col.index[i] + first_line}: {field} {col.iloc[i]!r} is not an integer; "
                    f"expected {form}")
  return text.str.replace(r"\.0*$", "", regex=True).to_numpy(dtype=str).astype(np.int64)


def _ids(path: pathlib.Path, col: pd.Series, field: str, first_line: int, form: str) -> np.ndarray:
  """Integer ids kept as canonical strings (so "007" and "7" are one id)."""
  return _to_int(path, col, field, first_line, form).astype(str)


def _table(user, item, time, cat=None, behavior=None) -> pd.DataFrame:
  n = len(user)
  return pd.DataFrame({
      "user": np.asarray(user, dtype=str), "item": np.asarray(item, dtype=str),
      "time": np.asarray(time, dtype=np.int64),
      "cat": np.asarray(cat, dtype=str) if cat is not None else np.full(n, "", dtype=str),
      "behavior": np.asarray(behavior, dtype=str) if behavior is not None else np.full(n, "", dtype=str)})


def _find_file(data_dir: pathlib.Path, names: tuple[str, ...]) -> pathlib.Path:
  """``data_dir`` may be the file itself or a folder holding one of ``names``."""
  if data_dir.is_file():
    return data_dir
  for name in names:
    if (data_dir / name).is_file():
      return data_dir / name
  raise DataError(f"{data_dir}: none of {', '.join(names)} found")


def _behaviors(path: pathlib.Path, col: pd.Series, first_line: int) -> np.ndarray:
  """The behaviour names of a Taobao log; an unknown one is an error naming its line."""
  beh = col.to_numpy(dtype=str)
  bad = ~np.isin(beh, TAOBAO_BEHAVIORS)
  if bad.any():
    i = int(np.argmax(bad))
    raise DataError(f"{path}: line {col.index[i] + first_line}: unknown behavior {str(beh[i])!r}; "
                    f"expected one of {TAOBAO_BEHAVIORS}")
  return beh


def read_taobao(data_dir: pathlib.Path) -> tuple[pd.DataFrame, dict]:
  """Taobao UserBehavior: ``user,item,category,behavior,timestamp``, no header.

  A cut last line (the file does not end in a newline and the line is incomplete) is skipped and its user's rows are
  dropped, because a head of the original file leaves that user's history incomplete; both are counted.
  """
  path = _find_file(data_dir, ("UserBehavior.csv", "UserBehavior_head.csv"))
  form = "user_id,item_id,category_id,behavior(pv|cart|fav|buy),timestamp"
  names = ["user", "item", "cat", "behavior", "time"]
  df = _read_delimited(path, ",", names)
  counts = {"skipped_truncated_last_line": 0, "skipped_truncated_user_rows": 0}
  with open(path, "rb") as f:
    f.seek(-1, 2)
    ends_with_newline = f.read(1) == b"\n"
  last = df.iloc[-1] if len(df) else None
  if not ends_with_newline and last is not None and (last == "").any():
    user = last["user"]
    df = df.iloc[:-1]
    keep = df["user"].to_numpy(dtype=str) != user
    counts["skipped_truncated_last_line"] = 1
    counts["skipped_truncated_user_rows"] = int((~keep).sum())
    df = df[keep]
  if len(df) == 0:
    raise DataError(f"{path}: no complete rows; expected {form}")
  if not df["user"].iloc[0].strip().lstrip("-").isdigit():
    raise DataError(f"{path}: line 1: {df['user'].iloc[0]!r} is not a user id; Taobao files have no header, "
                    f"expected {form}")
  _require_fields(path, df, names, 1, form)
  beh = _behaviors(path, df["behavior"], 1)
  t = _to_int(path, df["time"], "timestamp", 1, form)
  return _table(_ids(path, df["user"], "user_id", 1, form), _ids(path, df["item"], "item_id", 1, form), t,
                _ids(path, df["cat"], "category_id", 1, form), beh), counts


def read_ml100k(data_dir: pathlib.Path) -> tuple[pd.DataFrame, dict]:
  """MovieLens 100K: ``u.data`` (TAB: user, item, rating, timestamp) + ``u.item`` genre flags.

  An item's category is its first flagged genre in ``u.genre`` order (items carry 1.7 genres on average).
  """
  path = _find_file(data_dir, ("u.data",))
  form = "user_id<TAB>item_id<TAB>rating<TAB>unix_timestamp"
  names = ["user", "item", "rating", "time"]
  df = _read_delimited(path, "\t", names)
  _require_fields(path, df, names, 1, form)
  user = _ids(path, df["user"], "user_id", 1, form)
  item = _ids(path, df["item"], "item_id", 1, form)
  t = _to_int(path, df["time"], "timestamp", 1, form)
  item_cat: dict[str, str] = {}
  counts = {"raw_genres": 0}
  ipath = path.parent / "u.item"
  if ipath.is_file():
    meta = _read_delimited(ipath, "|", [f"c{i}" for i in range(24)], encoding="latin-1")
    mform = "item_id|title|release|video_release|url|19 genre flags"
    _require_fields(ipath, meta, ["c0"] + [f"c{i}" for i in range(5, 24)], 1, mform)
    flags = np.stack([_to_int(ipath, meta[f"c{i}"], "genre flag", 1, mform) for i in range(5, 24)], 1)
    genres = [f"genre{i}" for i in range(19)]
    gpath = path.parent / "u.genre"
    if gpath.is_file():
      rows = [ln.split("|") for ln in gpath.read_text(encoding="latin-1").splitlines() if ln.strip()]
      if len(rows) == 19:
        genres = [r[0] for r in rows]
    counts["raw_genres"] = len(genres)
    first = np.argmax(flags > 0, 1)
    ids = _ids(ipath, meta["c0"], "item_id", 1, mform)
    item_cat = {i: (genres[g] if flags[r, g] > 0 else "") for r, (i, g) in enumerate(zip(ids, first))}
  cat = np.array([item_cat.get(i, "") for i in item], dtype=str) if item_cat else None
  return _table(user, item, t, cat), counts


def read_ml_latest(data_dir: pathlib.Path) -> tuple[pd.DataFrame, dict]:
  """MovieLens latest(-small): ``ratings.csv`` + ``movies.csv``; category = first listed genre."""
  path = _find_file(data_dir, ("ratings.csv",))
  form = "userId,movieId,rating,timestamp"
  df = _read_delimited(path, ",", None)
  _check_header(path, df, form.split(","))
  _require_fields(path, df, ["userId", "movieId", "timestamp"], 2, form)
  user = _ids(path, df["userId"], "userId", 2, form)
  item = _ids(path, df["movieId"], "movieId", 2, form)
  t = _to_int(path, df["timestamp"], "timestamp", 2, form)
  cat = None
  counts = {"raw_genres": 0}
  mpath = path.parent / "movies.csv"
  if mpath.is_file():
    meta = _read_delimited(mpath, ",", None)
    _check_header(mpath, meta, ["movieId", "title", "genres"])
    mids = _ids(mpath, meta["movieId"], "movieId", 2, "movieId,title,genres")
    genre_lists = meta["genres"].str.split("|")
    counts["raw_genres"] = len({g for gs in genre_lists for g in gs if g})
    first = [gs[0] if gs and gs[0] != "(no genres listed)" else "" for gs in genre_lists]
    lookup = dict(zip(mids, first))
    cat = np.array([lookup.get(i, "") for i in item], dtype=str)
  return _table(user, item, t, cat), counts


def read_amazon_rechorus(data_dir: pathlib.Path) -> tuple[pd.DataFrame, dict]:
  """ReChorus Amazon CSVs: ``train/dev/test.csv`` (``user_id,item_id,time``) + ``item_meta.csv`` (``i_category``).

  The three files are concatenated in that order (ties in the day-level timestamps keep it) and split again here.
  """
  root = data_dir if data_dir.is_dir() else data_dir.parent
  form = "user_id,item_id,time"
  parts = []
  for name in ("train.csv", "dev.csv", "test.csv"):
    path = root / name
    if not path.is_file():
      if name == "train.csv":
        raise DataError(f"{path}: file not found")
      continue
    with open(path, encoding="utf-8") as f:  # upstream ReChorus ships TAB-separated files, the fork commas
      sep = "\t" if "\t" in f.readline() else ","
    df = _read_delimited(path, sep, None)
    _check_header(path, df, form.split(","))
    _require_fields(path, df, ["user_id", "item_id", "time"], 2, form)
    parts.append((_ids(path, df["user_id"], "user_id", 2, form), _ids(path, df["item_id"], "item_id", 2, form),
                  _to_int(path, df["time"], "time", 2, form)))
  user, item, t = (np.concatenate(c) for c in zip(*parts))
  cat = None
  mpath = root / "item_meta.csv"
  if mpath.is_file():
    meta = _read_delimited(mpath, ",", None, usecols=[0, 1])
    _check_header(mpath, meta, ["item_id", "i_category"])
    mids = _ids(mpath, meta["item_id"], "item_id", 2, "item_id,i_category,...")
    mcat = _ids(mpath, meta["i_category"], "i_category", 2, "item_id,i_category,...")
    lookup = dict(zip(mids, np.where(mcat == "0", "", mcat)))  # 0 = missing in ReChorus
    cat = np.array([lookup.get(i, "") for i in item], dtype=str)
  return _table(user, item, t, cat), {}


def _nonneg_ids(path: pathlib.Path, col: pd.Series, field: str, first_line: int, form: str) -> np.ndarray:
  """Like ``_ids``, for sources whose ids are row indices (0- or 1-based): a negative id is an error."""
  v = _to_int(path, col, field, first_line, form)
  neg = v < 0
  if neg.any():
    i = int(np.argmax(neg))
    raise DataError(f"{path}: line {col.index[i] + first_line}: {field} {col.iloc[i]!r} is negative; expected {form}")
  return v.astype(str)


def read_taobao_sslrec(data_dir: pathlib.Path) -> tuple[pd.DataFrame, dict]:
  """SSLRec's "tmall" multi-behaviour log (a filtered Taobao UserBehavior subset): ``events.csv``,
  ``user,item,behavior,timestamp`` with a header.

  Ids are SSLRec's 0-based matrix indices, kept as strings like every reader's ids (``"0"`` is an ordinary id; dense
  ids are assigned from 1 later, 0 stays padding). Behaviours are ``fav``/``cart``/``buy`` (``pv`` is accepted too,
  should a rebuilt file hold page views); all are events. No categories (``cat`` = ``""``, dense category 0).
  ``test_buy.csv`` (SSLRec's held-out last buy per test user) is **not read**: it has no timestamps, so it cannot be
  placed in the sequence, and the library makes its own temporal splits from ``events.csv``.
  """
  path = _find_file(data_dir, ("events.csv",))
  form = "user,item,behavior(fav|cart|buy|pv),timestamp with 0-based integer ids and unix seconds"
  names = ["user", "item", "behavior", "timestamp"]
  df = _read_delimited(path, ",", None)
  _check_header(path, df, names, exact=True)
  _require_fields(path, df, names, 2, form)
  beh = _behaviors(path, df["behavior"], 2)
  t = _to_int(path, df["timestamp"], "timestamp", 2, form)
  return _table(_nonneg_ids(path, df["user"], "user", 2, form), _nonneg_ids(path, df["item"], "item", 2, form), t,
                behavior=beh), {}


def read_foursquare(data_dir: pathlib.Path) -> tuple[pd.DataFrame, dict]:
  """Foursquare NYC check-ins as preprocessed by STAN: ``checkins.csv``, ``user,item,timestamp`` with a header.

  ``item`` is the POI id (1-based; ``pois.csv`` with its lat/lon is not read). ``timestamp`` is seconds on a
  **relative** clock (source minutes x 60, origin unknown): fine for time-gap sessions and the ``times`` feature,
  which use differences only, but not a calendar date. Exact duplicate rows (same user, POI and timestamp; 458 in
  the shared file) are one check-in recorded twice: the later copies are dropped and counted as
  ``skipped_duplicate_rows``. Rows that share (user, timestamp) with a different POI are kept. No categories.
  """
  path = _find_file(data_dir, ("checkins.csv",))
  form = "user,item,timestamp with integer user and POI ids and integer seconds"
  names = ["user", "item", "timestamp"]
  df = _read_delimited(path, ",", None)
  _check_header(path, df, names, exact=True)
  _require_fields(path, df, names, 2, form)
  user = _nonneg_ids(path, df["user"], "user", 2, form)
  item = _nonneg_ids(path, df["item"], "item", 2, form)
  t = _to_int(path, df["timestamp"], "timestamp", 2, form)
  dup = pd.DataFrame({"u": user, "i": item, "t": t}).duplicated().to_numpy()  # keeps the first copy
  keep = ~dup
  return _table(user[keep], item[keep], t[keep]), {"skipped_duplicate_rows": int(dup.sum())}


def parse_columns(spec: str) -> dict[str, str]:
  """``"user=uid,item=iid,time=ts,category=cat,behavior=type"`` -> {role: column}."""
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    role, _, col = part.partition("=")
    if role not in ("user", "item", "time", "category", "behavior") or not col:
      raise DataError(f"columns: bad entry {part!r}; expected role=column with role in "
                      "user|item|time|category|behavior")
    out[role] = col
  return {"user": "user", "item": "item", "time": "time", **out}


def read_generic(data_dir: pathlib.Path, columns: str) -> tuple[pd.DataFrame, dict]:
  """Any CSV / TSV / Parquet file with a header row; ``columns`` maps roles to column names.

  Times are integer unix seconds, or (when the first value is not a number) ISO-8601 date-times.
  """
  if data_dir.is_dir():
    files = sorted(p for p in data_dir.iterdir() if p.suffix in (".csv", ".tsv", ".parquet"))
    if len(files) != 1:
      raise DataError(f"{data_dir}: expected exactly one .csv/.tsv/.parquet file, found {len(files)}; "
                      "pass the file itself as --data-dir")
    data_dir = files[0]
  path = data_dir
  cols = parse_columns(columns)
  if path.suffix == ".parquet":
    df = pd.read_parquet(path)
    df = df.astype(object).where(df.notna(), "").astype(str)  # missing -> "" like the CSV path
    first_line, where = 1, "row"
  else:
    df = _read_delimited(path, "\t" if path.suffix == ".tsv" else ",", None)
    first_line, where = 2, "line"
  missing = [c for c in cols.values() if c not in df.columns]
  if missing:
    raise DataError(f"{path}: {where} 1: header lacks column(s) {missing}; header is {list(df.columns)}, "
                    f"expected columns {cols} (set --columns role=name,...)")
  form = ",".join(f"{r}={c}" for r, c in cols.items())
  _require_fields(path, df, [cols["user"], cols["item"], cols["time"]], first_line, form, where)
  tcol = df[cols["time"]]
  if len(tcol) and re.fullmatch(r"-?\d+(\.0*)?", tcol.iloc[0].strip()) is None:
    ts = pd.to_datetime(tcol, errors="coerce", format="ISO8601", utc=True)
    bad = ts.isna().to_numpy()
    if bad.any():
      i = int(np.argmax(bad))
      raise DataError(f"{path}: {where} {tcol.index[i] + first_line}: time {tcol.iloc[i]!r} is neither unix seconds "
                      "nor ISO-8601")
    t = ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
  else:
    t = _to_int(path, tcol, "time", first_line, form, where)
  cat = df[cols["category"]].to_numpy(dtype=str) if "category" in cols else None
  beh = df[cols["behavior"]].to_numpy(dtype=str) if "behavior" in cols else None
  return _table(df[cols["user"]].to_numpy(dtype=str), df[cols["item"]].to_numpy(dtype=str), t, cat, beh), {}


READERS = {
    "taobao": read_taobao,
    "ml-100k": read_ml100k,
    "ml-latest-small": read_ml_latest,
    "ml-latest": read_ml_latest,
    "amazon-rechorus": read_amazon_rechorus,
    "taobao_sslrec": read_taobao_sslrec,
    "foursquare": read_foursquare,
}


def read_dataset(name: str, data_dir: str, columns: str = "") -> tuple[pd.DataFrame, dict]:
  """Dispatch on the dataset name; ``csv`` (alias ``generic``) uses the column mapping."""
  path = pathlib.Path(data_dir).expanduser()
  if not data_dir or not path.exists():
    raise DataError(f"--data-dir {data_dir!r} does not exist (dataset {name!r} needs the raw files)")
  if name in ("csv", "generic"):
    return read_generic(path, columns)
  if name not in READERS:
    raise DataError(f"unknown dataset {name!r}; expected synthetic, csv or one of {sorted(READERS)}")
  return READERS[name](path)
