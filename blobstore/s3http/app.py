"""The S3 ASGI app: authenticate, address, route, answer errors as S3 XML.

Every request goes through the same steps, each with the S3 error S3 itself gives:

1. the request is read as sent (:func:`.http.request_of`);
2. SigV4 (header or presigned; :mod:`blobstore.s3.sigv4`) against the ``s3keys`` table;
   an unsigned request is refused (``AccessDenied``): there are no public buckets;
3. bucket and key from the Host header and path (:mod:`blobstore.s3.names`: path style
   and virtual-host style under the configured base domains);
4. the operation from method, target and query (:data:`ROUTES` in :mod:`.handlers`), and
   the permission it needs on the bucket (read or write) checked against the key's grants;
5. the handler; any :class:`~blobstore.s3.errors.S3Error` becomes an ``<Error>`` document
   with its status; anything else is logged and answered ``InternalError`` (or
   ``ServiceUnavailable`` when the index or too many shard holders cannot be reached).

A refused upload's body is read and dropped (up to 1 MiB) so the client sees the error;
past that the connection is closed. Nothing is stored for a refused request: objects
become visible only when their record is committed, after every check passed.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from blobstore.errors import (
    BlobstoreError,
    IndexUnavailable,
    NotEnoughHolders,
    NotEnoughShards,
    WriteFailed,
)
from blobstore.objects import ObjectStore
from blobstore.records import BUCKETS, S3KEYS, AccessKeyRecord
from blobstore.s3.errors import (
    AccessDenied,
    InternalError,
    S3Error,
    ServiceUnavailable,
)
from blobstore.s3.listing import ContinuationTokens
from blobstore.s3.names import parse_target
from blobstore.s3.request import S3Request
from blobstore.s3.sigv4 import Authorization, SigV4Config, verify_request
from blobstore.s3.xml import render_error
from blobstore.s3http.http import Reply, drain, request_of, send_reply
from blobstore.uploads import Uploads
from meshcloud.errors import MeshError

log = logging.getLogger(__name__)


class KeyTable:
    """SigV4 credentials and grants from the replicated ``s3keys`` table."""

    def __init__(self, state: Any,
                 is_revoked_node: Callable[[bytes], bool] | None = None) -> None:
        self.state = state
        self.is_revoked_node = is_revoked_node

    def record(self, access_key: str) -> AccessKeyRecord | None:
        if not access_key or len(access_key) > 128:
            return None
        record: AccessKeyRecord | None = self.state.get(S3KEYS.name, access_key)
        if (record is not None and record.creator and self.is_revoked_node is not None
                and self.is_revoked_node(record.creator)):
            return None  # made through a node since revoked: dead with it
        return record

    def secret_for(self, access_key: str) -> str | None:
        record = self.record(access_key)
        return None if record is None else record.secret


class TrackedReceive:
    """ASGI ``receive`` that remembers whether the request body has ended (so an error
    reply never waits for body bytes that will not come)."""

    def __init__(self, receive: Any) -> None:
        self._receive = receive
        self.finished = False

    async def __call__(self) -> dict[str, Any]:
        if self.finished:
            return {"type": "http.disconnect"}
        message: dict[str, Any] = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.finished = True
        return message


@dataclass
class Call:
    """One request on its way through the app."""

    request: S3Request
    auth: Authorization
    key: AccessKeyRecord
    bucket: str | None
    object_key: str | None
    receive: Any
    request_id: str

    def query(self) -> dict[str, str]:
        return self.request.query()

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.request.query_pairs())


class S3App:
    """The ASGI application (see the module docstring)."""

    def __init__(self, store: ObjectStore, *, wall: Callable[[], float],
                 token_secret: bytes, region: str = "us-east-1",
                 base_domains: Sequence[str] = (),
                 is_revoked_node: Callable[[bytes], bool] | None = None) -> None:
        self.store = store
        self.uploads = Uploads(store)
        self.keys = KeyTable(store.state, is_revoked_node)
        self.wall = wall
        self.sigv4 = SigV4Config(region=region)
        self.region = region
        self.base_domains = tuple(base_domains)
        self.tokens = ContinuationTokens(token_secret)
        self.requests = 0
        self.errors = 0
        self.payload_modes: dict[str, int] = {}
        """Signed requests per x-amz-content-sha256 mode (which clients stream how)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        self.requests += 1
        request_id = secrets.token_hex(8).upper()
        request = request_of(scope)
        started = False
        receive = TrackedReceive(receive)

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            reply = await self.handle(request, receive, request_id)
            reply.headers.append(("x-amz-request-id", request_id))
            await send_reply(tracked_send, reply, head=request.method == "HEAD")
        except S3Error as exc:
            await self._error(exc, request, receive, tracked_send, request_id, started)
        except (IndexUnavailable, NotEnoughHolders, NotEnoughShards, WriteFailed) as exc:
            log.info("s3 %s %s: %s", request.method, request.raw_path[:80], exc)
            await self._error(ServiceUnavailable(str(exc)[:300]), request, receive,
                              tracked_send, request_id, started)
        except (BlobstoreError, MeshError) as exc:
            log.warning("s3 %s %s failed: %s", request.method, request.raw_path[:80], exc)
            await self._error(InternalError(), request, receive, tracked_send, request_id,
                              started)

    async def _error(self, exc: S3Error, request: S3Request, receive: Any, send: Any,
                     request_id: str, started: bool) -> None:
        self.errors += 1
        if started:
            return  # the reply was under way: the client sees a cut body
        if not receive.finished:
            await drain(receive)
        body = render_error(exc, request_id=request_id, resource=request.raw_path[:1100])
        headers = [("content-type", "application/xml"), ("x-amz-request-id", request_id)]
        if exc.status == 304:
            headers += [("etag", exc.extra.get("ETag", ""))]
        await send_reply(send, Reply(exc.status, headers, body if exc.has_body else b""),
                         head=request.method == "HEAD" or not exc.has_body)

    async def _fetch_missing(self, request: S3Request) -> None:
        """An access key this node does not know yet may exist elsewhere (a key created a
        moment ago, a node that just joined): ask peers before refusing."""
        credential = request.query().get("X-Amz-Credential", "")
        header = request.header("authorization") or ""
        if "Credential=" in header:
            credential = header.split("Credential=", 1)[1]
        access_key = credential.split("/", 1)[0].strip()
        if access_key and len(access_key) <= 128 and self.keys.record(access_key) is None:
            await self.store.index.fetch_missing(S3KEYS.name, (access_key,))

    async def handle(self, request: S3Request, receive: Any, request_id: str) -> Reply:
        from blobstore.s3http.handlers import route

        await self._fetch_missing(request)
        auth = verify_request(request, self.keys, self.wall(), self.sigv4)
        if auth is None:
            raise AccessDenied("anonymous access is not allowed: sign requests with a key "
                               "from `meshcloud s3 key create`")
        mode = auth.payload_mode.value
        self.payload_modes[mode] = self.payload_modes.get(mode, 0) + 1
        key = self.keys.record(auth.access_key)
        if key is None:  # deleted between the two lookups
            raise AccessDenied()
        target = parse_target(request.header("host"), request.raw_path,
                              base_domains=self.base_domains)
        if target.bucket is not None and self.store.find_bucket(target.bucket) is None:
            await self.store.index.fetch_missing(BUCKETS.name, (target.bucket,))
        call = Call(request, auth, key, target.bucket, target.key, receive, request_id)
        return await route(self, call)
