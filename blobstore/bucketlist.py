"""Listing a bucket: S3 ListObjects pages over quorum range scans of the object index.

:func:`blobstore.s3.listing.list_page` is pure and pulls keys from a synchronous
:class:`~blobstore.s3.listing.KeySource`; the index is reached over the network. The
bridge: :class:`IndexKeySource` serves keys from *segments* it has already fetched, and
raises :class:`NeedData` when the page needs keys it does not have; :func:`list_bucket`
then fetches them (one quorum scan of up to 1000 rows) and runs ``list_page`` again.
Re-running is cheap (pure, in memory), and every round adds rows or reaches the end, so a
page costs about ``ceil(rows / 1000)`` scans plus one per delimiter seek past the data
already fetched.

A segment covers every key from its start up to its last key (or to the end of the
bucket): folded long keys sharing a 384-byte prefix (:mod:`blobstore.sortkeys`) are
always fetched as a whole run, so a segment never ends inside one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field

from blobstore.index import Found, Index
from blobstore.records import OBJECTS, ObjectRecord
from blobstore.s3.listing import ListPage, Position, list_page
from blobstore.s3.xml import ObjectEntry
from blobstore.sortkeys import fold_group, scan_start, unfold_sorted
from meshcloud.state.keys import encode_key, prefix_end

MAX_ROUNDS = 1000
"""Fetches one page may take (a page is at most 1000 entries; this bounds a hostile
listing of a bucket full of tombstones)."""


class NeedData(Exception):
    def __init__(self, start: str | None, segment: Segment | None) -> None:
        super().__init__("more index rows needed")
        self.start = start
        self.segment = segment


@dataclass
class Segment:
    start: str
    keys: list[str] = field(default_factory=list)
    entries: list[ObjectEntry] = field(default_factory=list)
    resume: bytes = b""
    """Raw table key to continue the scan from (inclusive)."""
    exhausted: bool = False

    def covers(self, key: str) -> bool:
        """Every key from ``start`` to ``key`` is known (or the segment begins there)."""
        return self.start <= key and (self.exhausted or key == self.start
                                      or (bool(self.keys) and key <= self.keys[-1]))


class IndexKeySource:
    """A KeySource over fetched segments (see the module docstring)."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def _segment_for(self, start: str) -> Segment | None:
        best = None
        for seg in self.segments:
            if seg.start <= start and (best is None or seg.start > best.start):
                best = seg
        return best

    def scan(self, start: str) -> Iterator[tuple[str, ObjectEntry]]:
        seg = self._segment_for(start)
        if seg is None or not seg.covers(start):
            raise NeedData(start, None)  # a new segment: one seek, not a walk
        i = bisect_left(seg.keys, start)
        while True:
            while i < len(seg.keys):
                yield seg.keys[i], seg.entries[i]
                i += 1
            if seg.exhausted:
                return
            raise NeedData(None, seg)


class BucketLister:
    """Fetches segments of one bucket's index for :class:`IndexKeySource`."""

    def __init__(self, index: Index, bucket_id: bytes, *, batch: int = 1000) -> None:
        self.index = index
        self.bucket_id = bucket_id
        self.batch = batch
        self.source = IndexKeySource()
        self._high = prefix_end(encode_key((bucket_id,)))
        self._schema = index.state.core.table(OBJECTS.name).schema

    async def fill(self, need: NeedData) -> None:
        if need.segment is None:
            assert need.start is not None
            seg = Segment(need.start, resume=encode_key((self.bucket_id, scan_start(need.start))))
            self.segments_add(seg)
        else:
            seg = need.segment
        rows: list[Found] = []
        while True:
            found, truncated = await self.index.scan(OBJECTS.name, (self.bucket_id,),
                                                     seg.resume, self._high, self.batch)
            rows.extend(found)
            if found:
                seg.resume = found[-1].key + b"\x00"
            if not truncated or not found:
                seg.exhausted = True
                break
            last_group = fold_group(self._sort_key(found[-1].key))
            if last_group is None:
                break
            # a run of folded keys continues: fetch until it ends (rare: keys > 384 bytes
            # sharing their first 384)
            if fold_group(self._sort_key(found[0].key)) != last_group:
                break
        live = [(self._sort_key(r.key), r.value) for r in rows if r.value is not None]
        ordered = unfold_sorted(live, lambda record: record.key)
        for _, record in ordered:
            if record.key < seg.start or (seg.keys and record.key <= seg.keys[-1]):
                continue
            seg.keys.append(record.key)
            seg.entries.append(entry_of(record))

    def segments_add(self, seg: Segment) -> None:
        self.source.segments.append(seg)

    def _sort_key(self, key: bytes) -> bytes:
        return self._schema.key_from_bytes(key)[1]  # type: ignore[return-value]


def entry_of(record: ObjectRecord) -> ObjectEntry:
    return ObjectEntry(key=record.key, size=record.size, etag=record.etag,
                       last_modified=record.modified_ms / 1000)


async def list_bucket(index: Index, bucket_id: bytes, *, prefix: str = "",
                      delimiter: str | None = None, max_keys: int = 1000,
                      after: Position | None = None) -> ListPage[ObjectEntry]:
    """One ListObjects page of a bucket (see the module docstring)."""
    lister = BucketLister(index, bucket_id)
    for _ in range(MAX_ROUNDS):
        try:
            return list_page(lister.source, prefix=prefix, delimiter=delimiter,
                             max_keys=max_keys, after=after)
        except NeedData as need:
            await lister.fill(need)
    raise RuntimeError("listing did not converge")  # pragma: no cover
