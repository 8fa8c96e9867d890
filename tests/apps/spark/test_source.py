"""The bucket data source's pure half: locations, partition planning, line ranges, SigV4
(checked against the blobstore's own verifier), part names."""

from __future__ import annotations

import datetime
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.spark.source import (
    ObjectRef,
    Piece,
    SourceError,
    canonical_query,
    fetch_range,
    lines_of,
    parse_location,
    part_key,
    plan,
    sign,
)
from meshcloud.errors import MeshError


def test_locations():
    assert parse_location("s3://books/in/") == ("books", "in/")
    assert parse_location("books/in") == ("books", "in")
    assert parse_location("books") == ("books", "")
    assert parse_location("s3a://b/x/y") == ("b", "x/y")
    for bad in ("", "  ", "http://b/x", "Books/x", "b/../x", "/x", 42):
        with pytest.raises(SourceError):
            parse_location(bad)  # type: ignore[arg-type]


def test_plan_one_partition_per_object_skips_markers_and_empties():
    refs = [ObjectRef("in/b.txt", 5), ObjectRef("in/a.txt", 7), ObjectRef("in/", 0),
            ObjectRef("in/empty", 0), ObjectRef("in/_SUCCESS", 20)]
    assert plan(refs) == [Piece("in/a.txt"), Piece("in/b.txt")]


def test_plan_cuts_large_text_but_not_csv():
    refs = [ObjectRef("big.txt", 10)]
    assert plan(refs, split=4) == [Piece("big.txt", 0, 4), Piece("big.txt", 4, 8),
                                   Piece("big.txt", 8, -1)]
    assert plan(refs, split=4, fmt="csv") == [Piece("big.txt")]
    assert plan(refs, split=10) == [Piece("big.txt")]
    with pytest.raises(SourceError):
        plan(refs, split=0)


def read_all(data: bytes, split: int) -> list[str]:
    """Every line, read range by range as executors do."""
    out: list[str] = []
    for piece in plan([ObjectRef("k", len(data))], split=split):
        begin, end = fetch_range(piece)
        chunk = data[begin:] if end < 0 else data[begin:end]
        out += list(lines_of(chunk, begin, piece))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="ab \r", max_size=12), min_size=1, max_size=30),
       st.integers(min_value=1, max_value=40), st.booleans())
def test_ranges_read_every_line_exactly_once(lines, split, trailing):
    data = "\n".join(lines).encode() + (b"\n" if trailing else b"")
    if not data:
        return
    want = data.decode().split("\n")
    if want[-1] == "":  # a final newline ends the last line; it does not start one
        want.pop()
    want = [w.rstrip("\r") for w in want]
    assert read_all(data, split) == want


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=60).map(lambda b: bytes(
           [b"ab\n\r\xc3\xa9\xff"[x % 7] for x in b])),
       st.integers(0, 60), st.integers(-1, 60), st.integers(0, 8))
def test_arrow_lines_are_the_lines_of_a_range(obj, start, end, slack):
    """The vectorised cut (``line_span`` + Arrow) yields what ``lines_of`` does, for any
    range and any bytes, new lines, carriage returns and broken UTF-8 included."""
    from apps.spark.source import line_span, text_batches

    start = min(start, len(obj))
    if end >= 0:
        end = max(end, start + 1)
    piece = Piece("k", start, end)
    begin = start - 1 if start > 0 else 0
    chunk = obj[begin:] if end < 0 else obj[begin:end + slack]
    want = list(lines_of(chunk, begin, piece))
    span = line_span(chunk, begin, piece)
    if span is None:
        assert want == []
    else:
        assert [x.decode("utf-8", errors="replace").rstrip("\r")
                for x in chunk[span[0]:span[1]].split(b"\n")] == want
    got = [v for b in text_batches(chunk, begin, piece, "line", rows=3)
           for v in b.column(0).to_pylist()]
    assert got == want


def test_rows_become_string_batches():
    from apps.spark.source import csv_rows, row_batches

    rows = list(csv_rows(b"k,v\n1,a\n2\n3,\"x,y\"\n", True, 2))
    batches = list(row_batches(iter(rows), ["k", "v"], size=2))
    assert [b.num_rows for b in batches] == [2, 1]
    assert [r for b in batches for r in b.to_pylist()] == [
        {"k": "1", "v": "a"}, {"k": "2", "v": None}, {"k": "3", "v": "x,y"}]
    assert list(row_batches(iter([]), ["k"])) == []


def test_part_keys():
    assert part_key("out/run1", 3, 17, "csv") == "out/run1/part-00003-17.csv"
    assert part_key("out/run1/", 0, 1, "text") == "out/run1/part-00000-1.txt"
    assert part_key("", 2, 5, "json") == "part-00002-5.json"


def test_sigv4_is_accepted_by_the_blobstore_verifier():
    from blobstore.s3.request import S3Request
    from blobstore.s3.sigv4 import StaticCredentials, verify_request

    now = datetime.datetime(2026, 12, 7, 4, 0, 0, tzinfo=datetime.UTC)
    query = {"list-type": "2", "prefix": "in/a b"}
    headers = sign("GET", "127.0.0.1:9000", "/books", query, b"", "AKID", "s3cr3t", now,
                   {"range": "bytes=0-9"})
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID/20261207/")
    keys = StaticCredentials({"AKID": "s3cr3t"})
    request = S3Request("GET", "/books", canonical_query(query), tuple(headers.items()))
    auth = verify_request(request, keys, now.timestamp())
    assert auth is not None and auth.access_key == "AKID"
    bad = sign("GET", "127.0.0.1:9000", "/books", query, b"", "AKID", "wrong", now, {})
    with pytest.raises(MeshError, match="signature"):
        verify_request(S3Request("GET", "/books", canonical_query(query),
                                 tuple(bad.items())), keys, now.timestamp())


