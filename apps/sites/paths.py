"""A request target → the path segments of a site file, or a clean refusal.

Hostile targets never reach storage: the result only ever names a key of the version's
manifest (the caller looks the path up there and nowhere else), and anything odd is
refused before that: ``..``/``.`` segments (also spelt ``%2e%2e``), encoded ``/`` or
``\\`` (``%2f``, ``%5c``), raw backslashes, NUL and other control bytes, bad escapes,
bytes that are not UTF-8, and targets over :data:`MAX_TARGET`. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_TARGET = 4096
_HEX = "0123456789abcdefABCDEF"
_PLAIN = re.compile(r"/[\x21-\x7e]*")
"""A path with nothing to decode: printable ASCII (checked below for ``%`` and ``\\``)."""


class BadTarget(ValueError):
    """The request target cannot name a file (answered 400)."""


@dataclass(frozen=True, slots=True)
class RequestPath:
    segments: tuple[str, ...]
    trailing_slash: bool
    query: str

    @property
    def key(self) -> str:
        return "/".join(self.segments)


def parse_target(target: str) -> RequestPath:
    if len(target) > MAX_TARGET:
        raise BadTarget(f"request target over {MAX_TARGET} characters")
    path, _, query = target.partition("?")
    path = path.partition("#")[0]
    lowered = path[:8].lower()
    if lowered.startswith(("http://", "https://")):  # absolute form: drop scheme and host
        rest = path.split("//", 1)[1]
        slash = rest.find("/")
        path = rest[slash:] if slash >= 0 else "/"
    if not path.startswith("/"):
        raise BadTarget("request target must be a path starting with '/'")
    if _PLAIN.fullmatch(path) and "%" not in path and "\\" not in path:
        text = path
    else:
        text = _decode(path)
    parts = text.split("/")
    if any(p in (".", "..") for p in parts):
        raise BadTarget("'.' or '..' in the request path")
    segments = tuple(p for p in parts if p)
    return RequestPath(segments=segments, trailing_slash=text.endswith("/") and bool(segments),
                       query=query)


def _decode(path: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(path):
        c = path[i]
        if c == "%":
            pair = path[i + 1:i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise BadTarget("bad percent escape in the request path")
            byte = int(pair, 16)
            if byte in (0x2F, 0x5C):
                raise BadTarget("an encoded '/' or '\\' in the request path")
            raw.append(byte)
            i += 3
            continue
        if c == "\\":
            raise BadTarget("a backslash in the request path")
        code = ord(c)
        if code > 0x7E:
            raise BadTarget("a raw non-ASCII character in the request path")
        raw.append(code)
        i += 1
    if any(b < 0x20 or b == 0x7F for b in raw):
        raise BadTarget("a control character (or NUL) in the request path")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget("the request path is not UTF-8") from None
