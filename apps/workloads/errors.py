"""Errors of the workload layer: a refused spec names every problem at once.

:class:`SpecError` carries the list of problems (one line each) so the CLI can print them
and the API can return them as a list; its message joins them for one-line reports.
"""

from __future__ import annotations

from meshcloud.errors import MeshError, NotFoundError


class WorkloadError(MeshError):
    """Something about workloads the user asked for cannot be done."""

    code = "workload_error"


class SpecError(WorkloadError):
    """A workload spec was refused before anything was written; ``problems`` says why."""

    code = "invalid_spec"

    def __init__(self, name: str, problems: list[str], *, code: str | None = None) -> None:
        self.name = name
        self.problems = list(problems)
        what = f"workload {name!r}" if name else "workload"
        super().__init__(f"{what} refused: " + "; ".join(self.problems), code=code)


class WorkloadNotFound(NotFoundError):
    code = "workload_not_found"


class WorkloadExists(WorkloadError):
    """``run`` of a name that exists (``deploy`` replaces instead)."""

    code = "conflict"
