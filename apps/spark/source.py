"""The ``meshcloud`` Spark data source: read and write objects of the mesh's buckets.

    spark.read.format("meshcloud").load("bucket/prefix")            # text, one row a line
    spark.read.format("meshcloud").option("format", "csv").option("header", "true")
         .load("s3://bucket/prefix")
    spark.read.format("meshcloud").option("format", "parquet").load("bucket/prefix")
    df.write.format("meshcloud").mode("append").save("bucket/prefix")

One input partition per object (objects larger than ``split`` bytes, text only, are cut
into byte ranges that end on line boundaries); one output object per task
(``PREFIX/part-PARTITION-ID.FORMAT``). Parquet goes through Arrow both ways: the schema
comes from the footer of the first object (one ranged GET of its tail), a partition reads
its whole object and hands Spark Arrow record batches, a write task gets record batches and
stores one Parquet object (snappy). Every read hands Spark Arrow record batches (text
lines cut by Arrow in one step: :func:`line_span`), which Spark takes whole where it
would convert tuples one by one. Every request goes to the S3 API of the node the
Python worker runs on (``MESHCLOUD_S3_URL``, set by the Spark worker of that node), signed
with SigV4 by the key the job was given (``MESHCLOUD_S3_ACCESS_KEY`` / ``_SECRET``, read on
the driver and carried inside the pickled reader and writer).

This file is also the module ``pyspark_meshcloud`` that the Spark service puts on the
Python path of drivers and executors (Spark registers a ``pyspark_*`` module's
``DefaultSource`` by itself), so it imports only the standard library and pyspark, and the
planning half (:func:`plan`, :func:`parse_location`, :class:`ObjectRef`) is pure.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import hmac
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

FORMATS = ("text", "csv", "json", "parquet")
"""Read and write formats (``json``: one JSON object a line)."""
FOOTER_TAIL = 64 << 10
"""Bytes of a Parquet object's end read for its schema (more if its footer is longer)."""
MAGIC = b"PAR1"
BATCH_ROWS = 32768
"""Rows per Arrow record batch handed to Spark."""
DEFAULT_SPLIT = 64 << 20
"""Text objects above this many bytes are read as several ranges."""
MAX_OBJECTS = 100_000
LINE_SLACK = 1 << 20
"""Bytes read past a range's end to finish its last line (longer lines are cut)."""
REGION = "us-east-1"
TIMEOUT = 60.0


class SourceError(ValueError):
    """A bad location, option or answer of the S3 API (one clear line)."""


@dataclass(frozen=True, slots=True)
class ObjectRef:
    key: str
    size: int


@dataclass(frozen=True, slots=True)
class Piece:
    """What one partition reads: ``[start, end)`` of one object (end -1: to the end).
    A range other than the first skips its first (partial) line; every range reads on
    past its end to the end of the line it is in."""

    key: str
    start: int = 0
    end: int = -1


def parse_location(text: str) -> tuple[str, str]:
    """``s3://bucket/prefix``, ``bucket/prefix`` or ``bucket`` → (bucket, prefix)."""
    if not isinstance(text, str) or not text.strip():
        raise SourceError("give a location: bucket/prefix or s3://bucket/prefix")
    body = text.strip()
    if body.startswith("s3://") or body.startswith("s3a://"):
        body = body.split("://", 1)[1]
    elif "://" in body:
        raise SourceError(f"location {text!r}: only s3:// or bucket/prefix")
    bucket, _, prefix = body.partition("/")
    if not bucket or len(bucket) > 63 or not all(c.isalnum() or c in "-." for c in bucket) \
            or bucket != bucket.lower():
        raise SourceError(f"location {text!r}: {bucket!r} is not a bucket name")
    if ".." in prefix.split("/"):
        raise SourceError(f"location {text!r}: no '..' in a prefix")
    return bucket, prefix


