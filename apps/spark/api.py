"""JSON API of the Spark service (mounted by the node under the same token check).

=======  ============================  =====================================================
method   path                          what
=======  ============================  =====================================================
GET      /v1/spark                     the cluster, where its master runs, capable nodes,
                                       and the master's own view (workers, applications)
POST     /v1/spark/up                  ``{"workers", "worker_memory", "cores"}``
POST     /v1/spark/down                remove the cluster (nothing left running)
GET      /v1/spark/jobs                jobs, newest first
POST     /v1/spark/jobs                ``{"file", "source", "args", "conf", "input",
                                       "output"}``: run a driver on this node
GET      /v1/spark/jobs/{id}           one job
GET      /v1/spark/jobs/{id}/log       ``?offset=N``: ``{data, next, ended}``
=======  ============================  =====================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from apps.spark.core import SparkError

if TYPE_CHECKING:
    from apps.spark.service import SparkService


def routes(service: SparkService) -> list[Route]:
    from apps.spark.service import job_dict
    from meshcloud.kit.api import field, query_int, read_json

    async def overview(request: Request) -> Response:
        out = service.overview()
        out["master_view"] = await service.master_json() if out["cluster"] else None
        out["status"] = service.status()
        return JSONResponse(out)

    async def up(request: Request) -> Response:
        body = await read_json(request)
        reply = await service.up(workers=field(body, "workers", int, 2),
                                 worker_memory=field(body, "worker_memory", int, 1 << 30),
                                 cores=field(body, "cores", int, 1))
        return JSONResponse(reply, status_code=201)

    async def down(request: Request) -> Response:
        return JSONResponse(await service.down())

    async def job_list(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"jobs": service.job_rows()})
        body = await read_json(request)
        conf = field(body, "conf", dict, {})
        args = field(body, "args", list, [])
        if not all(isinstance(v, str) for v in conf.values()):
            raise SparkError("conf values are strings", code="bad_conf")
        job_id, job = await service.submit(file=field(body, "file", str, required=True),
                                   source=field(body, "source", str, required=True).encode(),
                                   args=[str(a) for a in args], conf=conf,
                                   input=field(body, "input", str, ""),
                                   output=field(body, "output", str, ""))
        return JSONResponse(job_dict(job_id, job, service.ui_base()), status_code=201)

    async def one(request: Request) -> Response:
        job_id = request.path_params["id"]
        return JSONResponse(job_dict(job_id, service.job(job_id), service.ui_base()))

    async def job_log(request: Request) -> Response:
        offset = query_int(request, "offset", 0, minimum=0, maximum=1 << 40)
        data, ended = await service.job_log(request.path_params["id"], offset)
        return JSONResponse({"data": data.decode("utf-8", errors="replace"),
                             "next": offset + len(data), "ended": ended})

    return [Route("/v1/spark", overview, methods=["GET"]),
            Route("/v1/spark/up", up, methods=["POST"]),
            Route("/v1/spark/down", down, methods=["POST"]),
            Route("/v1/spark/jobs", job_list, methods=["GET", "POST"]),
            Route("/v1/spark/jobs/{id}", one, methods=["GET"]),
            Route("/v1/spark/jobs/{id}/log", job_log, methods=["GET"])]
