"""Pure decisions of the Spark service: the cluster's two workloads (a leased singleton
master, replicated workers), the master's address on every node, job ids, submit
arguments and their checks (no I/O)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshcloud.errors import MeshError

MASTER = "spark-master"
WORKERS = "spark-workers"
RPC_LABEL = 7077
"""The master's endpoint ``rpc=7077``: a label only (a process listens on the host port the
node picked, given to it as ``$PORT_7077``)."""
UI_LABEL = 8080
WORKER_UI_LABEL = 8081
CAPABILITY = ("spark", "yes")
"""The capacity label of a node that has Java 17 and pyspark (placement constraint)."""
PORT_RANGE = (17077, 17199)
"""The TCP ports every node listens on for the master (RPC) and its web UI."""
MAX_WORKERS = 64
MIN_WORKER_MEMORY = 512 << 20
"""Spark refuses executors under 450 MiB."""
DAEMON_MEMORY = 256 << 20
"""Heap of the master and worker daemons themselves (executors get the worker memory)."""
JOB_ID_RE = re.compile(r"^[a-z0-9]{6,32}$")
CONF_KEY_RE = re.compile(r"^spark\.[A-Za-z0-9_.\-]{1,120}$")
REVERSE_PROXY_URL = "/"
"""Where the ingress serves the master's web UI: the root of its exposure port, on every
node. The master proxies the workers' and the running applications' UIs under
``/proxy/ID/``; with this URL every link of the three UIs is server-relative, so a page
works through whichever node's ingress the browser used (Spark rewrites the ``Location``
of a proxied redirect with the request's ``Host``, which the TCP exposure passes on)."""
UI_CONF = {"spark.ui.reverseProxy": "true", "spark.ui.reverseProxyUrl": REVERSE_PROXY_URL}
"""Set alike on the master, the workers and every driver (Spark requires it)."""
RESERVED_CONF = frozenset({"spark.master", "spark.submit.deployMode", *UI_CONF})
APP_ID_RE = re.compile(r"^app-[0-9]{14}-[0-9]{4,9}\Z")
WORKER_ID_RE = re.compile(r"^worker-[0-9]{14}-[A-Za-z0-9_.:\[\]-]{1,200}-[0-9]{1,5}\Z")
"""Spark's ``worker-DATE-HOST-PORT``; both id patterns admit no character that a URL path
would need escaped, nor ``/``, ``?`` or ``#``."""
MAX_JOB_BYTES = 512 << 10
MAX_ARGS = 64


class SparkError(MeshError):
    """A Spark request that cannot be done (bad input, no capable node, no cluster)."""

    code = "spark_error"


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    workers: int
    worker_memory: int
    worker_cores: int
    rpc_port: int
    ui_port: int


def check_up(workers: int, worker_memory: int, cores: int, capable: int) -> None:
    """Refuse a cluster the mesh cannot hold, before anything is written."""
    if isinstance(workers, bool) or not isinstance(workers, int) \
            or not 1 <= workers <= MAX_WORKERS:
        raise SparkError(f"workers must be 1..{MAX_WORKERS}", code="bad_workers")
    if isinstance(worker_memory, bool) or not isinstance(worker_memory, int) \
            or worker_memory < MIN_WORKER_MEMORY:
        raise SparkError("worker memory must be at least 512m", code="bad_memory")
    if isinstance(cores, bool) or not isinstance(cores, int) or not 1 <= cores <= 256:
        raise SparkError("worker cores must be 1..256", code="bad_cores")
    if capable < workers:
        raise SparkError(f"{workers} worker(s) need as many nodes with Java 17 and pyspark "
                         f"and {mib(worker_memory + DAEMON_MEMORY)} MiB of RAM; "
                         f"{capable} have them", code="no_capable_node")


def free_ports(taken: Iterable[int], count: int = 2) -> list[int]:
    used = set(taken)
    found = [p for p in range(PORT_RANGE[0], PORT_RANGE[1] + 1) if p not in used][:count]
    if len(found) < count:
        raise SparkError("every Spark port is taken", code="no_port")
    return found