def plan(objects: Sequence[ObjectRef], *, split: int = DEFAULT_SPLIT,
         fmt: str = "text") -> list[Piece]:
    """The partitions of a read, in key order: empty objects and "directory markers"
    (keys ending in /) skipped, the outputs' ``_SUCCESS`` markers skipped, large text
    objects cut into ranges of ``split`` bytes (CSV and JSON objects stay whole: a header
    and quoted new lines belong to the whole object; a Parquet object too, and its
    hidden neighbours — names starting with ``_`` or ``.`` — are not read)."""
    if split <= 0:
        raise SourceError("split must be a positive number of bytes")
    pieces: list[Piece] = []
    for ref in sorted(objects, key=lambda r: r.key):
        name = ref.key.rsplit("/", 1)[-1]
        if ref.size <= 0 or ref.key.endswith("/") or name == "_SUCCESS":
            continue
        if fmt == "parquet" and name.startswith(("_", ".")):
            continue
        if fmt != "text" or ref.size <= split:
            pieces.append(Piece(ref.key))
            continue
        for start in range(0, ref.size, split):
            end = min(start + split, ref.size)
            pieces.append(Piece(ref.key, start, -1 if end == ref.size else end))
    return pieces


def footer_start(size: int) -> int:
    """Where the first read of a Parquet object's tail starts."""
    return max(0, size - FOOTER_TAIL)


def footer_length(tail: bytes, key: str = "") -> int:
    """Bytes at the end of a Parquet object that hold its footer (metadata, its length,
    the magic), from any tail of it that has the last 8 bytes."""
    if len(tail) < 8 or tail[-4:] != MAGIC:
        raise SourceError(f"{key or 'object'}: not a Parquet object (no PAR1 at its end)")
    return int.from_bytes(tail[-8:-4], "little") + 8


def footer_file(tail: bytes, key: str = "") -> bytes:
    """A minimal Parquet "file" (magic + footer) whose schema Arrow can read, from a tail
    that holds the whole footer (:func:`footer_length` says how long it must be)."""
    need = footer_length(tail, key)
    if need > len(tail):
        raise SourceError(f"{key or 'object'}: footer of {need} bytes, {len(tail)} read")
    return MAGIC + tail[-need:]


def part_key(prefix: str, partition: int, task: int, fmt: str) -> str:
    """The object one write task makes."""
    base = prefix.rstrip("/")
    name = f"part-{partition:05d}-{task}.{'txt' if fmt == 'text' else fmt}"
    return f"{base}/{name}" if base else name


