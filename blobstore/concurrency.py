"""A nursery that lets typed errors through (trio wraps everything in ExceptionGroups).

The pipelines fan out inside a nursery, and callers want to catch
:class:`~blobstore.errors.WriteFailed` or a source's ``BadDigest``, not an
``ExceptionGroup`` around it. :func:`open_nursery` re-raises the first non-``Cancelled``
error when the group holds nothing else worth reporting; the group stays attached as the
``__context__`` for debugging.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_nursery() -> AsyncIterator[trio.Nursery]:
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
        raise (real or leaves)[0]  # noqa: B904 (context keeps the group)


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
