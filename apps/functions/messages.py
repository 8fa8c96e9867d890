"""Records and wire messages of the functions service (tags ``APPS + 80`` … ``APPS + 84``)."""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

INVOKE_PROTOCOL = "/meshcloud/fn/invoke/1"
"""One stream = one invocation: :class:`InvokeRequest` → :class:`InvokeReply`."""
LOGS_PROTOCOL = "/meshcloud/fn/logs/1"
"""One stream = one read of a node's log of a function: :class:`LogsRequest` →
:class:`LogsReply`."""


@message(TagBlock.APPS + 80, version=2)
@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionVersion:
    """One deployed version: the bundle (a tar stored as object ``bundle_key``, its
    SHA-256 ``sha256``) and how to run it."""

    version: int
    bundle_key: str
    sha256: str
    size: int
    runtime: str
    handler: str
    env: tuple[str, ...] = ()
    """``K=V`` strings given to every instance (and nothing else of the agent's)."""
    timeout_ms: int = 30_000
    memory_bytes: int = 128 << 20
    concurrency: int = 8
    idle_ms: int = 300_000
    created_ms: int = 0
    image: str = ""
    """A container image (runtime ``image``): the function is that image's HTTP server
    on ``$PORT`` (no bundle: ``bundle_key`` and ``sha256`` are empty)."""


@message(TagBlock.APPS + 81, version=4)
@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionRecord:
    """Row of the ``functions`` table (key: the name). Switching ``current`` is the one
    replicated write that makes a version live on every node."""

    name: str
    current: int
    versions: tuple[FunctionVersion, ...]
    schedule: str = ""
    """A cron schedule (``*/10 * * * * *``) the function runs on, or empty."""
    schedule_since_ms: int = 0
    """When the schedule was set: no tick before it runs."""
    on_object: tuple[str, ...] = ()
    """Bucket triggers ``created:BUCKET/PREFIX`` or ``deleted:BUCKET/PREFIX``."""
    public: bool = False
    """``POST /fn/NAME`` needs no key."""
    keys: tuple[str, ...] = ()
    """SHA-256 (hex) of each key that opens ``POST /fn/NAME`` (the keys themselves are
    shown once, when made)."""
    secrets_key: bytes = b""
    """The key id of its secrets (``fn_secrets``) when it has some: a node whose copy of
    them is missing or older waits for it before starting an instance."""


@message(TagBlock.APPS + 82)
@dataclass(frozen=True, slots=True, kw_only=True)
class InvokeRequest:
    name: str
    version: int
    request_id: str
    payload: bytes


@message(TagBlock.APPS + 83)
@dataclass(frozen=True, slots=True, kw_only=True)
class InvokeReply:
    ok: bool
    body: bytes = b""
    content_type: str = "application/octet-stream"
    code: str = ""
    """When not ok: timeout, memory, crashed, error, not_found, unavailable."""
    message: str = ""
    cold: bool = False
    node: bytes = b""


@message(TagBlock.APPS + 84, version=2)
@dataclass(frozen=True, slots=True, kw_only=True)
class LogsRequest:
    name: str
    lines: int
    request_id: str = ""
    """When set: only the lines one invocation wrote (each starts with its id)."""
    offset: int = -1
    """≥ 0: what the log holds from this byte on (following it); -1: its tail."""


@message(TagBlock.APPS + 85, version=2)
@dataclass(frozen=True, slots=True, kw_only=True)
class LogsReply:
    text: str
    end: int = 0
    """The byte offset the text ends at (the next read of a follow starts there)."""


SCHEDULE_LEASE = "fn-scheduler"
"""The lease under which one node of the mesh runs every schedule's ticks."""
FN_LEASE_PROTOCOL = "/meshcloud/fn/lease/1"
"""The functions service's own lease protocol (same messages as the workloads' one)."""


@message(TagBlock.APPS + 86)
@dataclass(frozen=True, slots=True, kw_only=True)
class TickRecord:
    """Row of the ``fn_ticks`` table (key: function name, tick time in seconds): written
    ``started`` before a scheduled tick runs and ``done`` after, by the holder of the
    scheduler lease (``term``); a ``done`` tick never runs again, one left ``started``
    past its call's timeout runs again (its holder died)."""

    state: str
    term: int
    node: bytes
    at_ms: int
    ok: bool = False
    message: str = ""


@message(TagBlock.APPS + 87)
@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedInvocation:
    """Row of the ``fn_queue`` table (key: function name, invocation id): an
    asynchronous invocation (``X-Invocation-Type: Event``). The scheduler lease holder
    runs it (at least once: the invocation id is the handler's request id, for dedup)
    and retries it with back-off until it succeeds or runs out of attempts."""

    payload: bytes
    state: str = "queued"
    """queued, done or failed."""
    attempts: int = 0
    next_ms: int = 0
    created_ms: int = 0
    updated_ms: int = 0
    message: str = ""


@message(TagBlock.APPS + 89)
@dataclass(frozen=True, slots=True, kw_only=True)
class RecentInvocation:
    """One invocation a node ran, for the Functions page (and its logs)."""

    request_id: str
    at_ms: int
    duration_us: int
    ok: bool
    code: str = ""
    cold: bool = False
    version: int = 0


@message(TagBlock.APPS + 88)
@dataclass(frozen=True, slots=True, kw_only=True)
class FnNodeStats:
    """Row of the ``fn_stats`` table (key: function name, node id): what that node ran
    of the function since its agent started (see :mod:`apps.functions.stats`)."""

    invocations: int = 0
    errors: int = 0
    cold_starts: int = 0
    instances: int = 0
    buckets: tuple[tuple[int, int], ...] = ()
    """Duration histogram: (bucket index, count) pairs, sorted."""
    recent: tuple[RecentInvocation, ...] = ()
    updated_ms: int = 0
    prepared_version: int = 0
    """The version whose requirements.txt this node installed last (0: none)."""
    prepared_state: str = ""
    """installing, ready or failed."""
    prepared_message: str = ""


@message(TagBlock.APPS + 97)
@dataclass(frozen=True, slots=True, kw_only=True)
class FnSecrets:
    """Row of ``fn_secrets`` (key: function name): the function's secrets, encrypted
    (XSalsa20-Poly1305) under its data key ``key_id``; only their names in clear."""

    key_id: bytes
    ciphertext: bytes
    names: tuple[str, ...] = ()
    updated_ms: int = 0


@message(TagBlock.APPS + 98)
@dataclass(frozen=True, slots=True, kw_only=True)
class FnSecretKey:
    """Row of ``fn_secret_keys`` (key: function name, node id): the function's data key
    ``key_id`` sealed to that node's X25519 key (the one ``ingress_keys`` publishes)."""

    key_id: bytes
    box: bytes
