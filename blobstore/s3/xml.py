"""S3 XML: response documents, and safe parsing of the two request bodies S3 clients send.

Rendering uses :mod:`xml.etree.ElementTree`, which escapes text; keys cannot hold the
characters XML 1.0 forbids because :mod:`blobstore.s3.names` refuses them. With
``encoding-type=url`` keys, prefixes, delimiters and markers are percent-encoded, as S3
does (botocore decodes them). Times are ISO 8601 UTC with milliseconds; ETags are quoted.

Parsing (CompleteMultipartUpload, Delete) takes hostile input, so it uses expat directly
with every entity feature shut: a DOCTYPE at all is refused (no internal or external
entities can then exist, so no XXE and no "billion laughs"), the body size, element count,
depth and text length are bounded, and any failure is one ``MalformedXML`` (S3's answer).
Namespaces are accepted with or without S3's ``xmlns``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote
from xml.parsers import expat

from blobstore.s3.errors import MalformedXML, S3Error
from blobstore.s3.listing import ListPage
from blobstore.s3.multipart import MAX_PART_NUMBER, Part, UploadsPage, clean_etag

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"

MAX_XML_BODY = 2 * 1024 * 1024
"""Largest request body parsed: 1000 delete keys of 1 KiB, or 10000 parts, fit."""

MAX_ELEMENTS = 40_000
MAX_DEPTH = 8
MAX_DELETE_KEYS = 1000
"""S3's limit on a multi-object delete."""

NULL_VERSION = "null"
"""The version id of every object in a bucket without versioning."""


@dataclass(frozen=True, slots=True)
class Owner:
    id: str
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class BucketEntry:
    name: str
    created: float


@dataclass(frozen=True, slots=True)
class ObjectEntry:
    key: str
    size: int
    etag: str
    last_modified: float
    storage_class: str = "STANDARD"
    owner: Owner | None = None


# --- rendering ------------------------------------------------------------------------


