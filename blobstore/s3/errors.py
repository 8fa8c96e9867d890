"""S3 errors: each class knows its S3 error code and HTTP status.

Every client-visible failure of the S3 API is an :class:`S3Error` subclass, raised by the
pure pieces of this package and turned into an ``<Error>`` document (:func:`
blobstore.s3.xml.render_error`) by the HTTP layer. ``code`` is the S3 code (``NoSuchKey``)
so the error is also a proper :class:`~meshcloud.errors.MeshError` with a stable code;
``extra`` holds the additional elements S3 puts in some errors (``Key``, ``BucketName``,
``RequestTime``...).

Codes and statuses follow the Amazon S3 API reference, "Error responses / List of error
codes". A few errors S3 raises with a shared code get their own class here (e.g.
:class:`InvalidObjectKey` is an ``InvalidArgument``) so callers can catch precisely.
"""

from __future__ import annotations

from typing import ClassVar

from meshcloud.errors import MeshError


class S3Error(MeshError):
    """Base: an S3 error response. Subclasses set ``code``, ``status`` and a default message."""

    code = "InternalError"
    status: ClassVar[int] = 500
    default_message: ClassVar[str] = "We encountered an internal error. Please try again."

    def __init__(self, message: str | None = None, *, resource: str = "",
                 **extra: str | int) -> None:
        super().__init__(message or self.default_message)
        self.resource = resource
        self.extra = {k: str(v) for k, v in extra.items()}

    @property
    def has_body(self) -> bool:
        """304 and HEAD replies carry no body."""
        return self.status != 304


class InternalError(S3Error):
    """InternalError (500)."""


class AccessDenied(S3Error):
    code = "AccessDenied"
    status = 403
    default_message = "Access Denied"


class ExpiredPresignedUrl(AccessDenied):
    """A presigned URL past its X-Amz-Expires: S3 answers AccessDenied."""

    default_message = "Request has expired"


class NotYetValidPresignedUrl(AccessDenied):
    default_message = "Request is not valid yet"


class UnsignedHeaders(AccessDenied):
    default_message = "There were headers present in the request which were not signed"


class InvalidArgument(S3Error):
    code = "InvalidArgument"
    status = 400
    default_message = "Invalid Argument"


class InvalidObjectKey(InvalidArgument):
    """A key with NUL, control characters, '.'/'..' segments or invalid UTF-8."""

    default_message = "Object key contains characters or segments that are not allowed"


class InvalidRequest(S3Error):
    code = "InvalidRequest"
    status = 400
    default_message = "Invalid Request"


class InvalidChunkedBody(InvalidRequest):
    """An aws-chunked body whose framing is wrong (bad size line, missing CRLF...)."""

    default_message = "The aws-chunked request body is malformed."


class InvalidDigest(S3Error):
    code = "InvalidDigest"
    status = 400
    default_message = "The Content-MD5 you specified is not valid."


class BadDigest(S3Error):
    code = "BadDigest"
    status = 400
    default_message = "The Content-MD5 you specified did not match what we received."


class ContentSha256Mismatch(S3Error):
    code = "XAmzContentSHA256Mismatch"
    status = 400
    default_message = "The provided 'x-amz-content-sha256' header does not match what was computed."


class ChecksumMismatch(BadDigest):
    default_message = "The checksum you specified did not match what we received."


class IncompleteBody(S3Error):
    code = "IncompleteBody"
    status = 400
    default_message = ("You did not provide the number of bytes specified by the "
                       "Content-Length HTTP header.")


class EntityTooLarge(S3Error):
    code = "EntityTooLarge"
    status = 400
    default_message = "Your proposed upload exceeds the maximum allowed object size."


class EntityTooSmall(S3Error):
    code = "EntityTooSmall"
    status = 400
    default_message = "Your proposed upload is smaller than the minimum allowed object size."


class KeyTooLongError(S3Error):
    code = "KeyTooLongError"
    status = 400
    default_message = "Your key is too long."


class InvalidBucketName(S3Error):
    code = "InvalidBucketName"
    status = 400
    default_message = "The specified bucket is not valid."


class InvalidRange(S3Error):
    code = "InvalidRange"
    status = 416
    default_message = "The requested range is not satisfiable"


class PreconditionFailed(S3Error):
    code = "PreconditionFailed"
    status = 412
    default_message = "At least one of the pre-conditions you specified did not hold"


