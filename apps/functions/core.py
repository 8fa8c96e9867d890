"""The pure core of the functions service: validating a deploy, the version history of a
function (deploy, rollback) and the JSON shape of a function. No I/O."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import replace
from typing import Any

from apps.functions.messages import FunctionRecord, FunctionVersion
from meshcloud.errors import MeshError

BUCKET = "meshcloud-functions"
KEEP_VERSIONS = 5
"""Versions kept per function (the current one always among them)."""
MAX_BUNDLE = 32 << 20
MAX_PAYLOAD = 4 << 20
RUNTIMES = ("python",)
IMAGE_RUNTIME = "image"
MAX_TIMEOUT_MS = 15 * 60_000
MIN_MEMORY = 16 << 20
MAX_CONCURRENCY = 256

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_HANDLER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
                      r":[A-Za-z_][A-Za-z0-9_]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_SIZE = re.compile(r"^(\d+)([KMG]i?B?|B)?$", re.IGNORECASE)
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, None: 1000}


class FunctionError(MeshError):
    """A deploy, rollback or invocation asked for something invalid."""

    code = "bad_request"


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise FunctionError(f"bad function name {name!r}: lowercase letters, digits and -, "
                            "at most 63 characters")
    return name


def check_sha(digest: Any) -> str:
    if not isinstance(digest, str) or not _SHA.match(digest):
        raise FunctionError(f"bad bundle digest {digest!r}: 64 lowercase hex digits")
    return digest


def parse_duration_ms(text: Any) -> int:
    """``30s``, ``500ms``, ``5m``, ``1h`` or a number of seconds → milliseconds (> 0)."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    m = _DURATION.match(text) if isinstance(text, str) else None
    if m is None:
        raise FunctionError(f"bad duration {text!r} (examples: 500ms, 30s, 5m)")
    ms = int(float(m.group(1)) * _UNITS_MS[m.group(2)])
    if ms <= 0:
        raise FunctionError(f"duration {text!r} must be more than zero")
    return ms


