"""k-buckets and the routing table (Kademlia §2.2, §2.4 and §4.1).

A node keeps, for each ``i`` in 0..255, a :class:`KBucket` of at most ``k`` contacts at
XOR distance ``[2**i, 2**(i+1))`` from itself (:func:`dht.ids.bucket_index`). This flat
array of 256 buckets is the fully-split form of the paper's bucket tree: only buckets near
our own id ever fill, since bucket ``i`` covers a ``2**-(256-i)`` share of the space.

Rules, all in this file:

* **Heard from directly** (:meth:`RoutingTable.observe`, called for every message a node
  sends us): a known contact moves to the tail (most recently seen) and its failure count
  resets; a new one is appended if its bucket has room. If the bucket is full the
  newcomer goes to the bucket's **replacement cache** (bounded, newest last) and the
  bucket's **least-recently-seen** contact is to be pinged: ``observe`` returns its id,
  once; the caller pings it and reports the outcome. Old contacts that still answer are
  kept: in Kademlia's measurements the longer a node has been up, the likelier it stays.
* **Failed to answer** (:meth:`RoutingTable.failed`, after a ping or any other request
  timed out): if the bucket has a replacement, the contact is evicted and the newest
  replacement takes its place; otherwise it stays, marked stale, until it has failed
  ``stale_after_failures`` times in a row (§4.1: without replacements, keeping a stale
  contact is better than an empty slot; a transient outage must not empty the table).
* Contacts we only *heard of* (third-party replies) are never added: only nodes that
  talked to us are, so a hostile reply cannot fill our table with garbage.

Invariants (checked by the stateful tests): a bucket never holds more than ``k`` contacts;
every contact is in the bucket its distance says; a node is never both in a bucket and
in that bucket's replacement cache; a contact leaves a bucket only after a
:meth:`~RoutingTable.failed` report for it (or an explicit :meth:`~RoutingTable.remove`).

:meth:`RoutingTable.closest` returns the ``n`` contacts closest to any id without
sorting the whole table: for a target in bucket ``i`` every contact in bucket ``i`` is
closer than any in buckets ``< i``, which are all closer than any in bucket ``i+1``, then
``i+2``... so it sorts at most a few buckets (cost O(k log k) at 10,000 nodes).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from dht.ids import id_to_int
from dht.messages import PeerInfo


class Contact:
    """One routing-table entry (mutable: its addresses and failure count change)."""

    __slots__ = ("failures", "info", "key", "node_id")

    def __init__(self, info: PeerInfo, key: int | None = None) -> None:
        self.node_id: bytes = info.node_id
        self.key: int = id_to_int(info.node_id) if key is None else key
        self.info: PeerInfo = info
        self.failures = 0

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.info.addresses

    def __repr__(self) -> str:
        return f"<Contact {self.node_id.hex()[:12]} failures={self.failures}>"


class KBucket:
    """Up to ``capacity`` contacts, least-recently seen first, plus a replacement cache."""

    __slots__ = ("capacity", "contacts", "index", "pinging", "replacement_capacity",
                 "replacements")

    def __init__(self, index: int, capacity: int, replacement_capacity: int) -> None:
        self.index = index
        self.capacity = capacity
        self.replacement_capacity = replacement_capacity
        self.contacts: dict[bytes, Contact] = {}  # insertion order = least recently seen first
        self.replacements: dict[bytes, Contact] = {}  # newest last
        self.pinging: bytes | None = None  # the contact whose ping decides an eviction

    @property
    def full(self) -> bool:
        return len(self.contacts) >= self.capacity

    def oldest(self) -> Contact | None:
        return next(iter(self.contacts.values()), None)

    def __len__(self) -> int:
        return len(self.contacts)


class RoutingTable:
    """The 256 k-buckets of one node. See the module docstring for the rules."""

    def __init__(self, local_id: bytes, *, k: int = 20, replacement_cache_size: int = 20,
                 stale_after_failures: int = 3) -> None:
        if k < 1 or replacement_cache_size < 0 or stale_after_failures < 1:
            raise ValueError("need k >= 1, replacement_cache_size >= 0, stale_after >= 1")
        self.local_id = local_id
        self.local_key = id_to_int(local_id)
        self.k = k
        self.replacement_cache_size = replacement_cache_size
        self.stale_after_failures = stale_after_failures
        self._buckets: dict[int, KBucket] = {}
        self._indices: list[int] = []  # sorted keys of _buckets
        self._size = 0

    # --- reading ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def __contains__(self, node_id: bytes) -> bool:
        return self.get(node_id) is not None

    def __iter__(self) -> Iterator[Contact]:
        for index in self._indices:
            yield from self._buckets[index].contacts.values()

    def index_of(self, node_id: bytes) -> int:
        d = id_to_int(node_id) ^ self.local_key
        if d == 0:
            raise ValueError("the local node is not in its own table")
        return d.bit_length() - 1

    def get(self, node_id: bytes) -> Contact | None:
        if node_id == self.local_id:
            return None
        bucket = self._buckets.get(self.index_of(node_id))
        return bucket.contacts.get(node_id) if bucket else None

    def bucket(self, index: int) -> KBucket | None:
        return self._buckets.get(index)

    def bucket_indices(self) -> list[int]:
        """Indices of buckets that hold (or held) contacts, ascending."""
        return [i for i in self._indices if self._buckets[i].contacts]

    def closest(self, target: bytes | int, count: int,
                exclude: bytes | None = None) -> list[Contact]:
        """The ``count`` contacts closest to ``target`` by XOR, nearest first."""
        t = target if isinstance(target, int) else id_to_int(target)
        split = (t ^ self.local_key).bit_length() - 1  # -1 when the target is our own id
        indices = self._indices
        buckets = self._buckets
        pos = bisect.bisect_left(indices, split)
        # Groups in increasing distance: the target's bucket; all nearer buckets together;
        # then each farther bucket in turn.
        groups: list[list[int]] = []
        rest = indices
        if split >= 0:
            own = pos < len(indices) and indices[pos] == split
            if own:
                groups.append([split])
            groups.append(indices[:pos])
            rest = indices[pos + 1:] if own else indices[pos:]
        groups.extend([index] for index in rest)
        result: list[Contact] = []
        distance = lambda c: c.key ^ t  # noqa: E731
        for group in groups:
            members: list[Contact] = []
            for index in group:
                members.extend(buckets[index].contacts.values())
            if exclude is not None:
                members = [c for c in members if c.node_id != exclude]
            members.sort(key=distance)
            result += members
            if len(result) >= count:
                break
        return result[:count]

    # --- changing -----------------------------------------------------------------------

    def observe(self, info: PeerInfo, key: int | None = None) -> bytes | None:
        """``info.node_id`` talked to us. Returns the id of a contact to ping, or None."""
        node_id = info.node_id
        if node_id == self.local_id:
            return None
        if key is None:
            key = id_to_int(node_id)
        index = (key ^ self.local_key).bit_length() - 1
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = KBucket(index, self.k, self.replacement_cache_size)
            self._buckets[index] = bucket
            bisect.insort(self._indices, index)
        contacts = bucket.contacts
        contact = contacts.pop(node_id, None)
        if contact is not None:
            contacts[node_id] = contact  # to the tail: most recently seen
            contact.failures = 0
            if info.addresses and info.addresses != contact.info.addresses:
                contact.info = info
            if bucket.pinging == node_id:
                bucket.pinging = None
            return None
        if len(contacts) < bucket.capacity:
            bucket.replacements.pop(node_id, None)
            contacts[node_id] = Contact(info, key)
            self._size += 1
            return None
        # Full: remember the newcomer, and ask whether the oldest contact is still alive.
        if bucket.replacement_capacity:
            waiting = bucket.replacements.pop(node_id, None)
            if waiting is None:
                waiting = Contact(info, key)
            elif info.addresses:
                waiting.info = info
            bucket.replacements[node_id] = waiting
            while len(bucket.replacements) > bucket.replacement_capacity:
                del bucket.replacements[next(iter(bucket.replacements))]
        if bucket.pinging is None:
            bucket.pinging = next(iter(contacts))
            return bucket.pinging
        return None

    def failed(self, node_id: bytes) -> bool:
        """``node_id`` did not answer a request. Returns True if it was evicted."""
        if node_id == self.local_id:
            return False
        bucket = self._buckets.get(self.index_of(node_id))
        if bucket is None:
            return False
        if bucket.replacements.pop(node_id, None) is not None:
            return False
        contact = bucket.contacts.get(node_id)
        if contact is None:
            return False
        contact.failures += 1
        if bucket.pinging == node_id:
            bucket.pinging = None
        if bucket.replacements:
            self._evict(bucket, node_id)
            newest_id = next(reversed(bucket.replacements))
            bucket.contacts[newest_id] = bucket.replacements.pop(newest_id)
            self._size += 1
            return True
        if contact.failures >= self.stale_after_failures:
            self._evict(bucket, node_id)
            return True
        return False

    def remove(self, node_id: bytes) -> bool:
        """Forget ``node_id`` outright (it left the mesh, or was revoked)."""
        if node_id == self.local_id:
            return False
        bucket = self._buckets.get(self.index_of(node_id))
        if bucket is None:
            return False
        bucket.replacements.pop(node_id, None)
        if node_id not in bucket.contacts:
            return False
        self._evict(bucket, node_id)
        return True

    def update_addresses(self, node_id: bytes, addresses: tuple[str, ...]) -> None:
        """Newer addresses from a verified peer record (does not count as hearing from it)."""
        contact = self.get(node_id)
        if contact is not None and contact.addresses != addresses:
            contact.info = PeerInfo(node_id=node_id, addresses=addresses)

    def _evict(self, bucket: KBucket, node_id: bytes) -> None:
        del bucket.contacts[node_id]
        self._size -= 1
        if bucket.pinging == node_id:
            bucket.pinging = None

    # --- for the simulation's table builder -----------------------------------------------

    def insert_unchecked(self, contact: Contact) -> None:
        """Put a contact straight into its bucket (bulk builds; the bucket must have room)."""
        index = (contact.key ^ self.local_key).bit_length() - 1
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = KBucket(index, self.k, self.replacement_cache_size)
            self._buckets[index] = bucket
            bisect.insort(self._indices, index)
        if len(bucket.contacts) >= bucket.capacity or contact.node_id in bucket.contacts:
            raise ValueError("bucket full or contact already present")
        bucket.contacts[contact.node_id] = contact
        self._size += 1