class NotModified(S3Error):
    """Not an error to the client: a 304 with no body (raised to short-circuit a GET)."""

    code = "NotModified"
    status = 304
    default_message = "Not Modified"


class NoSuchBucket(S3Error):
    code = "NoSuchBucket"
    status = 404
    default_message = "The specified bucket does not exist"


class NoSuchKey(S3Error):
    code = "NoSuchKey"
    status = 404
    default_message = "The specified key does not exist."


class NoSuchVersion(S3Error):
    code = "NoSuchVersion"
    status = 404
    default_message = ("The version ID specified in the request does not match an existing "
                       "version.")


class NoSuchUpload(S3Error):
    code = "NoSuchUpload"
    status = 404
    default_message = ("The specified multipart upload does not exist. The upload ID might "
                       "be invalid, or the multipart upload might have been aborted or "
                       "completed.")


class BucketNotEmpty(S3Error):
    code = "BucketNotEmpty"
    status = 409
    default_message = "The bucket you tried to delete is not empty"


class BucketAlreadyOwnedByYou(S3Error):
    code = "BucketAlreadyOwnedByYou"
    status = 409
    default_message = ("The bucket you tried to create already exists, and you own it.")


class BucketAlreadyExists(S3Error):
    code = "BucketAlreadyExists"
    status = 409
    default_message = ("The requested bucket name is not available. The bucket namespace is "
                       "shared by all users of the system.")


class InvalidPart(S3Error):
    code = "InvalidPart"
    status = 400
    default_message = ("One or more of the specified parts could not be found. The part "
                       "might not have been uploaded, or the specified entity tag might not "
                       "have matched the part's entity tag.")


class InvalidPartOrder(S3Error):
    code = "InvalidPartOrder"
    status = 400
    default_message = ("The list of parts was not in ascending order. Parts must be ordered "
                       "by part number.")


class MalformedXML(S3Error):
    code = "MalformedXML"
    status = 400
    default_message = ("The XML you provided was not well-formed or did not validate "
                       "against our published schema.")


class RequestTimeTooSkewed(S3Error):
    code = "RequestTimeTooSkewed"
    status = 403
    default_message = "The difference between the request time and the server's time is too large."


class SignatureDoesNotMatch(S3Error):
    code = "SignatureDoesNotMatch"
    status = 403
    default_message = ("The request signature we calculated does not match the signature "
                       "you provided. Check your key and signing method.")


class InvalidAccessKeyId(S3Error):
    code = "InvalidAccessKeyId"
    status = 403
    default_message = "The AWS access key Id you provided does not exist in our records."


class AuthorizationHeaderMalformed(S3Error):
    code = "AuthorizationHeaderMalformed"
    status = 400
    default_message = "The authorization header is malformed."


class AuthorizationQueryParametersError(S3Error):
    code = "AuthorizationQueryParametersError"
    status = 400
    default_message = "Query-string authentication parameters are malformed."


class InvalidPresignedExpiry(AuthorizationQueryParametersError):
    """An X-Amz-Expires that is not a number of seconds within a week: S3 refuses the URL
    with this code but status 403, like an expired one."""

    status = 403


class MissingSecurityHeader(S3Error):
    code = "MissingSecurityHeader"
    status = 400
    default_message = "Your request is missing a required header."


class MissingContentLength(S3Error):
    code = "MissingContentLength"
    status = 411
    default_message = "You must provide the Content-Length HTTP header."


class ExpiredToken(S3Error):
    code = "ExpiredToken"
    status = 400
    default_message = "The provided token has expired."


class MethodNotAllowed(S3Error):
    code = "MethodNotAllowed"
    status = 405
    default_message = "The specified method is not allowed against this resource."


class NotImplementedS3(S3Error):
    code = "NotImplemented"
    status = 501
    default_message = ("A header or query you provided implies functionality that is not "
                       "implemented.")


class MaxMessageLengthExceeded(S3Error):
    code = "MaxMessageLengthExceeded"
    status = 400
    default_message = "Your request was too big."


class TooManyParts(InvalidArgument):
    default_message = "Part number must be an integer between 1 and 10000, inclusive"


class ServiceUnavailable(S3Error):
    code = "ServiceUnavailable"
    status = 503
    default_message = "Please reduce your request rate."


class SlowDown(S3Error):
    code = "SlowDown"
    status = 503
    default_message = "Please reduce your request rate."


def all_error_classes() -> list[type[S3Error]]:
    """Every S3Error class defined here (for tests and docs)."""
    out, todo = [], [S3Error]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out
