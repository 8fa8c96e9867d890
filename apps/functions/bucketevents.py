"""Bucket events at least once (pure, no I/O).

The node that commits an object emits its event; the functions service turns it into a
queued invocation. An agent that dies between the object's commit and the queue row, or
a feed that dropped events (a subscriber that fell behind sees a gap in ``seq``, or
the feed's latest ``seq`` past the last it got), would
lose events. So the service keeps a **mark** on disk: a wall time before which every
object event of this node has its queue row. On start-up, and after a gap, it lists the
trigger buckets for objects modified after ``mark - SCAN_SLACK_MS`` and queues an event
for each: the event id (:func:`event_id`) depends only on the object (bucket, key and
the object id of that put), so the live path and a scan queue the same row once.

:class:`EventCursor` decides when the mark may move: after an event is handled (the
feed is in order, so everything before it is handled), when the feed is idle, and never
while a catch-up scan is pending (a crash during the scan must scan again).

Deleted events: a listing does not show deletions, so the scan also reads the trigger
prefix's raw index rows (tombstones included; they stay until GC) and queues a deleted
event for each tombstone stamped after ``mark - SCAN_SLACK_MS``. The live event carries
the tombstone's HLC stamp (``ts``), so both paths name one delete by
:func:`deleted_event_id` (bucket, key, stamp). Keys longer than the index's fold length
(384 bytes) are stored folded: their tombstones do not hold the key, and are skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshcloud.clock import hlc_physical

FOLD_AT = 384
"""Longest object key the index stores as itself (``blobstore.sortkeys.FOLD_AT``)."""

SCAN_SLACK_MS = 60_000
"""How far before the mark a catch-up scan looks: an object's ``modified_ms`` is taken
before its quorum write, which may end (and emit) a little later."""


def event_id(kind: str, bucket: str, key: str, object_id: str) -> str:
    """The dedup id of one bucket event: the same from the live event and a scan."""
    raw = f"{kind}|{bucket}|{key}|{object_id}".encode()
    return "ev-" + hashlib.sha256(raw).hexdigest()[:24]


def deleted_event_id(bucket: str, key: str, ts: int) -> str:
    """The dedup id of the delete whose tombstone was stamped ``ts``."""
    return event_id("deleted", bucket, key, f"ts{ts:x}")


@dataclass(frozen=True)
class Tombstone:
    key: str
    ts: int
    """The tombstone's HLC stamp."""

    @property
    def time_ms(self) -> int:
        return hlc_physical(self.ts)


def tombstones_since(rows: Iterable[tuple[bytes, int, bool]], prefix: str,
                     since_ms: int) -> tuple[list[Tombstone], bool]:
    """Index rows of one bucket in key order, ``(sort key, stamp, is a tombstone)``, from
    the first key that may start with ``prefix``: the deletes under ``prefix`` stamped at
    or after ``since_ms`` (wall ms), and whether the rows went past the prefix (the
    caller stops scanning)."""
    want = prefix.encode()
    found: list[Tombstone] = []
    for sort_key, ts, dead in rows:
        if not sort_key.startswith(want[:FOLD_AT]):
            if sort_key > want:
                return found, True
            continue
        if not dead or len(sort_key) > FOLD_AT or hlc_physical(ts) < since_ms:
            continue
        try:
            key = sort_key.decode()
        except UnicodeDecodeError:
            continue
        if key.startswith(prefix):
            found.append(Tombstone(key, ts))
    return found, False


@dataclass
class EventCursor:
    mark_ms: int = 0
    """Every object event of this node emitted before this has its queue row."""
    last_seq: int = 0
    busy: int = 0
    scans: dict[int, int] = field(default_factory=dict)
    """Pending catch-up scans: token → modified-since in wall ms."""
    _tokens: int = 0

    def start(self, stored_mark: int | None, now_ms: int, seq: int = 0) -> int | None:
        """On start-up, subscribed when the feed's latest event was ``seq``: a scan
        token if an earlier run left a mark (it may have died with events unqueued),
        else None (a node new to functions has nothing owed)."""
        self.last_seq = seq
        if stored_mark is None:
            self.mark_ms = now_ms
            return None
        self.mark_ms = stored_mark
        return self._scan(stored_mark - SCAN_SLACK_MS)

    def received(self, seq: int) -> int | None:
        """An event came off the feed: a scan token if events before it were missed."""
        gap = seq != self.last_seq + 1
        self.last_seq = seq
        self.busy += 1
        return self._scan(self.mark_ms - SCAN_SLACK_MS) if gap else None

    def handled(self, at_ms: int) -> None:
        """The event emitted at ``at_ms`` is queued (or failed for good)."""
        self.busy = max(0, self.busy - 1)
        if not self.scans:
            self.mark_ms = max(self.mark_ms, at_ms)

    def idle(self, now_ms: int, latest_seq: int) -> int | None:
        """Nothing waits in the feed or in hand: everything before now is handled,
        unless the feed's latest event (``latest_seq``) never came (dropped): then a
        scan token, and the mark stays."""
        if self.busy:
            return None
        if latest_seq > self.last_seq:
            self.last_seq = latest_seq
            return self._scan(self.mark_ms - SCAN_SLACK_MS)
        if not self.scans:
            self.mark_ms = max(self.mark_ms, now_ms)
        return None

    def scanned(self, token: int) -> None:
        self.scans.pop(token, None)

    def _scan(self, since_ms: int) -> int:
        self._tokens += 1
        self.scans[self._tokens] = since_ms
        return self._tokens
