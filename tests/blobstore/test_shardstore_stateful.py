"""The LMDB shard store against a dict model: puts, deletes, reopen, a tiny growing map."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from blobstore.errors import ShardNotFound, StoreFullError
from blobstore.shards import shard_id
from blobstore.shardstore import ShardStore
from tests.blobstore.test_shardstore import blob

SHARDS = [blob(n, i) for i, n in enumerate([10, 1000, 30_000, 70_000, 5, 200_000])]


class ShardStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.store = self._open()
        self.model: dict[bytes, bytes] = {}

    def _open(self) -> ShardStore:
        return ShardStore(self.dir, map_size=128 << 10, max_map_size=512 << 10,
                          min_free_bytes=0, sync=False)

    @rule(i=st.integers(0, len(SHARDS) - 1))
    def put(self, i):
        b = SHARDS[i]
        try:
            sid, new = self.store.put(b)
        except StoreFullError:
            assert not self.store.contains(shard_id(b))
            return
        assert new == (sid not in self.model)
        self.model[sid] = b

    @rule(i=st.integers(0, len(SHARDS) - 1))
    def delete(self, i):
        sid = shard_id(SHARDS[i])
        assert self.store.delete(sid) == (sid in self.model)
        self.model.pop(sid, None)

    @rule()
    def reopen(self):
        self.store.close()
        self.store = self._open()

    @invariant()
    def matches_the_model(self):
        assert {i.shard_id for i in self.store.list()} == set(self.model)
        stats = self.store.stats()
        assert (stats.count, stats.bytes) == (len(self.model),
                                              sum(len(b) for b in self.model.values()))
        for sid, b in self.model.items():
            assert self.store.get(sid) == b
        for b in SHARDS:
            if shard_id(b) not in self.model:
                try:
                    self.store.get(shard_id(b))
                except ShardNotFound:
                    continue
                raise AssertionError("a deleted or refused shard is readable")

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


ShardStoreMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=15,
                                               deadline=None)
TestShardStore = ShardStoreMachine.TestCase
