"""A small, deterministic, structure-aware mutation fuzzer for the wire decoders.

Each :class:`Target` holds valid encodings (its *seeds*) and a ``run`` function that feeds
one input to a decoder. :class:`Mutator` derives inputs from the seeds the way coverage
fuzzers do (bit flips, interesting bytes, truncation, deletion, duplication, insertion of
format tokens, splices of two seeds), stacking one to four mutations, and now and then
offers a seed unchanged or plain random bytes. :func:`fuzz` runs a target for a number of
inputs and records every exception that is not one of the target's ``expected`` types (the
decoder's typed error), together with the input that caused it.

Everything is seeded: the same target, count and seed give the same inputs, so a failure
printed by the campaign (``python -m bench fuzz``) can be replayed.
"""

from __future__ import annotations

import copy
import random
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x20, 0x0A, 0x0D, 0x3D, 0x25, 0x2C)
INTERESTING_WORDS = (
    b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00",
    b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
)
CBOR_TOKENS = (
    b"\x9f", b"\xbf", b"\xff", b"\x5f", b"\x7f",  # indefinite lengths and break
    b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff", b"\x3b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x5a\xff\xff\xff\xff", b"\x9a\xff\xff\xff\xff", b"\xba\xff\xff\xff\xff",
    b"\xc2\x58\x40" + b"\xff" * 64,  # a 512-bit bignum
    b"\xd8\x1c", b"\xd8\x1d\x00", b"\xd9\x01\x02", b"\xc1\x1b\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\xf9\x7e\x00", b"\xfb\x7f\xf0\x00\x00\x00\x00\x00\x00", b"\xf7", b"\xf6", b"\xf5",
    b"\x80", b"\xa0", b"\x40", b"\x60", b"\x00", b"\x20", b"\x18\xff", b"\x61\xff",
)


class FuzzFailure(AssertionError):
    """A target's own check found a broken invariant (state changed, forged data accepted)."""


@dataclass
class Target:
    name: str
    seeds: Sequence[bytes]
    run: Callable[[bytes], object]
    """Feed one input; raise one of ``expected``, return, or raise FuzzFailure."""
    expected: tuple[type[BaseException], ...]
    tokens: Sequence[bytes] = ()
    """Format-specific fragments the mutator inserts (separators, keywords, CBOR heads)."""
    weight: float = 1.0
    """Relative share of a campaign's inputs (slow targets get fewer)."""
    max_size: int = 64 * 1024
    """Mutants are cut to this size (decoders refuse large inputs before parsing anyway)."""
    cbor: bool = False
    """Seeds are CBOR: also mutate their decoded value tree and encode it again."""


@dataclass
class Failure:
    kind: str
    where: str
    message: str
    data: bytes


@dataclass
class Result:
    name: str
    inputs: int = 0
    rejected: int = 0
    """Inputs the decoder refused with its typed error."""
    seconds: float = 0.0
    slowest: float = 0.0
    failures: int = 0
    distinct: dict[tuple[str, str], Failure] = field(default_factory=dict)


