"""TableCore.get keeps the decoded value of a hot row: the same bytes give the same
(immutable) object, new bytes a new one, and a value with a mutable part is never
shared between readers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshcloud.state.crdt import LwwRegister
from meshcloud.state.kv import MemoryKv
from meshcloud.state.schema import TableSchema
from meshcloud.state.table import TableCore, _shareable
from meshcloud.state.tables import NODES, NodeRecord

W = b"\x07" * 32


@dataclass(frozen=True)
class Plain:
    name: str
    parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class WithDict:
    spec: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Nested:
    inner: tuple[Plain, ...]
    loose: tuple[WithDict, ...] = ()


def test_only_values_immutable_all_the_way_down_are_shared():
    assert _shareable(Plain("a", ("x", "y")))
    assert _shareable(Nested((Plain("a"), Plain("b"))))
    assert not _shareable(WithDict({"k": 1}))
    assert not _shareable(Nested((Plain("a"),), (WithDict(),)))
    assert not _shareable({"k": 1}) and not _shareable([1])
    assert _shareable(None) and _shareable(b"x")



def test_a_hot_row_is_decoded_once_and_a_new_write_is_seen():
    t = TableCore(TableSchema("fns", partition=(str,)), MemoryKv())

    def write(value: Any, ts: int) -> None:
        t.merge([(t.schema.key_bytes(("f",)), t.build(value, ts, W))], now_ms=0)

    write("v1" * 50, 1)
    assert t.get(("f",)) == "v1" * 50
    assert t.get(("f",)) is t.get(("f",))  # the same bytes: decoded once
    write("v2", 2)
    assert t.get(("f",)) == "v2"  # new bytes: decoded anew
    t.merge([(t.schema.key_bytes(("f",)), LwwRegister.tombstone(3, W))], now_ms=0)
    assert t.get(("f",)) is None  # deleted: never the old value
    write("v4", 4)
    assert t.get(("f",)) == "v4"


def test_records_with_a_mutable_part_are_decoded_for_each_reader():
    t = TableCore(NODES, MemoryKv())
    key = NODES.key_bytes((b"n" * 32,))
    record = NodeRecord(addresses=("127.0.0.1:1",), capacity={"cpu": 2})
    t.merge([(key, t.build(record, 1, W))], now_ms=0)
    first = t.get((b"n" * 32,))
    first.capacity["cpu"] = 99  # a careless reader
    assert t.get((b"n" * 32,)).capacity == {"cpu": 2}