def timestamp(seconds: float) -> str:
    """ISO 8601 with milliseconds, UTC: ``2026-01-15T12:30:00.000Z``."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def quoted(etag: str) -> str:
    return f'"{clean_etag(etag)}"'


def _root(tag: str) -> ET.Element:
    return ET.Element(tag, xmlns=S3_NS)


def _add(parent: ET.Element, tag: str, text: object = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = _text(text)
    return element


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _bytes(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _enc(value: str, encoding_type: str | None) -> str:
    return quote(value, safe="/") if encoding_type == "url" else value


def _owner(parent: ET.Element, tag: str, owner: Owner) -> None:
    element = _add(parent, tag)
    _add(element, "ID", owner.id)
    _add(element, "DisplayName", owner.display_name or owner.id)


def render_list_buckets(buckets: Iterable[BucketEntry], owner: Owner) -> bytes:
    root = _root("ListAllMyBucketsResult")
    _owner(root, "Owner", owner)
    holder = _add(root, "Buckets")
    for bucket in buckets:
        element = _add(holder, "Bucket")
        _add(element, "Name", bucket.name)
        _add(element, "CreationDate", timestamp(bucket.created))
    return _bytes(root)


def render_location(region: str) -> bytes:
    root = _root("LocationConstraint")
    root.text = "" if region == "us-east-1" else region
    return _bytes(root)


def _contents(root: ET.Element, page: ListPage[ObjectEntry], encoding_type: str | None,
              with_owner: bool, owner: Owner | None = None) -> None:
    for key, entry in page.contents:
        element = _add(root, "Contents")
        _add(element, "Key", _enc(key, encoding_type))
        _add(element, "LastModified", timestamp(entry.last_modified))
        _add(element, "ETag", quoted(entry.etag))
        _add(element, "Size", entry.size)
        shown = entry.owner or owner
        if with_owner and shown is not None:
            _owner(element, "Owner", shown)
        _add(element, "StorageClass", entry.storage_class)
    for common in page.common_prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", _enc(common, encoding_type))


def render_list_objects_v1(
    bucket: str, page: ListPage[ObjectEntry], *, prefix: str = "",
    delimiter: str | None = None, marker: str = "", max_keys: int = 1000,
    encoding_type: str | None = None, owner: Owner | None = None,
) -> bytes:
    root = _root("ListBucketResult")
    _add(root, "Name", bucket)
    _add(root, "Prefix", prefix)  # v1 sends the prefix as given, even with encoding-type
    _add(root, "Marker", _enc(marker, encoding_type))
    _add(root, "MaxKeys", max_keys)
    if delimiter:
        _add(root, "Delimiter", _enc(delimiter, encoding_type))
    _add(root, "IsTruncated", page.is_truncated)
    if page.is_truncated and delimiter and page.last is not None:
        # S3 sends NextMarker only with a delimiter; without one clients use the last key.
        _add(root, "NextMarker", _enc(page.last.value, encoding_type))
    if encoding_type:
        _add(root, "EncodingType", encoding_type)
    _contents(root, page, encoding_type, with_owner=True, owner=owner)
    return _bytes(root)


def render_list_objects_v2(
    bucket: str, page: ListPage[ObjectEntry], *, prefix: str = "",
    delimiter: str | None = None, max_keys: int = 1000, start_after: str = "",
    continuation_token: str | None = None, next_continuation_token: str | None = None,
    encoding_type: str | None = None, fetch_owner: bool = False, owner: Owner | None = None,
) -> bytes:
    root = _root("ListBucketResult")
    _add(root, "Name", bucket)
    _add(root, "Prefix", _enc(prefix, encoding_type))
    if delimiter:
        _add(root, "Delimiter", _enc(delimiter, encoding_type))
    _add(root, "MaxKeys", max_keys)
    _add(root, "KeyCount", page.key_count)
    _add(root, "IsTruncated", page.is_truncated)
    if continuation_token is not None:
        _add(root, "ContinuationToken", continuation_token)
    if next_continuation_token is not None:
        _add(root, "NextContinuationToken", next_continuation_token)
    if start_after:
        _add(root, "StartAfter", _enc(start_after, encoding_type))
    if encoding_type:
        _add(root, "EncodingType", encoding_type)
    _contents(root, page, encoding_type, with_owner=fetch_owner, owner=owner)
    return _bytes(root)


def render_list_versions(
    bucket: str, page: ListPage[ObjectEntry], *, owner: Owner, prefix: str = "",
    delimiter: str | None = None, key_marker: str = "", version_id_marker: str = "",
    max_keys: int = 1000, encoding_type: str | None = None,
) -> bytes:
    """ListObjectVersions of a bucket without versioning: each object is its one version,
    ``null``, the latest; there are no delete markers."""
    root = _root("ListVersionsResult")
    _add(root, "Name", bucket)
    _add(root, "Prefix", _enc(prefix, encoding_type))
    _add(root, "KeyMarker", _enc(key_marker, encoding_type))
    _add(root, "VersionIdMarker", version_id_marker)
    if page.is_truncated and page.last is not None:
        _add(root, "NextKeyMarker", _enc(page.last.value, encoding_type))
        _add(root, "NextVersionIdMarker", NULL_VERSION)
    _add(root, "MaxKeys", max_keys)
    if delimiter:
        _add(root, "Delimiter", _enc(delimiter, encoding_type))
    _add(root, "IsTruncated", page.is_truncated)
    if encoding_type:
        _add(root, "EncodingType", encoding_type)
    for key, entry in page.contents:
        element = _add(root, "Version")
        _add(element, "Key", _enc(key, encoding_type))
        _add(element, "VersionId", NULL_VERSION)
        _add(element, "IsLatest", True)
        _add(element, "LastModified", timestamp(entry.last_modified))
        _add(element, "ETag", quoted(entry.etag))
        _add(element, "Size", entry.size)
        _owner(element, "Owner", entry.owner or owner)
        _add(element, "StorageClass", entry.storage_class)
    for common in page.common_prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", _enc(common, encoding_type))
    return _bytes(root)


def render_initiate_multipart(bucket: str, key: str, upload_id: str) -> bytes:
    root = _root("InitiateMultipartUploadResult")
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "UploadId", upload_id)
    return _bytes(root)


def render_complete_multipart(location: str, bucket: str, key: str, etag: str) -> bytes:
    root = _root("CompleteMultipartUploadResult")
    _add(root, "Location", location)
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "ETag", quoted(etag))
    return _bytes(root)


def render_list_parts(
    bucket: str, key: str, upload_id: str, parts: Sequence[Part], *, owner: Owner,
    part_number_marker: int = 0, max_parts: int = 1000, is_truncated: bool = False,
) -> bytes:
    root = _root("ListPartsResult")
    _add(root, "Bucket", bucket)
    _add(root, "Key", key)
    _add(root, "UploadId", upload_id)
    _owner(root, "Initiator", owner)
    _owner(root, "Owner", owner)
    _add(root, "StorageClass", "STANDARD")
    _add(root, "PartNumberMarker", part_number_marker)
    _add(root, "NextPartNumberMarker", parts[-1].number if parts else part_number_marker)
    _add(root, "MaxParts", max_parts)
    _add(root, "IsTruncated", is_truncated)
    for part in parts:
        element = _add(root, "Part")
        _add(element, "PartNumber", part.number)
        _add(element, "LastModified", timestamp(part.last_modified))
        _add(element, "ETag", quoted(part.etag))
        _add(element, "Size", part.size)
    return _bytes(root)


def render_list_uploads(
    bucket: str, page: UploadsPage, *, owner: Owner, prefix: str = "",
    delimiter: str | None = None, key_marker: str = "", upload_id_marker: str = "",
    max_uploads: int = 1000, encoding_type: str | None = None,
) -> bytes:
    root = _root("ListMultipartUploadsResult")
    _add(root, "Bucket", bucket)
    _add(root, "KeyMarker", _enc(key_marker, encoding_type))
    _add(root, "UploadIdMarker", upload_id_marker)
    _add(root, "NextKeyMarker", _enc(page.next_key_marker, encoding_type))
    _add(root, "NextUploadIdMarker", page.next_upload_id_marker)
    _add(root, "Prefix", _enc(prefix, encoding_type))
    if delimiter:
        _add(root, "Delimiter", _enc(delimiter, encoding_type))
    _add(root, "MaxUploads", max_uploads)
    _add(root, "IsTruncated", page.is_truncated)
    if encoding_type:
        _add(root, "EncodingType", encoding_type)
    for upload in page.uploads:
        element = _add(root, "Upload")
        _add(element, "Key", _enc(upload.key, encoding_type))
        _add(element, "UploadId", upload.upload_id)
        _owner(element, "Initiator", owner)
        _owner(element, "Owner", owner)
        _add(element, "StorageClass", "STANDARD")
        _add(element, "Initiated", timestamp(upload.initiated))
    for common in page.common_prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", _enc(common, encoding_type))
    return _bytes(root)


def render_copy_object(etag: str, last_modified: float, *, part: bool = False) -> bytes:
    root = _root("CopyPartResult" if part else "CopyObjectResult")
    _add(root, "LastModified", timestamp(last_modified))
    _add(root, "ETag", quoted(etag))
    return _bytes(root)


@dataclass(frozen=True, slots=True)
class DeleteError:
    key: str
    code: str
    message: str
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class Deleted:
    key: str
    version_id: str | None = None
    """Echoed when the request named a version."""


def render_delete_result(deleted: Iterable[Deleted | str], errors: Iterable[DeleteError],
                         *, quiet: bool = False) -> bytes:
    root = _root("DeleteResult")
    if not quiet:
        for item in deleted:
            done = item if isinstance(item, Deleted) else Deleted(item)
            element = _add(root, "Deleted")
            _add(element, "Key", done.key)
            if done.version_id is not None:
                _add(element, "VersionId", done.version_id)
    for err in errors:
        element = _add(root, "Error")
        _add(element, "Key", err.key)
        if err.version_id is not None:
            _add(element, "VersionId", err.version_id)
        _add(element, "Code", err.code)
        _add(element, "Message", err.message)
    return _bytes(root)


def render_error(error: S3Error, *, request_id: str = "", resource: str = "") -> bytes:
    """The ``<Error>`` document (no namespace, as S3)."""
    root = ET.Element("Error")
    _add(root, "Code", error.code)
    _add(root, "Message", error.message)
    if resource or error.resource:
        _add(root, "Resource", resource or error.resource)
    for name, value in error.extra.items():
        _add(root, name, value)
    _add(root, "RequestId", request_id)
    return _bytes(root)


# --- parsing --------------------------------------------------------------------------


@dataclass(slots=True)
class Node:
    tag: str
    text: str = ""
    children: list[Node] = field(default_factory=list)

    def child(self, tag: str) -> Node | None:
        for node in self.children:
            if node.tag == tag:
                return node
        return None

    def all(self, tag: str) -> list[Node]:
        return [node for node in self.children if node.tag == tag]


def parse_xml(body: bytes, *, max_size: int = MAX_XML_BODY) -> Node:
    """A bounded, entity-free parse of ``body`` into :class:`Node` s (see module doc)."""
    if len(body) > max_size:
        raise MalformedXML(f"the XML body is larger than {max_size} bytes")
    if not body.strip():
        raise MalformedXML("the XML body is empty")
    parser = expat.ParserCreate(namespace_separator=" ")
    stack: list[Node] = []
    root: list[Node] = []
    count = 0

    def refuse(*_: object) -> None:
        raise MalformedXML("DOCTYPE and entity declarations are not allowed")

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > MAX_ELEMENTS or len(stack) >= MAX_DEPTH:
            raise MalformedXML("the XML body is too large or too deep")
        node = Node(name.rsplit(" ", 1)[-1])
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)

    def end(name: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            node = stack[-1]
            if len(node.text) + len(data) > 4096:
                raise MalformedXML("an XML element's text is too long")
            node.text += data

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise MalformedXML(f"not well-formed XML: {expat.ErrorString(exc.code)}") from None
    except (LookupError, ValueError):  # an unknown or multi-byte encoding in the declaration
        raise MalformedXML("the XML declaration names an encoding we do not read") from None
    if len(root) != 1:
        raise MalformedXML("no root element")
    return root[0]


def parse_complete_multipart(body: bytes) -> list[tuple[int, str]]:
    """(part number, ETag) pairs of a CompleteMultipartUpload body, in the given order."""
    root = parse_xml(body)
    if root.tag != "CompleteMultipartUpload":
        raise MalformedXML("expected a CompleteMultipartUpload document")
    parts = []
    for node in root.all("Part"):
        number_node, etag_node = node.child("PartNumber"), node.child("ETag")
        if number_node is None or etag_node is None:
            raise MalformedXML("each Part needs a PartNumber and an ETag")
        number = number_node.text.strip()
        if not (number.isascii() and number.isdigit()) or len(number) > 5 \
                or not 1 <= int(number) <= MAX_PART_NUMBER:
            raise MalformedXML(f"PartNumber '{number[:10]}' is not within 1..10000")
        parts.append((int(number), clean_etag(etag_node.text)))
    if not parts:
        raise MalformedXML("CompleteMultipartUpload lists no parts")
    if len(parts) > MAX_PART_NUMBER:
        raise MalformedXML("too many parts")
    return parts


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    quiet: bool
    objects: tuple[tuple[str, str | None], ...]
    """(key, version id) pairs; keys are still unvalidated text."""


def parse_delete(body: bytes) -> DeleteRequest:
    root = parse_xml(body)
    if root.tag != "Delete":
        raise MalformedXML("expected a Delete document")
    quiet_node = root.child("Quiet")
    quiet = quiet_node is not None and quiet_node.text.strip().lower() == "true"
    objects = []
    for node in root.all("Object"):
        key = node.child("Key")
        if key is None:
            raise MalformedXML("each Object needs a Key")
        version = node.child("VersionId")
        objects.append((key.text, version.text if version is not None else None))
    if not objects:
        raise MalformedXML("Delete lists no objects")
    if len(objects) > MAX_DELETE_KEYS:
        raise MalformedXML(f"Delete lists more than {MAX_DELETE_KEYS} objects")
    return DeleteRequest(quiet, tuple(objects))