def mib(size: int) -> int:
    return -(-size // (1 << 20))


def host_case(hosts: Mapping[str, str], default: str) -> str:
    """Shell that sets ``H`` to this node's mesh host from ``$MESHCLOUD_NODE``."""
    arms = "".join(f"  {node}) H={shlex.quote(host)} ;;\n" for node, host in sorted(hosts.items())
                   if re.fullmatch(r"[0-9a-f]{8,128}", node))
    # (not SPARK_LOCAL_IP: the web UIs would bind to it, and the ingress reaches them on
    # 127.0.0.1)
    return f'case "$MESHCLOUD_NODE" in\n{arms}  *) H={shlex.quote(default)} ;;\nesac\n'


def s3_case(urls: Mapping[str, str]) -> str:
    """Shell that exports ``MESHCLOUD_S3_URL``: this node's S3 API."""
    arms = "".join(f"  {node}) export MESHCLOUD_S3_URL={shlex.quote(url)} ;;\n"
                   for node, url in sorted(urls.items())
                   if re.fullmatch(r"[0-9a-f]{8,128}", node))
    return f'case "$MESHCLOUD_NODE" in\n{arms}  *) ;;\nesac\n' if arms else ""


IDENTITY = """\
U=$(id -u); G=$(id -g)
if ! getent passwd "$U" >/dev/null 2>&1; then
  for lib in /usr/lib/*/libnss_wrapper.so /usr/lib/libnss_wrapper.so; do
    [ -e "$lib" ] || continue
    printf 'spark:x:%s:%s:spark:%s:/bin/false\\n' "$U" "$G" "$HOME" > "$HOME/.passwd"
    printf 'spark:x:%s:\\n' "$G" > "$HOME/.group"
    export LD_PRELOAD="$lib" NSS_WRAPPER_PASSWD="$HOME/.passwd" NSS_WRAPPER_GROUP="$HOME/.group"
    break
  done
fi
export SPARK_USER=spark HADOOP_USER_NAME=spark
"""
"""Java (Hadoop's login) needs a passwd entry for its uid: a replica's uid has none, so it
gets one of its own through nss_wrapper (apt libnss-wrapper)."""


def _java(memory: int, main: str, props: str = "") -> str:
    ui = "".join(f" -D{k}={shlex.quote(v)}" for k, v in sorted(UI_CONF.items()))
    return (f'exec "$JAVA" -Xmx{mib(memory)}m -cp "$SPARK_HOME/jars/*" '
            f'-Dspark.worker.preferConfiguredMasterAddress=true{ui}{props} {main}')


@dataclass(frozen=True, slots=True)
class Recovery:
    """Where the master keeps its recovery state (:mod:`apps.spark.recovery`): a bucket
    prefix of its own, and a key that may only read and write that bucket."""

    bucket: str
    prefix: str
    access_key: str
    secret: str


RECOVERY_BUCKET = "spark-recovery"
RECOVERY_TIMEOUT = "20s"
"""How long a new master waits for the applications and workers of the state it read to
answer before it drops those that did not and schedules again."""


def master_spec(plan: ClusterPlan, *, java: str, spark_home: str, hosts: Mapping[str, str],
                default_host: str, recovery: Recovery | None = None, python: str = "",
                pythonpath: str = "", s3_urls: Mapping[str, str] | None = None
                ) -> dict[str, Any]:
    """The master; with ``recovery`` (and ``python``/``pythonpath`` of the dist), its state
    is read from the bucket before it starts and pushed there while it runs."""
    env = _env(java, spark_home)
    keep = ""
    props = ""
    if recovery is not None:
        keep = ('R="$HOME/recovery"\n'
                '"$PYTHON" -m meshcloud_spark_recovery pull "$R" || exit 1\n'
                '"$PYTHON" -m meshcloud_spark_recovery push "$R" --watch $$ &\n')
        props = (' -Dspark.deploy.recoveryMode=FILESYSTEM'
                 ' -Dspark.deploy.recoveryDirectory="$R"'
                 f' -Dspark.deploy.recoveryTimeout={RECOVERY_TIMEOUT}')
        env |= {"PYTHON": python, "PYTHONPATH": pythonpath,
                "MESHCLOUD_RECOVERY_BUCKET": recovery.bucket,
                "MESHCLOUD_RECOVERY_PREFIX": recovery.prefix,
                "MESHCLOUD_RECOVERY_KEY": recovery.access_key,
                "MESHCLOUD_RECOVERY_SECRET": recovery.secret}
    script = (host_case(hosts, default_host) + s3_case(s3_urls or {}) + IDENTITY + keep
              + _java(DAEMON_MEMORY, "org.apache.spark.deploy.master.Master", props)
              + f' --host "$H" --port "$PORT_{RPC_LABEL}" --webui-port "$PORT_{UI_LABEL}"\n')
    return {
        "name": MASTER, "command": ["/bin/sh", "-c", script], "singleton": True,
        "replicas": 1, "publish": [f"rpc={RPC_LABEL}", f"ui={UI_LABEL}"],
        "env": env, "stop_timeout": 5.0,
        "constraints": {"runtime": "process", "labels": dict([CAPABILITY]),
                        "min_ram": DAEMON_MEMORY * 2, "avoid_battery": True},
    }


def worker_spec(plan: ClusterPlan, *, java: str, spark_home: str, python: str,
                pythonpath: str, hosts: Mapping[str, str], default_host: str,
                s3_urls: Mapping[str, str]) -> dict[str, Any]:
    script = (host_case(hosts, default_host) + s3_case(s3_urls) + IDENTITY
              + 'mkdir -p "$HOME/work" "$HOME/tmp"\n'
              + _java(DAEMON_MEMORY, "org.apache.spark.deploy.worker.Worker")
              + f' --host "$H" --cores {plan.worker_cores} --memory {mib(plan.worker_memory)}m'
              + f' --work-dir "$HOME/work" --webui-port "$PORT_{WORKER_UI_LABEL}"'
              + f' "spark://$H:{plan.rpc_port}"\n')
    env = _env(java, spark_home) | {"PYSPARK_PYTHON": python, "PYTHONPATH": pythonpath}
    return {
        "name": WORKERS, "command": ["/bin/sh", "-c", script], "replicas": plan.workers,
        "publish": [f"ui={WORKER_UI_LABEL}"], "env": env, "stop_timeout": 5.0,
        "constraints": {"runtime": "process", "labels": dict([CAPABILITY]),
                        "min_ram": plan.worker_memory + DAEMON_MEMORY,
                        "avoid_battery": True},
    }


def _env(java: str, spark_home: str) -> dict[str, str]:
    # the launcher of executors asks for the Scala version (Spark 4 is built for 2.13 only)
    return {"JAVA": java, "SPARK_HOME": spark_home, "SPARK_NO_DAEMONIZE": "1",
            "SPARK_SCALA_VERSION": "2.13"}


# --- jobs ----------------------------------------------------------------------------------


def parse_conf(items: Sequence[str]) -> dict[str, str]:
    """``k=v`` pairs of ``--conf`` (Spark keys only; the master is the cluster's)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not CONF_KEY_RE.match(key):
            raise SparkError(f"--conf {item!r} is not spark.KEY=VALUE", code="bad_conf")
        if key in RESERVED_CONF:
            raise SparkError(f"--conf {key} is set by the mesh", code="bad_conf")
        if len(value) > 1000 or "\n" in value:
            raise SparkError(f"--conf {key}: value too long or multi-line", code="bad_conf")
        out[key] = value
    return out


def parse_s3_arg(text: str, what: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` or ``bucket/prefix`` → (bucket, prefix)."""
    from apps.spark.source import SourceError, parse_location

    try:
        return parse_location(text)
    except SourceError as exc:
        raise SparkError(f"--{what}: {exc}", code="bad_location") from None


def check_job(name: str, size: int, args: Sequence[str]) -> None:
    if not name.endswith(".py") or "/" in name or name.startswith(".") or len(name) > 100:
        raise SparkError(f"job file {name!r}: a .py file name", code="bad_job")
    if size <= 0 or size > MAX_JOB_BYTES:
        raise SparkError(f"job file {name!r} must be 1 byte to 512 KiB", code="bad_job")
    if len(args) > MAX_ARGS or any(not isinstance(a, str) or len(a) > 4096 for a in args):
        raise SparkError("job arguments: at most 64 strings", code="bad_job")


def submit_args(master_url: str, conf: Mapping[str, str], *, workers: int,
                executor_memory: int, driver_host: str, ui_port: int = 0) -> str:
    """``PYSPARK_SUBMIT_ARGS`` of a driver: the master, small executors, its UI's port
    (``ui_port``, unless the user's conf names one) behind the master's reverse proxy,
    the user's conf."""
    base = {"spark.executor.memory": f"{mib(executor_memory)}m",
            "spark.executor.cores": "1", "spark.cores.max": str(workers),
            "spark.driver.memory": "512m", "spark.driver.host": driver_host,
            "spark.ui.showConsoleProgress": "true",
            "spark.sql.execution.pythonUDF.arrow.enabled": "false"}
    if ui_port:
        base["spark.ui.port"] = str(ui_port)
    merged = base | dict(conf) | UI_CONF
    words = ["--master", master_url]
    for key, value in sorted(merged.items()):
        words += ["--conf", f"{key}={value}"]
    return " ".join(shlex.quote(w) for w in [*words, "pyspark-shell"])


def ui_base(host: str, port: int) -> str:
    """The master's web UI through the ingress of the node whose mesh host is ``host``."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def proxy_url(base: str, ident: object) -> str:
    """The UI of a running application or a worker, proxied by the master: ``base``
    (:func:`ui_base`) + ``proxy/ID/``; "" for anything that is not such an id."""
    if not base or not isinstance(ident, str) or not (
            APP_ID_RE.match(ident) or WORKER_ID_RE.match(ident)):
        return ""
    return f"{base}proxy/{ident}/"


def view_links(view: Mapping[str, Any], base: str) -> dict[str, Any]:
    """The master's ``/json`` view with ``ui_url`` (through the ingress) on each live
    worker and each running application; dead workers and finished applications get
    "" or nothing (the master proxies only what it has now)."""
    out = dict(view)
    for key in ("workers", "activeapps"):
        items = view.get(key)
        if isinstance(items, list):
            out[key] = [dict(item, ui_url=proxy_url(base, item.get("id")) if (
                key == "activeapps" or item.get("state") == "ALIVE") else "")
                if isinstance(item, dict) else item for item in items]
    return out


def app_id_of(payload: bytes) -> str:
    """The application id in a driver UI's ``/api/v1/applications`` answer ("" if none)."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return ""
    if isinstance(data, list) and data and isinstance(data[0], dict):
        ident = data[0].get("id")
        if isinstance(ident, str) and APP_ID_RE.match(ident):
            return ident
    return ""


def executor_memory(worker_memory: int) -> int:
    """An executor takes its worker's whole memory (one executor a worker)."""
    return max(MIN_WORKER_MEMORY, worker_memory)


QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
FINAL = (SUCCEEDED, FAILED)
