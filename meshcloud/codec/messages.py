"""Typed wire messages: frozen dataclasses with a tag and a version.

A message class is declared once and registered with :func:`message`::

    @message(TagBlock.GOSSIP + 1)
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Ping:
        seq: int
        target: bytes

On the wire a message is the CBOR array ``[tag, version, field1, field2, ...]`` with the
fields in declaration order. Nested messages are nested arrays of the same form.

Evolution rules (append-only, like the tag table):

* a new field is added at the end, with a default, and the class ``version`` is bumped;
* a decoder fills missing trailing fields from their defaults and ignores extra trailing
  fields sent by a newer version;
* a message older than the class's ``min_version`` is refused.

Decoding checks every field against its type hint and converts nested messages, enums and
tuples, so a decoded message is as well-formed as one built locally. Every failure is a
:class:`~meshcloud.errors.CodecError`.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, overload

from meshcloud.codec import cbor
from meshcloud.codec.tags import block_of
from meshcloud.errors import CodecError

T = TypeVar("T")

Converter = Callable[[Any, str], Any]


@dataclasses.dataclass(slots=True)
class _Spec:
    cls: type
    tag: int
    version: int
    min_version: int
    names: tuple[str, ...] = ()
    required: int = 0
    converters: tuple[Converter, ...] = ()
    ready: bool = False


_BY_TAG: dict[int, _Spec] = {}
_BY_CLASS: dict[type, _Spec] = {}


def message(tag: int, *, version: int = 1, min_version: int = 1) -> Callable[[type[T]], type[T]]:
    """Register a dataclass as a wire message under ``tag``."""

    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be a message")
        if tag in _BY_TAG and _BY_TAG[tag].cls.__qualname__ != cls.__qualname__:
            other = _BY_TAG[tag].cls
            raise TypeError(f"tag {tag} ({block_of(tag).name}) already used by {other.__name__}")
        if not 1 <= min_version <= version:
            raise TypeError("need 1 <= min_version <= version")
        spec = _Spec(cls=cls, tag=tag, version=version, min_version=min_version)
        _BY_TAG[tag] = spec
        _BY_CLASS[cls] = spec
        return cls

    return register


def registered_tags() -> dict[int, type]:
    """Every registered tag and its class (for the uniqueness test and docs)."""
    return {tag: spec.cls for tag, spec in _BY_TAG.items()}


def tag_of(cls: type) -> int:
    return _BY_CLASS[cls].tag


def is_message(value: Any) -> bool:
    return type(value) in _BY_CLASS


# --- encoding ---------------------------------------------------------------------------


def to_wire(msg: Any) -> list[Any]:
    """The plain-data form of a registered message: ``[tag, version, *fields]``."""
    spec = _BY_CLASS.get(type(msg))
    if spec is None:
        raise CodecError(f"{type(msg).__name__} is not a registered message")
    out: list[Any] = [spec.tag, spec.version]
    for field in dataclasses.fields(msg):
        out.append(_plain(getattr(msg, field.name)))
    return out


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind in (int, str, bytes, bool, float) or value is None:
        return value
    if kind in _BY_CLASS:
        return to_wire(value)
    if isinstance(value, enum.Enum):
        return value.value
    if kind in (tuple, list):
        return [_plain(item) for item in value]
    if kind is dict:
        return {_plain(k): _plain(v) for k, v in value.items()}
    if kind in (bytearray, memoryview):
        return bytes(value)
    if kind in (frozenset, set):
        return sorted(_plain(item) for item in value)
    raise CodecError(f"cannot put a {kind.__name__} on the wire")


def encode_message(msg: Any) -> bytes:
    return cbor.encode(to_wire(msg))


# --- decoding ---------------------------------------------------------------------------


@overload
def from_wire(value: Any, expect: type[T]) -> T: ...
@overload
def from_wire(value: Any, expect: tuple[type, ...] | None = None) -> Any: ...
def from_wire(value: Any, expect: type | tuple[type, ...] | None = None) -> Any:
    """Build a message from its plain-data form, checking every field."""
    if type(value) is not list or len(value) < 2:
        raise CodecError("a message is an array [tag, version, fields...]")
    tag, version = value[0], value[1]
    if type(tag) is not int or type(version) is not int:
        raise CodecError("message tag and version must be integers")
    spec = _BY_TAG.get(tag)
    if spec is None:
        raise CodecError(f"unknown message tag {tag}")
    if expect is not None and not issubclass(spec.cls, expect):
        raise CodecError(f"expected {_names(expect)}, got {spec.cls.__name__}")
    if version < spec.min_version:
        raise CodecError(
            f"{spec.cls.__name__} version {version} is older than the oldest we accept "
            f"({spec.min_version})"
        )
    if not spec.ready:
        _prepare(spec)
    fields = value[2:]
    if len(fields) < spec.required:
        raise CodecError(
            f"{spec.cls.__name__} needs {spec.required} fields, got {len(fields)}"
        )
    kwargs = {}
    for name, convert, item in zip(spec.names, spec.converters, fields, strict=False):
        kwargs[name] = convert(item, f"{spec.cls.__name__}.{name}")
    try:
        return spec.cls(**kwargs)
    except CodecError:
        raise
    except (TypeError, ValueError) as exc:  # __post_init__ validation
        raise CodecError(f"invalid {spec.cls.__name__}: {exc}") from None


@overload
def decode_message(data: bytes | bytearray | memoryview, expect: type[T], *,
                   max_size: int = cbor.MAX_MESSAGE_SIZE) -> T: ...
@overload
def decode_message(data: bytes | bytearray | memoryview,
                   expect: tuple[type, ...] | None = None, *,
                   max_size: int = cbor.MAX_MESSAGE_SIZE) -> Any: ...
def decode_message(
    data: bytes | bytearray | memoryview,
    expect: type | tuple[type, ...] | None = None,
    *,
    max_size: int = cbor.MAX_MESSAGE_SIZE,
) -> Any:
    """Decode bytes to a message; if ``expect`` is given, any other type is a CodecError."""
    return from_wire(cbor.decode(data, max_size=max_size), expect)


def _names(expect: type | tuple[type, ...]) -> str:
    if isinstance(expect, tuple):
        return " or ".join(t.__name__ for t in expect)
    return expect.__name__


def _prepare(spec: _Spec) -> None:
    hints = typing.get_type_hints(spec.cls)
    names, converters, required = [], [], 0
    for field in dataclasses.fields(spec.cls):
        names.append(field.name)
        converters.append(_converter(hints[field.name]))
        has_default = (
            field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING
        )
        if not has_default:
            required = len(names)
    spec.names = tuple(names)
    spec.converters = tuple(converters)
    spec.required = required
    spec.ready = True


def _fail(path: str, want: str, value: Any) -> CodecError:
    return CodecError(f"{path}: expected {want}, got {type(value).__name__}")


def _converter(hint: Any) -> Converter:
    if hint is Any or hint is object:
        return lambda v, path: v
    if hint is type(None) or hint is None:
        return _exact(type(None), "null")
    if hint is bool:
        return _exact(bool, "bool")
    if hint is int:
        return _exact(int, "int")
    if hint is str:
        return _exact(str, "text")
    if hint is bytes:
        return _exact(bytes, "bytes")
    if hint is float:

        def to_float(v: Any, path: str) -> float:
            if type(v) is float:
                return v
            if type(v) is int:
                return float(v)
            raise _fail(path, "number", v)

        return to_float
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        cls = hint

        def to_message(v: Any, path: str) -> Any:
            return from_wire(v, cls)

        return to_message
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _union([_converter(a) for a in args], args)
    if origin is list:
        item = _converter(args[0]) if args else _converter(Any)

        def to_list(v: Any, path: str) -> list[Any]:
            if type(v) is not list:
                raise _fail(path, "array", v)
            return [item(x, path) for x in v]

        return to_list
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = _converter(args[0])

            def to_tuple(v: Any, path: str) -> tuple[Any, ...]:
                if type(v) is not list:
                    raise _fail(path, "array", v)
                return tuple(item(x, path) for x in v)

            return to_tuple
        items = [_converter(a) for a in args]

        def to_fixed(v: Any, path: str) -> tuple[Any, ...]:
            if type(v) is not list or len(v) != len(items):
                raise CodecError(f"{path}: expected an array of {len(items)}")
            return tuple(conv(x, path) for conv, x in zip(items, v, strict=True))

        return to_fixed
    if origin is frozenset:
        item = _converter(args[0])

        def to_frozenset(v: Any, path: str) -> frozenset[Any]:
            if type(v) is not list:
                raise _fail(path, "array", v)
            try:
                return frozenset(item(x, path) for x in v)
            except TypeError:
                raise CodecError(f"{path}: unhashable set member") from None

        return to_frozenset
    if origin is dict:
        key = _converter(args[0]) if args else _converter(Any)
        val = _converter(args[1]) if args else _converter(Any)

        def to_dict(v: Any, path: str) -> dict[Any, Any]:
            if type(v) is not dict:
                raise _fail(path, "map", v)
            return {key(k, path): val(x, path) for k, x in v.items()}

        return to_dict
    raise TypeError(f"unsupported type hint on a message field: {hint!r}")


def _exact(kind: type, want: str) -> Converter:
    def check(v: Any, path: str) -> Any:
        if type(v) is not kind:
            raise _fail(path, want, v)
        return v

    return check


def _enum(kind: type[enum.Enum]) -> Converter:
    def to_enum(v: Any, path: str) -> enum.Enum:
        try:
            return kind(v)
        except (ValueError, TypeError):
            raise CodecError(f"{path}: {v!r} is not a valid {kind.__name__}") from None

    return to_enum


def _union(options: list[Converter], args: tuple[Any, ...]) -> Converter:
    want = " or ".join(getattr(a, "__name__", str(a)) for a in args)

    def to_union(v: Any, path: str) -> Any:
        for option in options:
            try:
                return option(v, path)
            except CodecError:
                continue
        raise _fail(path, want, v)

    return to_union