def parse_size(text: Any) -> int:
    """``128M``, ``1G``, ``512Mi``, ``65536`` → bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    m = _SIZE.match(text) if isinstance(text, str) else None
    if m is None:
        raise FunctionError(f"bad size {text!r} (examples: 128M, 1G)")
    unit = (m.group(2) or "B").upper()[:1]
    return int(m.group(1)) << {"B": 0, "K": 10, "M": 20, "G": 30}[unit]


def check_env(env: Any) -> tuple[str, ...]:
    if env is None:
        return ()
    if not isinstance(env, list | tuple):
        raise FunctionError("env must be a list of K=V strings")
    out: list[str] = []
    for item in env:
        if not isinstance(item, str) or "=" not in item:
            raise FunctionError(f"bad env entry {item!r}: expected K=V")
        key = item.split("=", 1)[0]
        if not _ENV_KEY.match(key) or "\0" in item:
            raise FunctionError(f"bad env variable name {key!r}")
        out.append(item)
    return tuple(out)


def build_version(spec: Any, *, version: int, size: int, now_ms: int) -> FunctionVersion:
    """A :class:`FunctionVersion` from a deploy request (``sha256``, ``handler``,
    ``runtime``, ``env``, ``timeout``, ``memory``, ``concurrency``, ``idle``); every bad
    field is a :class:`FunctionError` naming it."""
    if not isinstance(spec, dict):
        raise FunctionError("a deploy is a JSON object")
    image = spec.get("image") or ""
    if image:
        if not isinstance(image, str) or not _IMAGE.match(image) or ".." in image:
            raise FunctionError(f"bad image reference {str(image)[:100]!r}")
        digest, runtime, handler, size = "", IMAGE_RUNTIME, "", 0
    else:
        digest = check_sha(spec.get("sha256"))
        runtime = spec.get("runtime", "python")
        if runtime not in RUNTIMES:
            raise FunctionError(f"unknown runtime {runtime!r} (known: "
                                f"{', '.join(RUNTIMES)}, or --image)")
        handler = spec.get("handler", "main:handle")
        if not isinstance(handler, str) or not _HANDLER.match(handler):
            raise FunctionError(f"bad handler {handler!r}: expected module:function")
    timeout_ms = parse_duration_ms(spec.get("timeout", "30s"))
    if timeout_ms > MAX_TIMEOUT_MS:
        raise FunctionError(f"timeout is at most {MAX_TIMEOUT_MS // 60_000} minutes")
    memory = parse_size(spec.get("memory", "128M"))
    if memory < MIN_MEMORY:
        raise FunctionError(f"memory is at least {MIN_MEMORY >> 20}M")
    concurrency = spec.get("concurrency", 8)
    if (not isinstance(concurrency, int) or isinstance(concurrency, bool)
            or not 1 <= concurrency <= MAX_CONCURRENCY):
        raise FunctionError(f"concurrency must be 1..{MAX_CONCURRENCY}")
    idle_ms = parse_duration_ms(spec.get("idle", "5m"))
    if not image and not 0 < size <= MAX_BUNDLE:
        raise FunctionError(f"a bundle is 1 byte to {MAX_BUNDLE >> 20} MiB")
    return FunctionVersion(version=version, image=image,
                           bundle_key=bundle_key(digest) if digest else "", sha256=digest,
                           size=size, runtime=runtime, handler=handler,
                           env=check_env(spec.get("env")), timeout_ms=timeout_ms,
                           memory_bytes=memory, concurrency=concurrency, idle_ms=idle_ms,
                           created_ms=now_ms)


def bundle_key(sha256: str) -> str:
    """Bundles are content-addressed: one object per distinct bundle, shared by names."""
    return f"bundles/{check_sha(sha256)}.tar"


def next_version(old: FunctionRecord | None) -> int:
    return 1 if old is None or not old.versions else max(v.version for v in old.versions) + 1


def deploy(old: FunctionRecord | None, name: str, version: FunctionVersion) -> FunctionRecord:
    """The record with ``version`` added and current; the oldest beyond
    :data:`KEEP_VERSIONS` are dropped."""
    kept = [v for v in (old.versions if old else ()) if v.version != version.version]
    kept.append(version)
    kept.sort(key=lambda v: v.version)
    return FunctionRecord(name=name, current=version.version,
                          versions=tuple(kept[-KEEP_VERSIONS:]),
                          schedule=old.schedule if old else "",
                          schedule_since_ms=old.schedule_since_ms if old else 0,
                          on_object=old.on_object if old else (),
                          public=old.public if old else False,
                          keys=old.keys if old else (),
                          secrets_key=old.secrets_key if old else b"")


_TRIGGER = re.compile(r"^(created|deleted):([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$")
OBJECT_KINDS = {"object.put": "created", "object.deleted": "deleted"}


def check_triggers(triggers: Any) -> tuple[str, ...]:
    """``created:BUCKET/PREFIX`` / ``deleted:BUCKET/PREFIX`` (prefix optional)."""
    if triggers is None:
        return ()
    if not isinstance(triggers, list | tuple) or len(triggers) > 16:
        raise FunctionError("on_object is a list of at most 16 triggers")
    for t in triggers:
        if not isinstance(t, str) or len(t) > 1100 or not _TRIGGER.match(t):
            raise FunctionError(f"bad bucket trigger {t!r}: created:BUCKET/PREFIX or "
                                "deleted:BUCKET/PREFIX")
    return tuple(dict.fromkeys(triggers))


def trigger_matches(triggers: tuple[str, ...], kind: str, bucket: str, key: str) -> bool:
    """Whether an object event (``created`` or ``deleted``) fires one of ``triggers``."""
    for t in triggers:
        m = _TRIGGER.match(t)
        if m and m.group(1) == kind and m.group(2) == bucket and key.startswith(
                m.group(3) or ""):
            return True
    return False


def trigger_parts(triggers: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """``(kind, bucket, prefix)`` of each well-formed trigger."""
    out = []
    for t in triggers:
        m = _TRIGGER.match(t)
        if m:
            out.append((m.group(1), m.group(2), m.group(3) or ""))
    return out


def with_schedule(record: FunctionRecord, schedule: Any, now_ms: int) -> FunctionRecord:
    """The record running on cron ``schedule`` from now on (``""`` or ``off``: none)."""
    from apps.functions.cron import parse_cron

    if schedule in ("", "off", None):
        return replace(record, schedule="", schedule_since_ms=0)
    cron = parse_cron(schedule)
    if cron.text == record.schedule:
        return record
    return replace(record, schedule=cron.text, schedule_since_ms=now_ms)


def rollback(record: FunctionRecord, to: int | None) -> FunctionRecord:
    """Make version ``to`` (default: the newest one before the current) current."""
    numbers = [v.version for v in record.versions]
    if to is None:
        earlier = [n for n in numbers if n < record.current]
        if not earlier:
            raise FunctionError(f"{record.name} has no version before {record.current}")
        to = max(earlier)
    if to not in numbers:
        raise FunctionError(f"{record.name} has no version {to} (kept: "
                            f"{', '.join(map(str, numbers))})")
    return replace(record, current=to)


def current(record: FunctionRecord) -> FunctionVersion:
    for v in record.versions:
        if v.version == record.current:
            return v
    raise FunctionError(f"{record.name}: current version {record.current} is missing")


def unused_bundles(records: list[FunctionRecord], removed: FunctionRecord) -> list[str]:
    """Bundle keys of ``removed`` that no other function's kept versions use."""
    used = {v.bundle_key for r in records if r.name != removed.name for v in r.versions}
    return sorted({v.bundle_key for v in removed.versions if v.bundle_key} - used)