class Mutator:
    def __init__(self, rng: random.Random, seeds: Sequence[bytes], tokens: Sequence[bytes] = (),
                 max_size: int = 64 * 1024, *, cbor: bool = False) -> None:
        if not seeds:
            raise ValueError("a target needs at least one seed")
        self.rng = rng
        self.seeds = list(seeds)
        self.tokens = list(tokens) or [bytes([b]) for b in INTERESTING_BYTES]
        self.max_size = max_size
        self._trees = [_load(seed) for seed in self.seeds] if cbor else []
        self._trees = [t for t in self._trees if t is not _NOT_CBOR]
        self._ops = (self._flip, self._flip, self._byte, self._byte, self._word,
                     self._truncate, self._delete, self._duplicate, self._insert_token,
                     self._insert_token, self._insert_random, self._splice, self._overwrite,
                     self._swap)

    def next(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.02:
            return rng.choice(self.seeds)
        if roll < 0.06:
            return rng.randbytes(rng.randrange(0, 64))
        if self._trees and roll < 0.40:
            tree = _mutate_tree(rng, copy.deepcopy(rng.choice(self._trees)),
                                1 + int(rng.expovariate(1.0)))
            try:
                data = bytearray(cbor2.dumps(tree))
            except Exception:
                data = bytearray(rng.choice(self.seeds))
            if rng.random() < 0.3:
                data = rng.choice(self._ops)(data)
            return bytes(data[: self.max_size])
        data = bytearray(rng.choice(self.seeds))
        for _ in range(1 + min(3, int(rng.expovariate(1.0)))):
            data = rng.choice(self._ops)(data)
        return bytes(data[: self.max_size])

    def _pos(self, data: bytearray, extra: int = 0) -> int:
        return self.rng.randrange(len(data) + extra) if len(data) + extra else 0

    def _flip(self, data: bytearray) -> bytearray:
        if data:
            i = self._pos(data)
            data[i] ^= 1 << self.rng.randrange(8)
        return data

    def _byte(self, data: bytearray) -> bytearray:
        if data:
            data[self._pos(data)] = (self.rng.choice(INTERESTING_BYTES) if self.rng.random() < 0.5
                                     else self.rng.randrange(256))
        return data

    def _word(self, data: bytearray) -> bytearray:
        word = self.rng.choice(INTERESTING_WORDS)
        if len(data) >= len(word):
            i = self.rng.randrange(len(data) - len(word) + 1)
            data[i:i + len(word)] = word
        return data

    def _truncate(self, data: bytearray) -> bytearray:
        return data[: self._pos(data)]

    def _delete(self, data: bytearray) -> bytearray:
        if data:
            i = self._pos(data)
            del data[i:i + 1 + int(self.rng.expovariate(0.2))]
        return data

    def _duplicate(self, data: bytearray) -> bytearray:
        if data:
            i = self._pos(data)
            j = min(len(data), i + 1 + int(self.rng.expovariate(0.05)))
            k = self._pos(data, 1)
            data[k:k] = data[i:j] * (1 + int(self.rng.expovariate(1.0)))
        return data

    def _insert_token(self, data: bytearray) -> bytearray:
        k = self._pos(data, 1)
        data[k:k] = self.rng.choice(self.tokens)
        return data

    def _insert_random(self, data: bytearray) -> bytearray:
        k = self._pos(data, 1)
        data[k:k] = self.rng.randbytes(1 + int(self.rng.expovariate(0.25)))
        return data

    def _splice(self, data: bytearray) -> bytearray:
        other = self.rng.choice(self.seeds)
        return data[: self._pos(data, 1)] + other[self.rng.randrange(len(other) + 1):]

    def _overwrite(self, data: bytearray) -> bytearray:
        other = self.rng.choice(self.seeds)
        if data and other:
            i = self.rng.randrange(len(other))
            piece = other[i:i + 1 + int(self.rng.expovariate(0.1))]
            k = self._pos(data)
            data[k:k + len(piece)] = piece
        return data

    def _swap(self, data: bytearray) -> bytearray:
        if len(data) >= 2:
            i, j = self._pos(data), self._pos(data)
            data[i], data[j] = data[j], data[i]
        return data


_NOT_CBOR = object()


def _load(data: bytes) -> Any:
    try:
        return cbor2.loads(data)
    except Exception:
        return _NOT_CBOR


INTERESTING_INTS = (0, 1, -1, 2, 23, 24, 255, 256, 65535, 2**31 - 1, 2**31, 2**32, 2**63 - 1,
                    2**63, 2**64 - 1, -(2**63), -(2**64), 2**256, 2**300, 10**20)


def _leaf(rng: random.Random, old: Any) -> Any:
    """A replacement for one value: the same kind with an edge value, or another kind."""
    kind = type(old)
    roll = rng.random()
    if roll < 0.6 and kind is bytes:
        return rng.choice([b"", old[:-1], old + b"\x00", old[: len(old) // 2],
                           rng.randbytes(len(old)), old * 3, b"\x00" * 32, b"\xff" * 64])
    if roll < 0.6 and kind is int:
        return rng.choice([*INTERESTING_INTS, old + 1, old - 1, -old])
    if roll < 0.6 and kind is str:
        return rng.choice(["", old[:-1], old + "\x00", old * 40, "\ud800", "é" * 300, "../x"])
    if roll < 0.6 and kind is float:
        return rng.choice([float("nan"), float("inf"), -0.0, 1e308, 5e-324])
    if roll < 0.6 and kind is list:
        return rng.choice([[], old[:-1], old + old[-1:], [old], old[::-1]])
    return rng.choice([None, True, 0, -1, 2**64 - 1, 1.5, "", "x", b"", b"\x00" * 32, [], {},
                       [0], {"k": 0}, {0: b""}])


def _mutate_tree(rng: random.Random, tree: Any, times: int) -> Any:
    """Replace ``times`` random nodes of a decoded CBOR value (walks down from the root)."""
    for _ in range(times):
        node, parent, key = tree, None, None
        while isinstance(node, list | dict) and node and rng.random() < 0.8:
            keys = list(node) if isinstance(node, dict) else range(len(node))
            parent, key = node, rng.choice(list(keys))
            node = node[key]
        new = _leaf(rng, node)
        if parent is None:
            tree = new
        elif isinstance(parent, list) and rng.random() < 0.15:
            del parent[key]
        else:
            parent[key] = new
    return tree


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{'/'.join(last.filename.rsplit('/', 2)[-2:])}:{last.lineno}"


def fuzz(target: Target, inputs: int, *, seed: int = 0,
         deadline: float | None = None) -> Result:
    """Run ``target`` on ``inputs`` mutants (fewer if ``deadline``, a perf_counter time, passes)."""
    mutator = Mutator(random.Random(f"{target.name}/{seed}"), target.seeds, target.tokens,
                      target.max_size, cbor=target.cbor)
    result = Result(target.name)
    run, expected = target.run, target.expected
    clock = time.perf_counter
    started = clock()
    for n in range(inputs):
        if deadline is not None and n % 64 == 0 and clock() > deadline:
            break
        data = mutator.next()
        t0 = clock()
        try:
            run(data)
        except expected:
            result.rejected += 1
        except Exception as exc:
            result.failures += 1
            key = (type(exc).__name__, _where(exc))
            if key not in result.distinct:
                result.distinct[key] = Failure(key[0], key[1], str(exc)[:300], data)
        spent = clock() - t0
        if spent > result.slowest:
            result.slowest = spent
        result.inputs += 1
    result.seconds = clock() - started
    return result


def describe(result: Result) -> list[str]:
    """Readable lines for each distinct failure (with the input, hex, cut to 120 bytes)."""
    lines = []
    for failure in result.distinct.values():
        lines.append(f"  {result.name}: {failure.kind} at {failure.where}: {failure.message}")
        lines.append(f"    input ({len(failure.data)} bytes): {failure.data[:120].hex()}")
    return lines