# --- S3 over plain HTTP, signed with SigV4 ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class S3:
    endpoint: str
    access_key: str
    secret: str

    @classmethod
    def from_env(cls, options: dict[str, str] | None = None) -> S3:
        opts = options or {}
        endpoint = opts.get("endpoint") or os.environ.get("MESHCLOUD_S3_URL", "")
        key = opts.get("accessKey") or os.environ.get("MESHCLOUD_S3_ACCESS_KEY", "")
        secret = opts.get("secretKey") or os.environ.get("MESHCLOUD_S3_SECRET", "")
        if not endpoint or not key or not secret:
            raise SourceError("no S3 endpoint or key: run the job with `meshcloud spark "
                              "submit`, or give the options endpoint, accessKey, secretKey")
        return cls(endpoint.rstrip("/"), key, secret)

    def here(self) -> S3:
        """The same key against this machine's node (an executor's nearest S3 API)."""
        local = os.environ.get("MESHCLOUD_S3_URL", "").rstrip("/")
        return S3(local, self.access_key, self.secret) if local else self

    def request(self, method: str, bucket: str, key: str = "", *,
                query: dict[str, str] | None = None, body: bytes = b"",
                headers: dict[str, str] | None = None) -> bytes:
        url = urllib.parse.urlsplit(self.endpoint)
        path = "/" + urllib.parse.quote(bucket) + ("/" + urllib.parse.quote(key, safe="/~")
                                                   if key else "")
        signed = sign(method, url.netloc, path, query or {}, body, self.access_key,
                      self.secret, datetime.datetime.now(datetime.UTC), headers or {})
        qs = canonical_query(query or {})
        full = f"{url.scheme}://{url.netloc}{path}" + (f"?{qs}" if qs else "")
        req = urllib.request.Request(full, data=body if method == "PUT" else None,
                                     method=method, headers=signed)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                data: bytes = resp.read()
                return data
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:400].decode(errors="replace")
            code = _xml_text(detail, "Code") or str(exc.code)
            raise SourceError(f"S3 {method} {bucket}/{key}: {code} "
                              f"{_xml_text(detail, 'Message')}".strip()) from None
        except (urllib.error.URLError, OSError) as exc:
            raise SourceError(f"S3 {method} {bucket}/{key} at {self.endpoint}: {exc}"
                              ) from None

    def list(self, bucket: str, prefix: str) -> list[ObjectRef]:
        out: list[ObjectRef] = []
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
            if token:
                query["continuation-token"] = token
            root = ET.fromstring(self.request("GET", bucket, query=query))
            ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
            for item in root.iter(f"{ns}Contents"):
                out.append(ObjectRef(item.findtext(f"{ns}Key") or "",
                                     int(item.findtext(f"{ns}Size") or 0)))
            if len(out) > MAX_OBJECTS:
                raise SourceError(f"more than {MAX_OBJECTS} objects under {bucket}/{prefix}")
            token = root.findtext(f"{ns}NextContinuationToken") or ""
            if (root.findtext(f"{ns}IsTruncated") or "false") != "true" or not token:
                return out

    def get(self, bucket: str, key: str, start: int = 0, end: int = -1) -> bytes:
        headers = {}
        if start or end >= 0:
            headers["range"] = f"bytes={start}-" + (str(end - 1) if end >= 0 else "")
        return self.request("GET", bucket, key, headers=headers)

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.request("PUT", bucket, key, body=body)


