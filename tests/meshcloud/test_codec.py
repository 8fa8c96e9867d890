"""Codec: round trips for every message, and hostile bytes only ever raise CodecError."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import types
import typing
from dataclasses import dataclass

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from meshcloud.codec import cbor
from meshcloud.codec.frames import FrameDecoder, encode_frame
from meshcloud.codec.messages import (
    decode_message,
    encode_message,
    from_wire,
    message,
    registered_tags,
    to_wire,
)
from meshcloud.codec.tags import BLOCK_SIZE, TagBlock
from meshcloud.errors import CodecError, LocalProtocolError


class Colour(enum.IntEnum):
    RED = 1
    GREEN = 2


@message(TagBlock.SIM + 90)
@dataclass(frozen=True, slots=True, kw_only=True)
class Inner:
    name: str
    weight: float = 1.0


@message(TagBlock.SIM + 91, version=2)
@dataclass(frozen=True, slots=True, kw_only=True)
class Outer:
    id: bytes
    count: int
    flag: bool
    colour: Colour
    inners: tuple[Inner, ...]
    labels: dict[str, str]
    maybe: Inner | None = None
    note: str = ""


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(0, 100), children, max_size=4),
    max_leaves=20,
)

inner = st.builds(Inner, name=st.text(max_size=10), weight=st.floats(allow_nan=False))
outer = st.builds(
    Outer,
    id=st.binary(max_size=32),
    count=st.integers(-(2**63), 2**64),
    flag=st.booleans(),
    colour=st.sampled_from(Colour),
    inners=st.lists(inner, max_size=3).map(tuple),
    labels=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    maybe=st.none() | inner,
    note=st.text(max_size=10),
)


@given(plain)
def test_plain_data_round_trips(value):
    assert cbor.decode(cbor.encode(value)) == value


@given(outer)
def test_message_round_trips(msg):
    assert decode_message(encode_message(msg), Outer) == msg


def _all_registered_messages():
    # import every package that defines messages so the registry is complete
    import importlib
    import pkgutil

    for package in ("meshcloud", "dht", "gossip", "blobstore", "apps", "vnet"):
        try:
            root = importlib.import_module(package)
        except ImportError:
            continue
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if info.name.endswith(("messages", "certs", "invites", "handshake", "wire")):
                importlib.import_module(info.name)
    return registered_tags()


def test_tags_are_unique_and_inside_their_block():
    tags = _all_registered_messages()
    assert len(tags) == len(set(tags))
    for tag, cls in tags.items():
        module_root = cls.__module__.split(".")[0]
        block = TagBlock(tag - tag % BLOCK_SIZE)
        assert block.value <= tag < block.value + BLOCK_SIZE, cls
        assert module_root in {"meshcloud", "dht", "gossip", "blobstore", "apps", "vnet",
                               "sim", "tests"}


def message_strategy(cls: type) -> st.SearchStrategy:
    """Instances of a message class; fields typed ``Any`` get plain CBOR data (which
    hypothesis cannot derive from ``Any`` itself)."""
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: _field_strategy(hints[f.name])
                             for f in dataclasses.fields(cls)})


def _field_strategy(hint: typing.Any) -> st.SearchStrategy:
    if hint is typing.Any:
        return plain
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_field_strategy(a) for a in args])
    if origin is dict:
        return st.dictionaries(_field_strategy(args[0]), _field_strategy(args[1]), max_size=3)
    if origin is list:
        return st.lists(_field_strategy(args[0]), max_size=3)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(_field_strategy(args[0]), max_size=3).map(tuple)
        return st.tuples(*[_field_strategy(a) for a in args])
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return message_strategy(hint)
    return st.from_type(hint)


@settings(max_examples=300)
@given(st.data())
def test_every_registered_message_round_trips(data):
    tags = _all_registered_messages()
    cls = data.draw(st.sampled_from(sorted(tags.values(), key=lambda c: c.__name__)))
    try:
        msg = data.draw(message_strategy(cls))
    except (TypeError, ValueError):  # refused by the message's own checks: not a message
        reject()
    wire = encode_message(msg)
    again = decode_message(wire)
    assert type(again) is cls
    assert encode_message(again) == wire  # compares bytes, so NaN fields count as equal


@settings(max_examples=2000)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_codec_error(data):
    with contextlib.suppress(CodecError):
        decode_message(data)


@given(st.binary(max_size=100))
def test_random_bytes_as_cbor_only_raise_codec_error(data):
    with contextlib.suppress(CodecError):
        cbor.decode(data)


@given(plain)
def test_plain_cbor_is_never_a_message_unless_well_formed(value):
    with contextlib.suppress(CodecError):
        from_wire(value)


@given(outer, st.integers(0, 200), st.integers(0, 255))
def test_flipped_byte_only_raises_codec_error_or_decodes(msg, position, new):
    data = bytearray(encode_message(msg))
    data[position % len(data)] = new
    try:
        result = decode_message(bytes(data), Outer)
    except CodecError:
        return
    assert isinstance(result, Outer)


def test_field_types_are_checked():
    wire = to_wire(Inner(name="a"))
    wire[2] = 5
    with pytest.raises(CodecError, match=r"Inner\.name: expected text"):
        from_wire(wire)


def test_wrong_message_type_is_refused():
    with pytest.raises(CodecError, match="expected Outer, got Inner"):
        decode_message(encode_message(Inner(name="x")), Outer)


def test_missing_trailing_fields_take_defaults_and_extra_fields_are_ignored():
    wire = to_wire(Inner(name="x", weight=3.0))
    assert from_wire(wire[:3]) == Inner(name="x", weight=1.0)
    assert from_wire([*wire, "from", "the", "future"]) == Inner(name="x", weight=3.0)


def test_missing_required_field_is_refused():
    with pytest.raises(CodecError, match="needs 6 fields"):
        from_wire(to_wire(Outer(id=b"", count=1, flag=True, colour=Colour.RED, inners=(),
                                labels={}))[:5])


def test_unknown_enum_value_is_refused():
    wire = to_wire(Outer(id=b"", count=1, flag=True, colour=Colour.RED, inners=(), labels={}))
    wire[5] = 9
    with pytest.raises(CodecError, match="not a valid Colour"):
        from_wire(wire)


def test_too_old_version_is_refused():
    @message(TagBlock.SIM + 92, version=3, min_version=2)
    @dataclasses.dataclass(frozen=True)
    class Strict:
        x: int

    with pytest.raises(CodecError, match="older than"):
        from_wire([TagBlock.SIM + 92, 1, 5])
    assert from_wire([TagBlock.SIM + 92, 2, 5]) == Strict(x=5)


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "empty"),
        (b"\xff", "malformed"),
        (b"\xc1\x00", "not allowed"),  # tag 1: epoch datetime
        (b"\xd9\x01\x02\x81\x01", "not allowed"),  # tag 258: set
        (b"\xc2\x58\x40" + b"\x01" * 64, "wider than"),  # 512-bit bignum
        (b"\x81" * 40 + b"\x00", "nested deeper"),
        (b"\xa1\x81\x00\x00", "map key"),
        (b"\x9b\x00\x00\x00\x7f\xff\xff\xff", "malformed"),  # huge declared array
        (b"\x01\x02", "malformed"),  # trailing data
    ],
)
def test_hostile_cbor_raises_one_clear_codec_error(data, why):
    with pytest.raises(CodecError, match=why):
        cbor.decode(data)


def test_oversize_input_is_refused_before_decoding():
    with pytest.raises(CodecError, match="exceeds"):
        cbor.decode(b"\x00" * 11, max_size=10)


def test_duplicate_tag_is_a_programming_error():
    with pytest.raises(TypeError, match="already used"):

        @message(TagBlock.SIM + 90)
        @dataclasses.dataclass(frozen=True)
        class Clash:
            x: int


# --- frames -------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300), max_size=10), st.integers(1, 50))
def test_frames_cut_the_same_whatever_the_slicing(payloads, step):
    stream = b"".join(encode_frame(p) for p in payloads) + b"\x00\x00"  # trailing partial
    whole = FrameDecoder().feed(stream)
    decoder = FrameDecoder()
    pieces: list[bytes] = []
    for i in range(0, len(stream), step):
        pieces += decoder.feed(stream[i : i + step])
    assert whole == pieces == payloads
    assert decoder.buffered == 2


def test_oversize_frame_is_refused_before_buffering_and_decoder_stays_broken():
    decoder = FrameDecoder(max_frame=100)
    with pytest.raises(CodecError, match="exceeds"):
        decoder.feed(b"\x00\x00\x10\x00")
    assert decoder.buffered == 0
    with pytest.raises(CodecError):
        decoder.feed(encode_frame(b"ok"))


def test_encoding_an_oversize_frame_is_our_bug():
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * 11, max_frame=10)
