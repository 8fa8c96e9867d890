"""One function per S3 operation, and :func:`route` choosing among them.

Each handler checks the permission the operation needs on its bucket (read: GET, HEAD and
listings; write: PUT, POST, DELETE) before touching anything, so a key without a grant
learns nothing, not even whether the bucket exists.
"""

from __future__ import annotations

from email.utils import formatdate
from typing import TYPE_CHECKING
from urllib.parse import unquote

from blobstore.bucketlist import list_bucket
from blobstore.records import S3KEYS, BucketRecord, ObjectRecord, Permission
from blobstore.s3.conditions import Current, check_conditions, check_copy_source
from blobstore.s3.errors import (
    AccessDenied,
    BucketAlreadyExists,
    BucketAlreadyOwnedByYou,
    EntityTooLarge,
    InvalidArgument,
    InvalidRange,
    InvalidRequest,
    MethodNotAllowed,
    NoSuchKey,
    NoSuchVersion,
    NotImplementedS3,
    S3Error,
)
from blobstore.s3.listing import After, Position, parse_max_keys
from blobstore.s3.multipart import MAX_PART_SIZE, list_uploads, parse_part_number, part_range
from blobstore.s3.names import validate_bucket_name, validate_key
from blobstore.s3.payload import PayloadCheck
from blobstore.s3.ranges import parse_range
from blobstore.s3.xml import (
    NULL_VERSION,
    BucketEntry,
    Deleted,
    DeleteError,
    Owner,
    parse_complete_multipart,
    parse_delete,
    quoted,
    render_complete_multipart,
    render_copy_object,
    render_delete_result,
    render_initiate_multipart,
    render_list_buckets,
    render_list_objects_v1,
    render_list_objects_v2,
    render_list_parts,
    render_list_uploads,
    render_list_versions,
    render_location,
)
from blobstore.s3http.http import Body, Reply

if TYPE_CHECKING:
    from blobstore.s3http.app import Call, S3App

XML = ("content-type", "application/xml")
OWNER = Owner(id="meshcloud", display_name="meshcloud")

MAX_USER_METADATA = 2048
"""S3's limit on the size of user metadata (names and values of x-amz-meta-*)."""

STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding",
                  "content-language", "expires")
"""Standard headers kept with an object and sent back with it, as S3 does."""

RESPONSE_OVERRIDES = (("response-content-type", "content-type"),
                      ("response-content-language", "content-language"),
                      ("response-expires", "expires"),
                      ("response-cache-control", "cache-control"),
                      ("response-content-disposition", "content-disposition"),
                      ("response-content-encoding", "content-encoding"))
"""GetObject query parameters that replace a header of the reply."""

UNSUPPORTED_SUBRESOURCES = ("acl", "policy", "cors", "lifecycle", "tagging", "website",
                            "replication", "encryption", "object-lock", "retention",
                            "legal-hold", "torrent", "select", "restore", "notification",
                            "logging", "accelerate", "requestPayment", "analytics",
                            "metrics", "inventory", "intelligent-tiering", "ownershipControls",
                            "publicAccessBlock", "attributes")


def need(call: Call, permission: str) -> str:
    assert call.bucket is not None
    if not call.key.allows(call.bucket, permission):
        raise AccessDenied()
    return call.bucket


async def route(app: S3App, call: Call) -> Reply:
    method = call.request.method
    for name in UNSUPPORTED_SUBRESOURCES:
        if call.has(name):
            if name == "acl" and method == "GET":
                continue
            raise NotImplementedS3(f"?{name} is not supported")
    if call.bucket is None:
        if method == "GET":
            return list_buckets(app, call)
        raise MethodNotAllowed()
    if call.object_key is None:
        return await bucket_operation(app, call, method)
    return await object_operation(app, call, method)