# --- Parquet --------------------------------------------------------------------------------


def test_plan_reads_each_parquet_object_whole_and_skips_hidden_ones():
    refs = [ObjectRef("t/part-00001-7.parquet", 10 << 20), ObjectRef("t/part-00000-3.parquet", 9),
            ObjectRef("t/_SUCCESS", 40), ObjectRef("t/_metadata", 90), ObjectRef("t/.crc", 8)]
    assert plan(refs, split=4, fmt="parquet") == [Piece("t/part-00000-3.parquet"),
                                                  Piece("t/part-00001-7.parquet")]
    assert part_key("t/", 2, 9, "parquet") == "t/part-00002-9.parquet"


def parquet_of(table) -> bytes:
    import io

    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def test_the_footer_of_a_parquet_object_gives_its_schema():
    import pyarrow as pa
    import pyarrow.parquet as pq

    from apps.spark.source import FOOTER_TAIL, footer_file, footer_length, footer_start

    small = parquet_of(pa.table({"a": list(range(50_000)), "s": ["x"] * 50_000}))
    tail = small[footer_start(len(small)):]
    assert len(tail) == FOOTER_TAIL < len(small)
    assert footer_length(tail) < len(tail)
    assert pq.read_schema(pa.BufferReader(footer_file(tail))).names == ["a", "s"]
    # a footer longer than the first read: the length says how much more to fetch
    wide = parquet_of(pa.table({f"column_{i:04d}": [i] for i in range(1500)}))
    tail = wide[footer_start(len(wide)):]
    need = footer_length(tail)
    assert need > len(tail)
    with pytest.raises(SourceError, match="footer"):
        footer_file(tail)
    assert len(pq.read_schema(pa.BufferReader(footer_file(wide[-need:])))) == 1500
    for bad in (b"", b"PAR1", b"a,b\n1,2\n" * 10):
        with pytest.raises(SourceError, match="not a Parquet object"):
            footer_length(bad, "k.csv")


class MemS3:
    """An in-memory bucket with the calls of the data source (a unit test's fake)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.gets: list[tuple[str, int, int]] = []

    def here(self) -> MemS3:
        return self

    def get(self, bucket: str, key: str, start: int = 0, end: int = -1) -> bytes:
        self.gets.append((key, start, end))
        data = self.objects[key]
        return data[start:] if end < 0 else data[start:end]

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.objects[key] = body


def test_parquet_write_then_read_through_the_source_classes():
    import pyarrow as pa
    from pyspark.sql.types import (
        BooleanType,
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
    )

    from apps.spark.source import _ParquetWriter, _Part, _Reader, _to_arrow, parquet_schema

    schema = StructType([StructField("id", LongType()), StructField("x", DoubleType()),
                         StructField("s", StringType()), StructField("b", BooleanType())])
    arrow = _to_arrow(schema)
    s3 = MemS3()
    writer = _ParquetWriter(s3, "bk", "out", arrow)  # type: ignore[arg-type]
    batch = pa.RecordBatch.from_pydict(
        {"id": [1, 2, 3], "x": [0.5, None, 2.0], "s": ["a", "b", None], "b": [True, False, True]},
        schema=arrow)
    written = writer.write(iter([batch, batch]))
    assert written.rows == 6 and written.key == "out/part-00000-0.parquet"
    empty = _ParquetWriter(s3, "bk", "empty", arrow).write(iter([]))  # type: ignore[arg-type]
    assert empty.rows == 0
    writer.commit([written])
    assert json.loads(s3.objects["out/_SUCCESS"]) == {"rows": 6, "objects": [written.key]}

    size = len(s3.objects[written.key])
    assert parquet_schema(s3, "bk", written.key, size) == schema  # type: ignore[arg-type]
    assert s3.gets == [(written.key, 0, size)]  # a small object: one read of its tail

    refs = [ObjectRef(k, len(v)) for k, v in s3.objects.items() if k.startswith("out/")]
    reader = _Reader(s3, "bk", plan(refs, fmt="parquet"), "parquet", False,  # type: ignore
                     ["s", "id"], _to_arrow(StructType([schema["s"], schema["id"]])))
    rows = [r for part in reader.partitions() for b in reader.read(part)
            for r in b.to_pylist()]
    assert rows == [{"s": "a", "id": 1}, {"s": "b", "id": 2}, {"s": None, "id": 3}] * 2
    # a column the objects lack, and an object that is not Parquet: one clear error
    wrong = _Reader(s3, "bk", [Piece(written.key)], "parquet", False, ["nope"],  # type: ignore
                    _to_arrow(StructType([StructField("nope", LongType())])))
    with pytest.raises(SourceError, match=r"part-00000-0\.parquet"):
        list(wrong.read(_Part(Piece(written.key))))
    s3.objects["out/bad.parquet"] = b"id,x\n1,2\n"
    with pytest.raises(SourceError):
        list(reader.read(_Part(Piece("out/bad.parquet"))))
