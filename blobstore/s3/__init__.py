"""The S3 protocol pieces: pure functions and small classes, ready to mount in an ASGI app.

Nothing here does I/O or reads a clock; the HTTP layer (hypercorn + starlette, later)
parses the request into plain values, calls these, and writes what they return:

* :mod:`.request`    S3Request: method, raw path and query, headers, as received;
* :mod:`.errors`     S3Error subclasses: each knows its S3 code and HTTP status;
* :mod:`.sigv4`      AWS Signature V4 (Authorization header and presigned URLs);
* :mod:`.chunked`    the ``aws-chunked`` body decoder with per-chunk signatures;
* :mod:`.payload`    x-amz-content-sha256, Content-MD5 and length checks on a body;
* :mod:`.names`      bucket names, object keys, path-style and virtual-host addressing;
* :mod:`.ranges`     the Range header;
* :mod:`.conditions` If-Match / If-None-Match / If-(Un)Modified-Since;
* :mod:`.listing`    ListObjects (v1, v2) paging with tamper-evident continuation tokens;
* :mod:`.multipart`  multipart upload bookkeeping and S3's multipart ETag;
* :mod:`.xml`        response documents, and safe parsing of request bodies.
"""