def version_json(v: FunctionVersion) -> dict[str, Any]:
    return {"version": v.version, "sha256": v.sha256, "size": v.size, "runtime": v.runtime,
            "handler": v.handler, "env": [e.split("=", 1)[0] for e in v.env],
            "timeout_ms": v.timeout_ms, "memory_bytes": v.memory_bytes,
            "concurrency": v.concurrency, "idle_ms": v.idle_ms, "created_ms": v.created_ms,
            "image": v.image}


def function_json(record: FunctionRecord) -> dict[str, Any]:
    return {"name": record.name, "current": record.current, "public": record.public,
            "keys": len(record.keys),
            "schedule": record.schedule, "on_object": list(record.on_object),
            "versions": [version_json(v) for v in record.versions]}


MAX_KEYS = 4
"""Trigger keys kept per function (a new one beyond that retires the oldest)."""
KEY_HEADER = "x-fn-key"
MAX_KEY_LENGTH = 256
MAX_PRESENTED = 4


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def with_new_key(record: FunctionRecord, key: str, *, replace_all: bool
                 ) -> FunctionRecord:
    """The record with ``key`` opening its HTTP trigger (the oldest beyond
    :data:`MAX_KEYS` retired; ``replace_all``: the only one)."""
    kept = () if replace_all else record.keys
    return replace(record, keys=(*kept, key_digest(key))[-MAX_KEYS:])


def presented_keys(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The keys a request presents: ``X-Fn-Key`` or ``Authorization: Bearer``
    (the first :data:`MAX_PRESENTED`)."""
    out: list[bytes] = []
    for name, value in headers:
        name = name.lower()
        if name == KEY_HEADER.encode():
            out.append(value.strip())
        elif name == b"authorization" and value[:7].lower() == b"bearer ":
            out.append(value[7:].strip())
        if len(out) >= MAX_PRESENTED:
            break
    return out


def trigger_denied(record: FunctionRecord, headers: list[tuple[bytes, bytes]]
                   ) -> tuple[int, str] | None:
    """Whether ``POST /fn/NAME`` with ``headers`` is refused: None (allowed), or
    (401, why) without a key, (403, why) with a wrong one. Keys are compared by their
    SHA-256 in constant time; nothing presented is echoed back."""
    if record.public:
        return None
    presented = presented_keys(headers)
    if not presented:
        return 401, (f"{record.name} is not public: send its key in an X-Fn-Key header "
                     f"(`meshcloud fn key {record.name}` makes one)")
    for key in presented:
        if not key or len(key) > MAX_KEY_LENGTH:
            continue
        digest = hashlib.sha256(key).hexdigest()
        if any(hmac.compare_digest(digest, known) for known in record.keys):
            return None
    return 403, f"the key does not open {record.name}"