async def bucket_operation(app: S3App, call: Call, method: str) -> Reply:
    if method == "GET":
        need(call, Permission.READ)
        if call.has("location"):
            app.store.bucket(call.bucket or "")
            return Reply(200, [XML], render_location(app.region))
        if call.has("versioning"):
            app.store.bucket(call.bucket or "")
            return Reply(200, [XML], b'<?xml version="1.0" encoding="UTF-8"?>\n'
                         b'<VersioningConfiguration '
                         b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>')
        if call.has("uploads"):
            return await list_multipart_uploads(app, call)
        if call.has("versions"):
            return await list_object_versions(app, call)
        return await list_objects(app, call)
    if method == "HEAD":
        need(call, Permission.READ)
        app.store.bucket(call.bucket or "")
        return Reply(200, [("x-amz-bucket-region", app.region)])
    if method == "PUT":
        if call.has("versioning"):
            raise NotImplementedS3("bucket versioning is not supported")
        return await create_bucket(app, call)
    if method == "DELETE":
        await app.store.delete_bucket(need(call, Permission.WRITE))
        return Reply(204)
    if method == "POST" and call.has("delete"):
        return await delete_objects(app, call)
    raise MethodNotAllowed()


async def object_operation(app: S3App, call: Call, method: str) -> Reply:
    q = call.query()
    if method in ("GET", "HEAD"):
        need(call, Permission.READ)
        version_of(call)
        if "uploadId" in q and method == "GET":
            return await list_parts(app, call)
        return await get_object(app, call, head=method == "HEAD")
    need(call, Permission.WRITE)
    if method == "PUT":
        if "uploadId" in q:
            if call.request.header("x-amz-copy-source") is not None:
                return await upload_part_copy(app, call)
            return await upload_part(app, call)
        if call.request.header("x-amz-copy-source") is not None:
            return await copy_object(app, call)
        return await put_object(app, call)
    if method == "DELETE":
        if "uploadId" in q:
            await app.uploads.abort(call.bucket or "", q["uploadId"])
            return Reply(204)
        version = version_of(call)
        await app.store.delete(call.bucket or "", call.object_key or "")
        return Reply(204, [] if version is None else [("x-amz-version-id", version)])
    if method == "POST":
        if call.has("uploads"):
            return await create_multipart(app, call)
        if "uploadId" in q:
            return await complete_multipart(app, call)
    raise MethodNotAllowed()


# --- buckets --------------------------------------------------------------------------------


def list_buckets(app: S3App, call: Call) -> Reply:
    entries = [BucketEntry(name, record.created_ms / 1000)
               for name, record in app.store.buckets() if call.key.can_see(name)]
    return Reply(200, [XML], render_list_buckets(entries, OWNER))


async def create_bucket(app: S3App, call: Call) -> Reply:
    name = call.bucket or ""
    if not call.key.create_buckets:
        raise AccessDenied("this key may not create buckets (meshcloud s3 key create "
                           "--allow-create)")
    try:
        await app.store.create_bucket(name, owner=call.auth.access_key)
    except BucketAlreadyOwnedByYou:
        existing = app.store.bucket(name)
        if existing.owner not in ("", call.auth.access_key):
            raise BucketAlreadyExists(BucketName=name) from None
        if app.region != "us-east-1":
            raise
        # S3 in us-east-1 answers a re-creation of your own bucket with success
        return Reply(200, [("location", f"/{name}")])
    grants = dict(call.key.buckets)
    grants[name] = ",".join(Permission.ALL)
    record = type(call.key)(name=call.key.name, secret=call.key.secret,
                            created_ms=call.key.created_ms, buckets=grants,
                            create_buckets=call.key.create_buckets)
    await app.store.index.put_everywhere(S3KEYS.name, (call.auth.access_key,), record)
    return Reply(200, [("location", f"/{name}")])


def _list_params(app: S3App, call: Call) -> tuple[
        str, BucketRecord, dict[str, str], str, str | None, str | None, int]:
    """What both listings read of a request: (bucket name, bucket, query, prefix,
    delimiter, encoding type, max keys); NoSuchBucket / InvalidArgument when off."""
    bucket_name = call.bucket or ""
    bucket = app.store.bucket(bucket_name)
    q = call.query()
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter") or None
    encoding = q.get("encoding-type") or None
    if encoding not in (None, "url"):
        raise InvalidArgument("Invalid Encoding Method specified in Request",
                              ArgumentName="encoding-type")
    max_keys = parse_max_keys(q.get("max-keys"))
    return bucket_name, bucket, q, prefix, delimiter, encoding, max_keys


async def list_objects(app: S3App, call: Call) -> Reply:
    bucket_name, bucket, q, prefix, delimiter, encoding, max_keys = _list_params(app, call)
    if q.get("list-type") == "2":
        token = q.get("continuation-token")
        start_after = q.get("start-after", "")
        after = None
        if token:
            after = app.tokens.decode(token, bucket=bucket_name, prefix=prefix,
                                      delimiter=delimiter)
        elif start_after:
            after = Position(After.KEY, start_after)
        page = await list_bucket(app.store.index, bucket.bucket_id, prefix=prefix,
                                 delimiter=delimiter, max_keys=max_keys, after=after)
        next_token = None
        if page.is_truncated and page.last is not None:
            next_token = app.tokens.encode(page.last, bucket=bucket_name, prefix=prefix,
                                           delimiter=delimiter)
        body = render_list_objects_v2(
            bucket_name, page, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
            start_after=start_after, continuation_token=token,
            next_continuation_token=next_token, encoding_type=encoding,
            fetch_owner=q.get("fetch-owner") == "true", owner=OWNER)
        return Reply(200, [XML], body)
    marker = q.get("marker", "")
    page = await list_bucket(app.store.index, bucket.bucket_id, prefix=prefix,
                             delimiter=delimiter, max_keys=max_keys,
                             after=Position(After.KEY, marker) if marker else None)
    return Reply(200, [XML], render_list_objects_v1(
        bucket_name, page, prefix=prefix, delimiter=delimiter, marker=marker,
        max_keys=max_keys, encoding_type=encoding, owner=OWNER))


async def list_object_versions(app: S3App, call: Call) -> Reply:
    """ListObjectVersions: without versioning each object is one version, ``null``."""
    bucket_name, bucket, q, prefix, delimiter, encoding, max_keys = _list_params(app, call)
    key_marker = q.get("key-marker", "")
    version_marker = q.get("version-id-marker", "")
    if version_marker and not key_marker:
        raise InvalidArgument("A version-id marker cannot be specified without a key marker.",
                              ArgumentName="version-id-marker")
    if version_marker not in ("", NULL_VERSION):
        raise InvalidArgument("Invalid version id specified",
                              ArgumentName="version-id-marker")
    page = await list_bucket(app.store.index, bucket.bucket_id, prefix=prefix,
                             delimiter=delimiter, max_keys=max_keys,
                             after=Position(After.KEY, key_marker) if key_marker else None)
    return Reply(200, [XML], render_list_versions(
        bucket_name, page, owner=OWNER, prefix=prefix, delimiter=delimiter,
        key_marker=key_marker, version_id_marker=version_marker, max_keys=max_keys,
        encoding_type=encoding))


def version_of(call: Call) -> str | None:
    """The ``versionId`` a request names: only ``null`` exists (no versioning here)."""
    pairs = [v for n, v in call.request.query_pairs() if n == "versionId"]
    if not pairs:
        return None
    if pairs != [NULL_VERSION]:
        raise InvalidArgument("Invalid version id specified", ArgumentName="versionId",
                              ArgumentValue=pairs[0][:64])
    return NULL_VERSION


async def delete_objects(app: S3App, call: Call) -> Reply:
    bucket = need(call, Permission.WRITE)
    app.store.bucket(bucket)
    body = await Body(call.receive, call.request, call.auth,
                      PayloadCheck.for_request(call.request, call.auth)).read_all()
    request = parse_delete(body)
    deleted: list[Deleted] = []
    errors: list[DeleteError] = []
    for key, version in request.objects:
        try:
            validate_key(key)
            if version not in (None, NULL_VERSION):
                raise NoSuchVersion(Key=key[:1024], VersionId=version[:64])
            deleted.append(Deleted(key, version))
        except S3Error as exc:
            errors.append(DeleteError(key[:1024], exc.code, exc.message,
                                      None if version is None else version[:64]))
    await app.store.delete_many(bucket, [d.key for d in deleted])
    return Reply(200, [XML], render_delete_result(deleted, errors, quiet=request.quiet))


# --- objects --------------------------------------------------------------------------------


def metadata_of(call: Call) -> tuple[str, dict[str, str]]:
    content_type = call.request.header("content-type") or "binary/octet-stream"
    meta: dict[str, str] = {}
    size = 0
    for name, value in call.request.headers:
        lower = name.lower()
        if lower.startswith("x-amz-meta-"):
            size += len(lower) - len("x-amz-meta-") + len(value.encode("utf-8", "replace"))
            meta[lower] = value
        elif lower == "content-encoding":
            # aws-chunked only frames this request's body: the object keeps the rest
            kept = [v.strip() for v in value.split(",")
                    if v.strip() and v.strip().lower() != "aws-chunked"]
            if kept:
                meta[lower] = ", ".join(kept)
        elif lower in STORED_HEADERS:
            meta[lower] = value
    if size > MAX_USER_METADATA:
        raise InvalidArgument(f"user metadata over {MAX_USER_METADATA} bytes",
                              ArgumentName="x-amz-meta-*")
    return content_type[:256], meta


def object_headers(record: ObjectRecord) -> list[tuple[str, str]]:
    headers = [("etag", quoted(record.etag)), ("content-type", record.content_type),
               ("last-modified", formatdate(record.modified_ms / 1000, usegmt=True)),
               ("accept-ranges", "bytes")]
    headers.extend(record.metadata.items())
    if record.manifest.part_sizes:
        headers.append(("x-amz-mp-parts-count", str(len(record.manifest.part_sizes))))
    return headers


def conditions_for(call: Call):  # type: ignore[no-untyped-def]
    """A precheck for conditional PUTs (If-Match / If-None-Match), or None."""
    if call.request.header("if-match") is None and call.request.header("if-none-match") is None:
        return None

    def precheck(current: ObjectRecord | None) -> None:
        check_conditions(call.request, None if current is None else
                         Current(current.etag, current.modified_ms / 1000))

    return precheck


async def put_object(app: S3App, call: Call) -> Reply:
    check = PayloadCheck.for_request(call.request, call.auth)
    content_type, meta = metadata_of(call)
    precheck = conditions_for(call)
    if precheck is not None:  # refuse before reading the body; checked again at commit
        precheck(await app.store.find(call.bucket or "", call.object_key or ""))
    record = await app.store.put(call.bucket or "", call.object_key or "",
                                 Body(call.receive, call.request, call.auth, check),
                                 content_type=content_type, metadata=meta,
                                 precheck=precheck, size_hint=check.length)
    return Reply(200, [("etag", quoted(record.etag))])


async def get_object(app: S3App, call: Call, *, head: bool) -> Reply:
    record = await app.store.head(call.bucket or "", call.object_key or "")
    check_conditions(call.request, Current(record.etag, record.modified_ms / 1000))
    headers = object_headers(record)
    q = call.query()
    start, end, status = 0, record.size, 200
    if "partNumber" in q:
        number = parse_part_number(q["partNumber"])
        start, end = (0, record.size) if record.inline is not None and number == 1 \
            else part_range(record.manifest, number)
        status = 206
        headers.append(("content-range", f"bytes {start}-{max(end - 1, start)}/{record.size}"))
    else:
        wanted = parse_range(call.request.header("range"), record.size)
        if wanted is not None:
            start, end, status = wanted.start, wanted.end, 206
            headers.append(("content-range", wanted.content_range(record.size)))
    for param, header in RESPONSE_OVERRIDES:
        if param in q:
            headers = [(k, v) for k, v in headers if k != header] + [(header, q[param][:256])]
    if head:
        return Reply(status, headers, b"", length=end - start)
    return Reply(status, headers, app.store.read(record, start, end), length=end - start)


def parse_copy_source(value: str) -> tuple[str, str]:
    source = unquote(value.split("?", 1)[0]).lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise InvalidArgument("x-amz-copy-source must be bucket/key",
                              ArgumentName="x-amz-copy-source")
    return validate_bucket_name(bucket), validate_key(key)


async def copy_source(app: S3App, call: Call) -> ObjectRecord:
    """The object x-amz-copy-source names (read permission on its bucket needed)."""
    value = call.request.header("x-amz-copy-source") or ""
    src_bucket, src_key = parse_copy_source(value)
    if not call.key.allows(src_bucket, Permission.READ):
        raise AccessDenied()
    version = value.partition("?")[2]
    if version and version != f"versionId={NULL_VERSION}":
        raise InvalidArgument("Invalid version id specified", ArgumentName="x-amz-copy-source")
    try:
        return await app.store.head(src_bucket, src_key)
    except NoSuchKey:
        raise NoSuchKey(Key=src_key) from None


async def copy_object(app: S3App, call: Call) -> Reply:
    src_bucket, src_key = parse_copy_source(call.request.header("x-amz-copy-source") or "")
    source = await copy_source(app, call)
    check_copy_source(call.request, Current(source.etag, source.modified_ms / 1000))
    directive = (call.request.header("x-amz-metadata-directive") or "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise InvalidArgument("Unknown metadata directive.",
                              ArgumentName="x-amz-metadata-directive")
    if directive == "COPY":
        content_type, meta = source.content_type, dict(source.metadata)
        if (src_bucket, src_key) == (call.bucket, call.object_key):
            raise InvalidRequest("This copy request is illegal because it is trying to copy "
                                 "an object to itself without changing the object's "
                                 "metadata.")
    else:
        content_type, meta = metadata_of(call)
    await Body(call.receive, call.request, call.auth,
               PayloadCheck(length=0)).read_all(limit=0)
    record = await app.store.copy(source, call.bucket or "", call.object_key or "",
                                  content_type=content_type, metadata=meta)
    return Reply(200, [XML], render_copy_object(record.etag, record.modified_ms / 1000))


# --- multipart ------------------------------------------------------------------------------


async def create_multipart(app: S3App, call: Call) -> Reply:
    content_type, meta = metadata_of(call)
    upload_id = await app.uploads.create(call.bucket or "", call.object_key or "",
                                         content_type=content_type, metadata=meta)
    return Reply(200, [XML], render_initiate_multipart(call.bucket or "",
                                                       call.object_key or "", upload_id))


async def upload_part(app: S3App, call: Call) -> Reply:
    q = call.query()
    number = parse_part_number(q.get("partNumber"))
    check = PayloadCheck.for_request(call.request, call.auth, max_size=MAX_PART_SIZE)
    part = await app.uploads.upload_part(call.bucket or "", q["uploadId"], number,
                                         Body(call.receive, call.request, call.auth, check))
    return Reply(200, [("etag", quoted(part.etag))])


async def upload_part_copy(app: S3App, call: Call) -> Reply:
    """UploadPartCopy: a part made of an object's bytes (all, or x-amz-copy-source-range)."""
    q = call.query()
    number = parse_part_number(q.get("partNumber"))
    source = await copy_source(app, call)
    check_copy_source(call.request, Current(source.etag, source.modified_ms / 1000))
    start, end = parse_copy_range(call.request.header("x-amz-copy-source-range"), source.size)
    if end - start > MAX_PART_SIZE:
        raise EntityTooLarge(ProposedSize=end - start, MaxSizeAllowed=MAX_PART_SIZE)
    await Body(call.receive, call.request, call.auth,
               PayloadCheck(length=0)).read_all(limit=0)
    part = await app.uploads.upload_part(call.bucket or "", q["uploadId"], number,
                                         app.store.read(source, start, end))
    return Reply(200, [XML], render_copy_object(part.etag, part.modified_ms / 1000,
                                                part=True))


def parse_copy_range(value: str | None, size: int) -> tuple[int, int]:
    """[start, end) of ``bytes=first-last`` (both given, within the object), or all."""
    if value is None:
        return 0, size
    spec = value.strip()
    first, dash, last = spec.removeprefix("bytes=").partition("-")
    if not spec.startswith("bytes=") or not dash or not first.isdigit() \
            or not last.isdigit() or len(first) > 19 or len(last) > 19:
        raise InvalidArgument("The x-amz-copy-source-range value must be of the form "
                              "bytes=first-last where first and last are the zero-based "
                              "offsets of the first and last bytes to copy",
                              ArgumentName="x-amz-copy-source-range",
                              ArgumentValue=value[:64])
    start, stop = int(first), int(last)
    if start > stop or stop >= size:
        raise InvalidRange(f"Range specified is not valid for source object of size: {size}",
                           RangeRequested=value[:64], ActualObjectSize=size)
    return start, stop + 1


async def complete_multipart(app: S3App, call: Call) -> Reply:
    body = await Body(call.receive, call.request, call.auth,
                      PayloadCheck.for_request(call.request, call.auth)).read_all()
    requested = parse_complete_multipart(body)
    record = await app.uploads.complete(call.bucket or "", call.query()["uploadId"],
                                        requested, key=call.object_key,
                                        precheck=conditions_for(call))
    location = f"/{call.bucket}/{call.object_key}"
    return Reply(200, [XML], render_complete_multipart(location, call.bucket or "",
                                                       call.object_key or "", record.etag))


async def list_parts(app: S3App, call: Call) -> Reply:
    q = call.query()
    marker_text = q.get("part-number-marker", "0") or "0"
    if not (marker_text.isascii() and marker_text.isdigit()) or len(marker_text) > 5:
        raise InvalidArgument("part-number-marker must be an integer",
                              ArgumentName="part-number-marker")
    max_parts = parse_max_keys(q.get("max-parts"), name="max-parts")
    _, upload = await app.uploads.list_parts(call.bucket or "", q["uploadId"])
    parts, truncated = upload.list_parts(marker=int(marker_text), max_parts=max_parts)
    return Reply(200, [XML], render_list_parts(
        call.bucket or "", upload.key, q["uploadId"], parts, owner=OWNER,
        part_number_marker=int(marker_text), max_parts=max_parts, is_truncated=truncated))


async def list_multipart_uploads(app: S3App, call: Call) -> Reply:
    q = call.query()
    entries = await app.uploads.list(call.bucket or "")
    max_uploads = parse_max_keys(q.get("max-uploads"), name="max-uploads")
    page = list_uploads(entries, prefix=q.get("prefix", ""),
                        delimiter=q.get("delimiter") or None,
                        key_marker=q.get("key-marker", ""),
                        upload_id_marker=q.get("upload-id-marker", ""),
                        max_uploads=max_uploads)
    return Reply(200, [XML], render_list_uploads(
        call.bucket or "", page, owner=OWNER, prefix=q.get("prefix", ""),
        delimiter=q.get("delimiter") or None, key_marker=q.get("key-marker", ""),
        upload_id_marker=q.get("upload-id-marker", ""), max_uploads=max_uploads,
        encoding_type=q.get("encoding-type") or None))
