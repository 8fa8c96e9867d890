"""The Spark service of a node.

* publishes what this node offers Spark (``spark_nodes``: Java 17 + pyspark found, its
  mesh host, its S3 URL) and, when it can, the ``spark=yes`` capacity label that the
  cluster's workloads require;
* ``up``: the master as a leased singleton workload, workers as a replicated workload
  (process runtime, distinct capable nodes), the master's web UI exposed on every node's
  ingress, an S3 key for the jobs;
* on every node, a TCP listener on (mesh host, ``rpc_port``) that carries each connection
  to the master wherever it runs now (over a mesh stream when it is elsewhere): the stable
  master address of workers and drivers;
* ``submit``: runs a job's driver here (client deploy mode), as an unprivileged user when
  the agent is root, keeps its log, stores it in the log bucket when it ends;
* the master, the workers and the drivers run behind the master's reverse proxy, so the
  workers' and running applications' UIs are under the master's UI on every node's
  ingress (``ui_url`` in the API; the driver's application id is asked of its UI).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from apps.ingress.forward import (
    connect_upstream,
    open_forward,
    serve_forward,
    splice_upstream,
)
from apps.ingress.messages import Exposure, ForwardOpen
from apps.spark import core, dist
from apps.spark.core import MASTER, WORKERS, ClusterPlan, SparkError
from apps.spark.messages import SPARK_FORWARD_PROTOCOL, SparkCluster, SparkJob, SparkNode
from apps.spark.tables import (
    CLUSTER_KEY,
    SPARK_CLUSTER,
    SPARK_JOBS,
    SPARK_NODES,
    cluster,
    jobs,
    spark_nodes,
)
from meshcloud.errors import MeshError, NotFoundError
from meshcloud.kit.service import ServiceBase

if TYPE_CHECKING:
    from apps.workloads.service import WorkloadService
    from blobstore.node_service import BlobService
    from meshcloud.kit.service import NodeContext

log = logging.getLogger(__name__)

TICK = 1.0
IDLE_RECHECK = 30.0
"""With no Spark cluster, the master-address listener loop sleeps until the cluster's row
changes, and looks again at least this often anyway."""
UI_TIMEOUT = 3.0
SOURCE_FILE = Path(__file__).with_name("source.py")
MAX_LOG_READ = 256 * 1024
APP_ID_POLL = 0.5
"""Seconds between two asks of a starting driver's UI for its application id (ten times
that after ``APP_ID_PATIENCE`` asks: a driver with its UI off never answers)."""
APP_ID_PATIENCE = 240


class SparkService(ServiceBase):
    name = "spark"
    events = ("spark.up", "spark.down", "spark.job")

    def __init__(self, node: NodeContext, workloads: WorkloadService,
                 blobs: BlobService) -> None:
        self.node = node
        self.state = node.state
        self.workloads = workloads
        self.blobs = blobs
        for table in (SPARK_CLUSTER, SPARK_NODES, SPARK_JOBS):
            node.state.open_table(table)
        self.tools = dist.detect()
        if self.tools.capable and node.config.labels.get(core.CAPABILITY[0]) is None:
            # placement reads the capacity labels: a node without Java never gets a worker
            node.config.labels[core.CAPABILITY[0]] = core.CAPABILITY[1]
        self.dist_dir: Path | None = None
        self.data_dir = Path(node.datadir.path)
        from apps.runtimes.homes import default_homes
        from apps.runtimes.users import can_switch_user

        self.switch_users = can_switch_user()
        # a driver runs as its own uid: its files live where that uid can reach them
        self.jobs_dir = (default_homes(self.data_dir) / "spark-jobs.d" if self.switch_users
                         else self.data_dir / "spark" / "jobs")
        self.listener: tuple[int, trio.CancelScope] | None = None
        self.forwarded = 0
        self.refused = 0
        self.errors: dict[str, str] = {}
        self.running: dict[str, trio.CancelScope] = {}
        self.app_ids: dict[str, str] = {}
        """Application ids of running jobs, as their drivers' UIs told them."""
        self.nursery: trio.Nursery | None = None

    def tables(self) -> tuple[Any, ...]:
        return (SPARK_CLUSTER, SPARK_NODES, SPARK_JOBS)

    # --- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.node.transport.serve(SPARK_FORWARD_PROTOCOL, self._serve_forward)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._prepare)
            nursery.start_soon(self._listen_loop, nursery)
            self._fail_orphans()
            task_status.started()

    async def _prepare(self) -> None:
        if self.tools.capable:
            try:
                self.dist_dir = await trio.to_thread.run_sync(
                    dist.prepare, self.tools, self.data_dir, SOURCE_FILE)
            except OSError as exc:
                self.errors["dist"] = str(exc)
                log.error("spark: cannot lay out the Spark files: %s", exc)
        while True:
            self._publish_node()
            await trio.sleep(10 * TICK)

    def _publish_node(self) -> None:
        from apps.workloads.service import machine_ram_mb

        capable = self.tools.capable and self.dist_dir is not None
        row = SparkNode(capable=capable, reason=self.errors.get("dist", self.tools.reason),
                        host=self.bind_host(), s3_url=self.s3_url(), ram_mb=machine_ram_mb(),
                        updated_ms=0)
        old = self.state.get(SPARK_NODES.name, (self.node.node_id,))
        if old != row:
            self.state.put(SPARK_NODES.name, (self.node.node_id,), row)

    def _fail_orphans(self) -> None:
        """Jobs this node ran before it restarted never finish: say so."""
        me = self.node.node_id
        for job_id, job in jobs(self.state).items():
            if job.node == me and job.state not in core.FINAL:
                self.state.put(SPARK_JOBS.name, (job_id,), _replace(
                    job, state=core.FAILED, error="the node restarted during the job",
                    finished_ms=self.node.clock.wall_ms()))

    # --- helpers ---------------------------------------------------------------------------

    def bind_host(self) -> str:
        from meshcloud.transport.addresses import parse_address

        addresses = self.node.transport.listen_addresses
        for address in addresses() if callable(addresses) else addresses:
            try:
                host = str(parse_address(address)[0])
            except (ValueError, MeshError):
                continue
            return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return "127.0.0.1"

    def s3_url(self) -> str:
        urls = getattr(self.blobs, "s3_urls", None) or []
        return str(urls[0]) if urls else ""

    def alive(self) -> set[bytes]:
        return set(self.node.alive_peer_ids()) | {self.node.node_id}

    def capable_nodes(self, memory: int = 0) -> dict[bytes, SparkNode]:
        need = core.mib(memory + core.DAEMON_MEMORY) if memory else 0
        alive = self.alive()
        return {n: r for n, r in spark_nodes(self.state).items()
                if r.capable and n in alive and r.ram_mb >= need}

    def master_location(self) -> tuple[bytes, int] | None:
        from apps.ingress.tables import endpoint_rows

        alive = self.alive()
        rows = [(r.updated_ms, k, r) for k, r in endpoint_rows(self.state).items()
                if k[0] == MASTER and k[1] == "rpc" and r.node in alive and 0 < r.port < 65536]
        if not rows:
            return None
        _, _, row = max(rows, key=lambda t: (t[0], t[1]))
        return row.node, row.port

    # --- requests ---------------------------------------------------------------------------

    async def up(self, *, workers: int, worker_memory: int, cores: int = 1) -> dict[str, Any]:
        from apps.ingress.tables import EXPOSURES, exposures

        capable = self.capable_nodes(worker_memory)
        core.check_up(workers, worker_memory, cores, len(capable))
        if not self.tools.capable:
            raise SparkError(f"this node cannot lay out Spark ({self.tools.reason}); run "
                             "`spark up` on a node with Java and pyspark", code="no_java")
        current = cluster(self.state)
        if current is not None:
            rpc_port, ui_port = current.rpc_port, current.ui_port
            key, secret = current.access_key, current.secret
        else:
            rpc_port, ui_port = core.free_ports(exposures(self.state))
            key, secret = await self._new_key("spark", {"*": "read,write"}, create=True)
        if current is not None and current.recovery_key:
            recovery = core.Recovery(core.RECOVERY_BUCKET, current.recovery_prefix,
                                     current.recovery_key, current.recovery_secret)
        else:
            # the master's state: a prefix of this cluster's own, a key for that bucket only
            r_key, r_secret = await self._new_key(
                "spark-recovery", {core.RECOVERY_BUCKET: "read,write"}, create=False)
            recovery = core.Recovery(core.RECOVERY_BUCKET, f"{secrets.token_hex(6)}/",
                                     r_key, r_secret)
        await self._ensure_bucket(core.RECOVERY_BUCKET)
        plan = ClusterPlan(workers=workers, worker_memory=worker_memory, worker_cores=cores,
                           rpc_port=rpc_port, ui_port=ui_port)
        rows = spark_nodes(self.state)
        master, worker = self.specs(plan, rows, recovery)
        self.workloads.submit(master, replace_existing=True)
        self.workloads.submit(worker, replace_existing=True)
        self.state.put(EXPOSURES.name, (ui_port,),
                       Exposure(workload=MASTER, endpoint="ui", bind="mesh"))
        row = SparkCluster(workers=workers, worker_memory=worker_memory, worker_cores=cores,
                           rpc_port=rpc_port, ui_port=ui_port, access_key=key, secret=secret,
                           created_ms=self.node.clock.wall_ms(),
                           recovery_prefix=recovery.prefix, recovery_key=recovery.access_key,
                           recovery_secret=recovery.secret)
        self.state.put(SPARK_CLUSTER.name, (CLUSTER_KEY,), row)
        self.node.events.emit("spark.up", workers=workers)
        return self.overview()

    async def _new_key(self, name: str, buckets: dict[str, str], *, create: bool
                       ) -> tuple[str, str]:
        from blobstore.records import S3KEYS, AccessKeyRecord

        key = "MCSPARK" + secrets.token_hex(7).upper()[:13]
        secret = secrets.token_urlsafe(30)[:40]
        record = AccessKeyRecord(name=name, secret=secret, created_ms=self.node.clock.wall_ms(),
                                 buckets=buckets, create_buckets=create,
                                 creator=self.node.node_id)
        assert self.blobs.index is not None
        await self.blobs.index.put_everywhere(S3KEYS.name, (key,), record)
        return key, secret

    async def _ensure_bucket(self, name: str) -> None:
        from blobstore.s3.errors import S3Error

        assert self.blobs.objects is not None
        try:
            await self.blobs.objects.ensure_service_bucket(name)
        except S3Error:
            pass  # a bad name: the caller's next step says so

    def specs(self, plan: ClusterPlan, rows: dict[bytes, SparkNode],
              recovery: core.Recovery | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The two workloads; every per-machine path comes from the nodes' own rows (the
        shell picks its node's by ``$MESHCLOUD_NODE``)."""
        me = self.node.node_id
        mine = rows.get(me)
        capable = {n: r for n, r in rows.items() if r.capable}
        assert self.dist_dir is not None or mine is None or not mine.capable
        dist_dir = str(self.dist_dir or "")
        hosts = {n.hex(): r.host for n, r in capable.items()}
        s3 = {n.hex(): r.s3_url for n, r in capable.items() if r.s3_url}
        default = self.bind_host()
        master = core.master_spec(plan, java=self.tools.java,
                                  spark_home=f"{dist_dir}/pyspark", hosts=hosts,
                                  default_host=default, recovery=recovery,
                                  python=self.tools.python, pythonpath=dist_dir, s3_urls=s3)
        worker = core.worker_spec(plan, java=self.tools.java,
                                  spark_home=f"{dist_dir}/pyspark", python=self.tools.python,
                                  pythonpath=dist_dir, hosts=hosts, default_host=default,
                                  s3_urls=s3)
        return master, worker

    async def down(self) -> dict[str, Any]:
        from apps.ingress.tables import EXPOSURES
        from blobstore.records import S3KEYS

        current = cluster(self.state)
        if current is None:
            raise NotFoundError("no Spark cluster (`meshcloud spark up` makes one)",
                                code="no_cluster")
        for name in (WORKERS, MASTER):
            try:
                self.workloads.remove(name)
            except MeshError:
                pass
        self.state.delete(EXPOSURES.name, (current.ui_port,))
        self.state.delete(SPARK_CLUSTER.name, (CLUSTER_KEY,))
        for scope in self.running.values():
            scope.cancel()
        if self.blobs.index is not None:  # the jobs' S3 keys go with the cluster
            for key in (current.access_key, current.recovery_key):
                if key:
                    await self.blobs.index.put_everywhere(S3KEYS.name, (key,), None)
        await self._forget_recovery(current.recovery_prefix)
        self.node.events.emit("spark.down")
        return {"removed": True}

    async def _forget_recovery(self, prefix: str) -> None:
        """The master's state goes with the cluster (a later cluster starts clean)."""
        from blobstore.bucketlist import list_bucket

        objects = self.blobs.objects
        if not prefix or objects is None or self.blobs.index is None:
            return
        try:
            bucket_id = objects.bucket(core.RECOVERY_BUCKET).bucket_id
            page = await list_bucket(self.blobs.index, bucket_id, prefix=prefix,
                                     max_keys=1000)
            keys = [k for k, _ in page.contents]
            if keys:
                await objects.delete_many(core.RECOVERY_BUCKET, keys)
        except (MeshError, OSError) as exc:
            log.warning("spark: the master's recovery state was not removed: %s", exc)

    def overview(self) -> dict[str, Any]:
        current = cluster(self.state)
        nodes = spark_nodes(self.state)
        alive = self.alive()
        out: dict[str, Any] = {
            "cluster": None,
            "nodes": [{"node": n.hex(), "capable": r.capable, "reason": r.reason,
                       "host": r.host, "ram_mb": r.ram_mb, "alive": n in alive}
                      for n, r in sorted(nodes.items())],
        }
        if current is None:
            return out
        where = self.master_location()
        replicas = self.workloads.replica_rows(WORKERS) if self._has(WORKERS) else []
        masters = self.workloads.replica_rows(MASTER) if self._has(MASTER) else []
        host = self.bind_host()
        out["cluster"] = {
            "workers": current.workers, "worker_memory_mb": core.mib(current.worker_memory),
            "worker_cores": current.worker_cores, "rpc_port": current.rpc_port,
            "ui_port": current.ui_port, "master_url": f"spark://{host}:{current.rpc_port}",
            "ui_url": core.ui_base(host, current.ui_port),
            "master_node": where[0].hex() if where else None,
            "master": masters, "worker_replicas": replicas,
            "log_bucket": current.log_bucket,
            "recovery": (f"{core.RECOVERY_BUCKET}/{current.recovery_prefix}"
                         if current.recovery_prefix else ""),
        }
        return out

    def _has(self, name: str) -> bool:
        return name in self.workloads.specs()

    def ui_base(self) -> str:
        """The master's web UI through this node's ingress ("" without a cluster)."""
        current = cluster(self.state)
        return core.ui_base(self.bind_host(), current.ui_port) if current else ""

    async def master_json(self) -> dict[str, Any] | None:
        """The master's own view (its web UI's ``/json``): workers, applications, each
        running one and each worker with its ``ui_url`` through this node's ingress."""
        current = cluster(self.state)
        if current is None:
            return None
        host = self.bind_host()

        def fetch() -> dict[str, Any] | None:
            import urllib.request

            try:
                with urllib.request.urlopen(f"http://{host}:{current.ui_port}/json/",
                                            timeout=UI_TIMEOUT) as resp:
                    data = json.loads(resp.read())
                    return data if isinstance(data, dict) else None
            except (OSError, ValueError):
                return None

        view = await trio.to_thread.run_sync(fetch)
        return core.view_links(view, self.ui_base()) if view is not None else None

    # --- the master's address on every node ----------------------------------------------------

    async def _listen_loop(self, nursery: trio.Nursery) -> None:
        watch = self.state.watch(SPARK_CLUSTER.name)
        while True:
            watch.clear()
            current = cluster(self.state)
            want = current.rpc_port if current is not None else None
            if self.listener is not None and self.listener[0] != want:
                self.listener[1].cancel()
                self.listener = None
            if want is not None and self.listener is None:
                scope = trio.CancelScope()
                self.listener = (want, scope)
                nursery.start_soon(self._listen, want, scope)
            if want is not None:  # a listener that failed to bind is retried on this tick
                await trio.sleep(TICK / 2)
            else:  # no cluster: nothing to listen for until its row changes
                await watch.wait(trio.current_time() + IDLE_RECHECK)

    async def _listen(self, port: int, scope: trio.CancelScope) -> None:
        with scope:
            try:
                listeners = await trio.open_tcp_listeners(port, host=self.bind_host())
            except OSError as exc:
                self.errors[f"port {port}"] = str(exc)
                await trio.sleep(5)
                if self.listener is not None and self.listener[1] is scope:
                    self.listener = None
                return
            self.errors.pop(f"port {port}", None)

            async def handle(client: trio.SocketStream) -> None:
                try:
                    await self.forward(client)
                except Exception:  # one connection's bug must not stop the node
                    log.exception("spark: forwarding a connection to the master failed")
                    await client.aclose()

            await trio.serve_listeners(handle, listeners)

    async def forward(self, client: trio.SocketStream) -> bool:
        where = self.master_location()
        upstream: Any = None
        if where is not None:
            node, port = where
            upstream = await connect_upstream(
                node == self.node.node_id,
                lambda: trio.open_tcp_stream(self.bind_host(), port),
                lambda: self._open_forward(node), "spark: no way to the master")
        if upstream is None:
            self.refused += 1
            await client.aclose()
            return False
        self.forwarded += 1
        await splice_upstream(client, upstream)
        return True

    async def _open_forward(self, node: bytes) -> Any:
        return await open_forward(self.node.transport, node, MASTER, "rpc", 0,
                                  protocol=SPARK_FORWARD_PROTOCOL)

    def _resolve(self, request: ForwardOpen) -> int | None:
        """Only the master this node runs itself (a peer cannot make us connect elsewhere)."""
        if request.workload != MASTER or request.endpoint != "rpc":
            return None
        where = self.master_location()
        if where is None or where[0] != self.node.node_id:
            return None
        return where[1]

    async def _serve_forward(self, stream: Any) -> None:
        await serve_forward(stream, self._resolve, host=self.bind_host())

    # --- jobs --------------------------------------------------------------------------------

    async def submit(self, *, file: str, source: bytes, args: list[str],
                     conf: dict[str, str], input: str = "", output: str = ""
                     ) -> tuple[str, SparkJob]:
        current = cluster(self.state)
        if current is None:
            raise SparkError("no Spark cluster: `meshcloud spark up` first", code="no_cluster")
        core.check_job(file, len(source), args)
        settings = core.parse_conf(list(f"{k}={v}" for k, v in conf.items()))
        if not self.tools.capable or self.dist_dir is None:
            raise SparkError(f"this node cannot run a Spark driver: {self.tools.reason}",
                             code="no_java")
        assert self.blobs.objects is not None
        job_args = list(args)
        for flag, text in (("input", input), ("output", output)):
            if not text:
                continue
            bucket, _ = core.parse_s3_arg(text, flag)
            try:
                self.blobs.objects.bucket(bucket)
            except MeshError:
                raise SparkError(f"--{flag} {text}: no bucket {bucket!r} (make it with "
                                 f"`meshcloud bucket create {bucket}`)",
                                 code="no_bucket") from None
            job_args += [f"--{flag}", text]
        job_id = secrets.token_hex(6)
        job = SparkJob(node=self.node.node_id, file=file, state=core.RUNNING,
                       args=tuple(job_args), submitted_ms=self.node.clock.wall_ms())
        self.state.put(SPARK_JOBS.name, (job_id,), job)
        workdir = self.jobs_dir / job_id
        if self.switch_users:
            from apps.runtimes.homes import ensure_root_dir

            ensure_root_dir(self.jobs_dir)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / file).write_bytes(source)
        assert self.nursery is not None
        scope = trio.CancelScope()
        self.running[job_id] = scope
        self.nursery.start_soon(self._run_job, job_id, job, workdir, current, settings, scope)
        self.node.events.emit("spark.job", job=job_id, state=core.RUNNING)
        return job_id, job

    def _driver_ui_port(self, settings: dict[str, str]) -> int:
        """The port of the driver's UI: the user's ``spark.ui.port``, else a free one of
        this host (0: unknown, the application id then comes from the log at the end)."""
        from apps.ingress.ports import ephemeral_port

        given = settings.get("spark.ui.port")
        if given is not None:
            return int(given) if given.isdigit() and 0 < int(given) < 65536 else 0
        try:
            return ephemeral_port(self.bind_host())
        except OSError:
            return 0

    def _driver_env(self, current: SparkCluster, settings: dict[str, str],
                    workdir: Path, ui_port: int = 0) -> dict[str, str]:
        assert self.dist_dir is not None
        host = self.bind_host()
        java_home = str(Path(self.tools.java).resolve().parent.parent)
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(workdir), "LANG": "C.UTF-8", "JAVA_HOME": java_home,
            "SPARK_LOCAL_IP": host, "SPARK_SCALA_VERSION": "2.13",
            "PYTHONPATH": str(self.dist_dir), "PYSPARK_PYTHON": self.tools.python,
            "PYSPARK_DRIVER_PYTHON": self.tools.python,
            "SPARK_HOME": str(self.dist_dir / "pyspark"),
            "MESHCLOUD_SPARK_MASTER": f"spark://{host}:{current.rpc_port}",
            "MESHCLOUD_S3_URL": self.s3_url(),
            "MESHCLOUD_S3_ACCESS_KEY": current.access_key,
            "MESHCLOUD_S3_SECRET": current.secret,
            "PYSPARK_SUBMIT_ARGS": core.submit_args(
                f"spark://{host}:{current.rpc_port}", settings, workers=current.workers,
                executor_memory=core.executor_memory(current.worker_memory),
                driver_host=host, ui_port=ui_port),
        }

    async def _run_job(self, job_id: str, job: SparkJob, workdir: Path,
                       current: SparkCluster, settings: dict[str, str],
                       scope: trio.CancelScope) -> None:
        logfile = workdir / "driver.log"
        ui_port = self._driver_ui_port(settings)
        env = self._driver_env(current, settings, workdir, ui_port)
        ident: dict[str, Any] = {}
        if self.switch_users:
            from apps.runtimes.users import UidAllocator

            uid = UidAllocator(self.data_dir).base_for("spark-driver")
            for path in (workdir, *workdir.iterdir()):
                os.chown(path, uid, uid)
            ident = {"user": uid, "group": uid, "extra_groups": []}
            env |= passwd_env(workdir, uid)
        code: int | None = None
        error = ""
        with open(logfile, "ab") as out:
            try:
                proc = await trio.lowlevel.open_process(
                    [self.tools.python, "-u", job.file, *job.args], cwd=str(workdir), env=env,
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, **ident)
            except OSError as exc:
                proc = None
                error = f"cannot start the driver: {exc}"
            if proc is not None:
                with scope:
                    try:
                        async with trio.open_nursery() as watch:
                            watch.start_soon(self._watch_app_id, job_id, ui_port)
                            code = await proc.wait()
                            watch.cancel_scope.cancel()
                    finally:
                        _kill_group(proc.pid)
                        if code is None:
                            error = "stopped (the cluster went down)"
                with trio.CancelScope(shield=True):
                    await proc.wait()
                    if code is None:
                        code = proc.returncode
        self.running.pop(job_id, None)
        text = logfile.read_bytes() if logfile.exists() else b""
        app_id = self.app_ids.pop(job_id, "") or _app_id(text)
        log_key = f"{job_id}.log"
        with trio.CancelScope(shield=True):
            try:
                await self._store_log(current.log_bucket, log_key, text)
            except (MeshError, OSError) as exc:
                log.warning("spark job %s: log not stored: %s", job_id, exc)
                log_key = ""
            state = core.SUCCEEDED if code == 0 and not error else core.FAILED
            if state == core.FAILED and not error:
                error = _last_error(text) or f"the driver exited with {code}"
            done = _replace(job, state=state, exit_code=code, error=error[:1000],
                            finished_ms=self.node.clock.wall_ms(), app_id=app_id,
                            log_key=log_key)
            self.state.put(SPARK_JOBS.name, (job_id,), done)
            self.node.events.emit("spark.job", job=job_id, state=state)

    async def _watch_app_id(self, job_id: str, ui_port: int) -> None:
        """Ask the driver's UI for its application id until it has one, then put it in
        the job's row (its UI is reachable through the master from then on)."""
        if not ui_port:
            return
        url = f"{core.ui_base(self.bind_host(), ui_port)}api/v1/applications"

        def ask() -> bytes:
            import urllib.request

            try:
                with urllib.request.urlopen(url, timeout=UI_TIMEOUT) as resp:
                    return bytes(resp.read(1 << 16))
            except (OSError, ValueError):
                return b""

        for tries in itertools.count():
            app_id = core.app_id_of(await trio.to_thread.run_sync(ask, abandon_on_cancel=True))
            if app_id:
                self.app_ids[job_id] = app_id
                row = self.state.get(SPARK_JOBS.name, (job_id,))
                if isinstance(row, SparkJob) and row.state not in core.FINAL:
                    self.state.put(SPARK_JOBS.name, (job_id,), _replace(row, app_id=app_id))
                    self.node.events.emit("spark.job", job=job_id, state=row.state)
                return
            await trio.sleep(APP_ID_POLL * (10 if tries >= APP_ID_PATIENCE else 1))

    async def _store_log(self, bucket: str, key: str, data: bytes) -> None:
        from blobstore.s3.errors import S3Error

        assert self.blobs.objects is not None
        objects = self.blobs.objects
        try:
            await objects.ensure_service_bucket(bucket)
        except S3Error:
            pass  # a bad name: the caller's next step says so

        async def body() -> Any:
            yield data

        await objects.put(bucket, key, body())

    def job(self, job_id: str) -> SparkJob:
        found = jobs(self.state).get(job_id)
        if found is None:
            raise NotFoundError(f"no Spark job {job_id!r}", code="not_found")
        return found

    async def job_log(self, job_id: str, offset: int = 0) -> tuple[bytes, bool]:
        """(bytes of the log from ``offset``, whether the job ended)."""
        job = self.job(job_id)
        ended = job.state in core.FINAL
        local = self.jobs_dir / job_id / "driver.log"
        if job.node == self.node.node_id and local.exists():
            with open(local, "rb") as f:
                f.seek(max(0, offset))
                return f.read(MAX_LOG_READ), ended
        if not job.log_key:
            if ended:
                return b"", True
            raise SparkError(f"job {job_id} runs on node {job.node.hex()[:12]}: ask that "
                             "node for its live log", code="elsewhere")
        current = cluster(self.state)
        bucket = current.log_bucket if current else "spark-logs"
        assert self.blobs.objects is not None
        record = await self.blobs.objects.head(bucket, job.log_key)
        chunks = [c async for c in self.blobs.objects.read(record, max(0, offset))]
        return b"".join(chunks)[:MAX_LOG_READ], True

    def job_rows(self) -> list[dict[str, Any]]:
        base = self.ui_base()
        return [job_dict(i, j, base) for i, j in sorted(jobs(self.state).items(),
                                                        key=lambda t: -t[1].submitted_ms)]

    # --- node hooks ---------------------------------------------------------------------------

    def api_routes(self) -> list[Any]:
        from apps.spark.api import routes

        return routes(self)

    def ui_routes(self, ui: Any) -> list[Any]:
        from apps.spark.ui import routes

        return routes(self, ui)

    def nav(self) -> list[tuple[str, str, str, bool]]:
        return [("spark", "Spark", "/ui/spark", True)]

    def status(self) -> dict[str, Any]:
        return {"capable": self.tools.capable and self.dist_dir is not None,
                "reason": self.errors.get("dist", self.tools.reason),
                "dist": str(self.dist_dir or ""), "forwarded": self.forwarded,
                "refused": self.refused, "jobs_running": sorted(self.running),
                "errors": dict(self.errors)}