def canonical_query(query: dict[str, str]) -> str:
    return "&".join(f"{urllib.parse.quote(k, safe='-_.~')}="
                    f"{urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(query.items()))


def sign(method: str, host: str, path: str, query: dict[str, str], body: bytes,
         access_key: str, secret: str, now: datetime.datetime,
         extra: dict[str, str]) -> dict[str, str]:
    """The headers of a SigV4-signed request (service s3, region us-east-1)."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    date = stamp[:8]
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp,
               **{k.lower(): v for k, v in extra.items()}}
    names = sorted(headers)
    canonical = "\n".join([method, path, canonical_query(query),
                           "".join(f"{n}:{headers[n].strip()}\n" for n in names),
                           ";".join(names), payload])
    scope = f"{date}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (date, REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return headers


def _xml_text(text: str, tag: str) -> str:
    start = text.find(f"<{tag}>")
    end = text.find(f"</{tag}>")
    return text[start + len(tag) + 2:end] if 0 <= start < end else ""


# --- decoding ------------------------------------------------------------------------------


def fetch_range(piece: Piece) -> tuple[int, int]:
    """The bytes ``[begin, end)`` to fetch for ``piece`` (end -1: to the end): from one
    byte before its start (to tell whether a line starts there) to a little past its end
    (to finish its last line)."""
    begin = piece.start - 1 if piece.start > 0 else 0
    return begin, -1 if piece.end < 0 else piece.end + LINE_SLACK


def lines_of(data: bytes, begin: int, piece: Piece) -> Iterator[str]:
    """The lines that start inside ``piece``, from ``data`` that holds the object's bytes
    from offset ``begin`` (see :func:`fetch_range`)."""
    pos = 0
    if piece.start > 0:
        cut = data.find(b"\n")
        if cut < 0:
            return
        pos = cut + 1
    while pos < len(data):
        if piece.end >= 0 and begin + pos >= piece.end:
            return
        nl = data.find(b"\n", pos)
        line = data[pos:] if nl < 0 else data[pos:nl]
        pos = len(data) if nl < 0 else nl + 1
        yield line.decode("utf-8", errors="replace").rstrip("\r")


def line_span(data: bytes, begin: int, piece: Piece) -> tuple[int, int] | None:
    """``(lo, hi)``: ``data[lo:hi].split(b"\\n")`` are exactly the lines :func:`lines_of`
    yields (before decoding); None when it yields none. Lets a reader cut the lines in
    one vectorised step instead of one at a time."""
    pos = 0
    if piece.start > 0:
        cut = data.find(b"\n")
        if cut < 0:
            return None
        pos = cut + 1
    if pos >= len(data) or (piece.end >= 0 and begin + pos >= piece.end):
        return None
    if piece.end < 0 or piece.end - begin > len(data):  # to the end of what was read
        return pos, len(data) - 1 if data.endswith(b"\n") else len(data)
    nl = data.find(b"\n", piece.end - begin - 1)  # ends the last line starting inside
    return pos, len(data) if nl < 0 else nl


def text_batches(data: bytes, begin: int, piece: Piece, column: str = "value",
                 rows: int = BATCH_ROWS) -> Iterator[Any]:
    """The lines of :func:`lines_of` as Arrow record batches of one string column (split
    by Arrow, not line by line in Python)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    span = line_span(data, begin, piece)
    if span is None:
        return
    text = data[span[0]:span[1]].decode("utf-8", errors="replace")
    lines = pc.split_pattern(pa.array([text], pa.large_string()), "\n").flatten()
    lines = pc.utf8_rtrim(lines, characters="\r").cast(pa.string())
    for offset in range(0, len(lines), rows):
        yield pa.RecordBatch.from_arrays([lines.slice(offset, rows)], names=[column])


def row_batches(rows: Iterator[tuple[Any, ...]], columns: Sequence[str],
                size: int = BATCH_ROWS // 4) -> Iterator[Any]:
    """Rows of string cells as Arrow record batches (Spark takes a batch in one step, a
    row at a time it converts each)."""
    import pyarrow as pa

    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield _batch(pa, chunk, columns)
            chunk = []
    if chunk:
        yield _batch(pa, chunk, columns)


def _batch(pa: Any, chunk: list[tuple[Any, ...]], columns: Sequence[str]) -> Any:
    arrays = [pa.array([row[i] for row in chunk], pa.string()) for i in range(len(columns))]
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


def csv_rows(data: bytes, header: bool, width: int) -> Iterator[tuple[str | None, ...]]:
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace")))
    for i, row in enumerate(reader):
        if header and i == 0:
            continue
        if not row:
            continue
        cells: list[str | None] = list(row[:width])
        yield tuple(cells + [None] * (width - len(cells)))


def csv_header(data: bytes) -> list[str]:
    first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
    return next(csv.reader([first]), [])


# --- the Spark side ------------------------------------------------------------------------

try:
    from pyspark.sql.datasource import (
        DataSource,
        DataSourceArrowWriter,
        DataSourceReader,
        DataSourceWriter,
        InputPartition,
        WriterCommitMessage,
    )
    from pyspark.sql.types import StringType, StructField, StructType
except ImportError:  # the pure half works without pyspark (tests, the node's planning)
    DataSource = object  # type: ignore[assignment,misc]
    DataSourceReader = DataSourceWriter = WriterCommitMessage = object  # type: ignore
    DataSourceArrowWriter = object  # type: ignore[assignment,misc]
    InputPartition = object  # type: ignore[assignment,misc]


class _Part(InputPartition):  # type: ignore[misc,valid-type]
    def __init__(self, piece: Piece) -> None:
        self.piece = piece


class _Reader(DataSourceReader):  # type: ignore[misc,valid-type]
    def __init__(self, s3: S3, bucket: str, pieces: list[Piece], fmt: str, header: bool,
                 columns: list[str], arrow_schema: Any = None) -> None:
        self.s3, self.bucket, self.pieces = s3, bucket, pieces
        self.fmt, self.header, self.columns = fmt, header, columns
        self.arrow_schema = arrow_schema

    def partitions(self) -> list[_Part]:
        return [_Part(p) for p in self.pieces]

    def read(self, partition: _Part) -> Iterator[Any]:
        piece = partition.piece
        s3 = self.s3.here()
        if self.fmt == "text":
            begin, end = fetch_range(piece)
            data = s3.get(self.bucket, piece.key, begin, end)
            yield from text_batches(data, begin, piece, self.columns[0])
            return
        data = s3.get(self.bucket, piece.key)
        if self.fmt == "parquet":
            yield from parquet_batches(data, self.arrow_schema, piece.key)
            return
        if not self.columns:
            return
        if self.fmt == "csv":
            yield from row_batches(csv_rows(data, self.header, len(self.columns)),
                                   self.columns)
            return
        yield from row_batches(json_rows(data, self.columns), self.columns)


def json_rows(data: bytes, columns: Sequence[str]) -> Iterator[tuple[str | None, ...]]:
    """One row a JSON object line: the columns' values as strings (None when absent)."""
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            value = json.loads(line)
            yield tuple(None if value.get(c) is None else str(value.get(c)) for c in columns)


@dataclass
class _Written(WriterCommitMessage):  # type: ignore[misc,valid-type]
    key: str
    rows: int


class _Writer(DataSourceWriter):  # type: ignore[misc,valid-type]
    def __init__(self, s3: S3, bucket: str, prefix: str, fmt: str, columns: list[str],
                 header: bool) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix
        self.fmt, self.columns, self.header = fmt, columns, header

    def write(self, rows: Iterator[Any]) -> _Written:
        partition, task = _task()
        out = io.StringIO()
        count = 0
        if self.fmt == "csv":
            w = csv.writer(out, lineterminator="\n")
            if self.header:
                w.writerow(self.columns)
            for row in rows:
                w.writerow(["" if v is None else v for v in row])
                count += 1
        elif self.fmt == "json":
            for row in rows:
                out.write(json.dumps(dict(zip(self.columns, row, strict=False)),
                                     default=str) + "\n")
                count += 1
        else:
            for row in rows:
                out.write("\t".join("" if v is None else str(v) for v in row) + "\n")
                count += 1
        key = part_key(self.prefix, partition, task, self.fmt)
        self.s3.here().put(self.bucket, key, out.getvalue().encode())
        return _Written(key, count)

    def commit(self, messages: list[_Written]) -> None:
        _commit(self.s3, self.bucket, self.prefix, messages)

    def abort(self, messages: list[_Written]) -> None:
        return None


def _commit(s3: S3, bucket: str, prefix: str, messages: list[_Written]) -> None:
    """The ``_SUCCESS`` marker of a write: its rows and objects."""
    total = sum(m.rows for m in messages if m is not None)
    marker = part_key(prefix, 0, 0, "x").rsplit("/", 1)[0]
    key = f"{marker}/_SUCCESS" if prefix.strip("/") else "_SUCCESS"
    s3.put(bucket, key, json.dumps({"rows": total, "objects": sorted(
        m.key for m in messages if m is not None)}).encode())


def _task() -> tuple[int, int]:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return (ctx.partitionId(), ctx.taskAttemptId()) if ctx is not None else (0, 0)


def parquet_batches(data: bytes, arrow_schema: Any, key: str = "") -> Iterator[Any]:
    """The record batches of one Parquet object, as the read's schema says (its columns,
    cast to its types)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data), columns=list(arrow_schema.names))
        table = table.cast(arrow_schema)
    except (pa.ArrowException, ValueError, KeyError) as exc:
        raise SourceError(f"{key}: {exc}") from None
    yield from table.to_batches()


def parquet_bytes(batches: Iterator[Any], arrow_schema: Any) -> tuple[bytes, int]:
    """One Parquet object (snappy) of ``batches`` and its row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    got = list(batches)
    table = pa.Table.from_batches(got) if got else arrow_schema.empty_table()
    out = io.BytesIO()
    pq.write_table(table, out, compression="snappy")
    return out.getvalue(), table.num_rows


class _ParquetWriter(DataSourceArrowWriter):  # type: ignore[misc,valid-type]
    def __init__(self, s3: S3, bucket: str, prefix: str, arrow_schema: Any) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix
        self.arrow_schema = arrow_schema

    def write(self, iterator: Iterator[Any]) -> _Written:
        partition, task = _task()
        data, rows = parquet_bytes(iterator, self.arrow_schema)
        key = part_key(self.prefix, partition, task, "parquet")
        self.s3.here().put(self.bucket, key, data)
        return _Written(key, rows)

    def commit(self, messages: list[_Written]) -> None:
        _commit(self.s3, self.bucket, self.prefix, messages)

    def abort(self, messages: list[_Written]) -> None:
        return None


class DefaultSource(DataSource):  # type: ignore[misc,valid-type]
    """``format("meshcloud")``; options: ``format`` (text, csv, json, parquet), ``header``
    (csv), ``split`` (bytes per text range), ``endpoint``/``accessKey``/``secretKey``."""

    @classmethod
    def name(cls) -> str:
        return "meshcloud"

    def _where(self) -> tuple[str, str]:
        return parse_location(self.options.get("path", ""))

    def _fmt(self) -> str:
        fmt = str(self.options.get("format", "text")).lower()
        if fmt not in FORMATS:
            raise SourceError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
        return fmt

    def _header(self) -> bool:
        return str(self.options.get("header", "false")).lower() == "true"

    def schema(self) -> Any:
        fmt = self._fmt()
        if fmt == "text":
            return "value string"
        bucket, prefix = self._where()
        s3 = S3.from_env(self.options)
        refs = s3.list(bucket, prefix)
        pieces = plan(refs, fmt=fmt)
        if not pieces:
            raise SourceError(f"no objects under {bucket}/{prefix} to take columns from")
        if fmt == "parquet":
            size = next(r.size for r in refs if r.key == pieces[0].key)
            return parquet_schema(s3, bucket, pieces[0].key, size)
        head = s3.get(bucket, pieces[0].key, 0, 64 << 10)
        if fmt == "csv":
            names = csv_header(head)
            if not self._header():
                names = [f"_c{i}" for i in range(len(names))]
        else:
            first = head.split(b"\n", 1)[0]
            names = list(json.loads(first)) if first.strip() else []
        return StructType([StructField(n, StringType(), True) for n in names])

    def reader(self, schema: Any) -> _Reader:
        bucket, prefix = self._where()
        s3 = S3.from_env(self.options)
        fmt = self._fmt()
        split = int(self.options.get("split", DEFAULT_SPLIT))
        pieces = plan(s3.list(bucket, prefix), split=split, fmt=fmt)
        arrow = _to_arrow(schema) if fmt == "parquet" else None
        return _Reader(s3, bucket, pieces, fmt, self._header(), list(schema.fieldNames()),
                       arrow)

    def writer(self, schema: Any, overwrite: bool) -> Any:
        bucket, prefix = self._where()
        fmt = self._fmt()
        if fmt == "parquet":
            return _ParquetWriter(S3.from_env(self.options), bucket, prefix, _to_arrow(schema))
        return _Writer(S3.from_env(self.options), bucket, prefix, fmt,
                       list(schema.fieldNames()), self._header())


def parquet_schema(s3: S3, bucket: str, key: str, size: int) -> Any:
    """The Spark schema of a Parquet object, from its footer (one or two ranged GETs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import from_arrow_schema

    start = footer_start(size)
    tail = s3.get(bucket, key, start, size)
    need = footer_length(tail, key)
    if need > len(tail):
        if need > size:
            raise SourceError(f"{key}: a footer of {need} bytes in {size}")
        tail = s3.get(bucket, key, size - need, size)
    try:
        return from_arrow_schema(pq.read_schema(pa.BufferReader(footer_file(tail, key))))
    except (pa.ArrowException, TypeError) as exc:
        raise SourceError(f"{key}: {exc}") from None


def _to_arrow(schema: Any) -> Any:
    from pyspark.sql.pandas.types import to_arrow_schema

    try:
        return to_arrow_schema(schema)
    except TypeError as exc:
        raise SourceError(f"Parquet: {exc}") from None
