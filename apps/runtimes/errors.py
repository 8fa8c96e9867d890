"""Errors of the workload runtimes: one class, a stable code per kind of failure.

The reconciler decides what to do from the code alone (``image_not_found``: tell the user
and do not retry; ``start_failed``: back off and retry; ``fenced``: another owner won).
"""

from __future__ import annotations

import enum

from meshcloud.errors import MeshError


class ErrorCode(enum.StrEnum):
    """Stable codes of :class:`WorkloadRuntimeError` (the CLI and API report these)."""

    INVALID_SPEC = "invalid_spec"
    IMAGE_NOT_FOUND = "image_not_found"
    IMAGE_BUILD_FAILED = "image_build_failed"
    START_FAILED = "start_failed"
    STOP_FAILED = "stop_failed"
    NOT_FOUND = "replica_not_found"
    ALREADY_RUNNING = "already_running"
    FENCED = "fenced"
    UNAVAILABLE = "runtime_unavailable"
    NOT_RUNNING = "runtime_not_running"
    BACKEND = "runtime_backend_error"


class WorkloadRuntimeError(MeshError):
    """A runtime refused or failed an operation; ``code`` is one of :class:`ErrorCode`."""

    code = "runtime_error"

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message, code=str(code))