def passwd_env(home: Path, uid: int) -> dict[str, str]:
    """A passwd entry for the driver's uid (Java's login asks for one), via nss_wrapper."""
    import glob

    env = {"SPARK_USER": "spark", "HADOOP_USER_NAME": "spark"}
    libs = glob.glob("/usr/lib/*/libnss_wrapper.so") + glob.glob("/usr/lib/libnss_wrapper.so")
    if libs:
        (home / ".passwd").write_text(f"spark:x:{uid}:{uid}:spark:{home}:/bin/false\n")
        (home / ".group").write_text(f"spark:x:{uid}:\n")
        env |= {"LD_PRELOAD": libs[0], "NSS_WRAPPER_PASSWD": str(home / ".passwd"),
                "NSS_WRAPPER_GROUP": str(home / ".group")}
    return env


def job_dict(job_id: str, job: SparkJob, ui_base: str = "") -> dict[str, Any]:
    """A job for the API; ``ui_url``: its application's UI through the ingress whose base
    is ``ui_base`` while it runs ("" before the driver registered and once it ended)."""
    running = job.state == core.RUNNING and job.app_id
    return {"id": job_id, "node": job.node.hex(), "file": job.file, "state": job.state,
            "args": list(job.args), "submitted_ms": job.submitted_ms,
            "finished_ms": job.finished_ms, "exit_code": job.exit_code, "error": job.error,
            "app_id": job.app_id, "log_key": job.log_key,
            "ui_url": core.proxy_url(ui_base, job.app_id) if running else ""}


def _replace(job: SparkJob, **changes: Any) -> SparkJob:
    from dataclasses import replace

    return replace(job, **changes)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _app_id(text: bytes) -> str:
    import re

    match = re.search(rb"app-\d{14}-\d{4,}", text)
    return match.group(0).decode() if match else ""


def _last_error(text: bytes) -> str:
    lines = [ln.strip() for ln in text.decode(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines[-200:]):
        if "Error" in line or "Exception" in line:
            return line[:500]
    return ""


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
