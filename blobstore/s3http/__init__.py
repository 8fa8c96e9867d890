"""The S3 HTTP API: an ASGI app (served by hypercorn on trio) on the pure pieces of
:mod:`blobstore.s3` and the :class:`~blobstore.objects.ObjectStore`.

* :mod:`.http`     ASGI plumbing: the request as an ``S3Request``, streamed bodies, replies;
* :mod:`.app`      authentication, addressing, routing, errors as S3 XML;
* :mod:`.handlers` one function per S3 operation;
* :mod:`.server`   hypercorn bound to the node's ``s3`` address.
"""
