"""Stored rows of the Spark service (tags ``APPS + 64`` … ``APPS + 69``)."""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

SPARK_FORWARD_PROTOCOL = "/meshcloud/spark-forward/1"
"""One stream = one connection to the Spark master's RPC port on the node running it
(``ForwardOpen(workload="spark-master", endpoint="rpc", index=0)``; the target checks that it
runs the master itself)."""


@message(TagBlock.APPS + 64)
@dataclass(frozen=True, slots=True, kw_only=True)
class SparkCluster:
    """The mesh's Spark cluster (one). Key in ``spark_cluster``: ``"default"``."""

    workers: int
    worker_memory: int
    worker_cores: int
    rpc_port: int
    """Every node listens on (its mesh host, this port) and forwards to the master."""
    ui_port: int
    """The ingress TCP port of the master's web UI."""
    access_key: str
    """The S3 key jobs read and write buckets with (its secret below; never listed)."""
    secret: str
    log_bucket: str = "spark-logs"
    created_ms: int = 0
    recovery_prefix: str = ""
    """Where in the recovery bucket this cluster's master keeps its state (empty: a
    cluster made before recovery existed; the next ``up`` gives it one)."""
    recovery_key: str = ""
    """A key that may only read and write the recovery bucket (its secret below)."""
    recovery_secret: str = ""


@message(TagBlock.APPS + 65)
@dataclass(frozen=True, slots=True, kw_only=True)
class SparkNode:
    """What one node offers Spark, written by that node. Key in ``spark_nodes``: node id."""

    capable: bool
    reason: str = ""
    """Why not (no Java, no pyspark), or the versions found."""
    host: str = ""
    """The host its mesh transport listens on (workers bind and reach the master there)."""
    s3_url: str = ""
    ram_mb: int = 0
    updated_ms: int = 0


@message(TagBlock.APPS + 66)
@dataclass(frozen=True, slots=True, kw_only=True)
class SparkJob:
    """One submitted job, written only by the node running its driver.

    Key in ``spark_jobs``: the job id."""

    node: bytes
    file: str
    state: str
    args: tuple[str, ...] = ()
    submitted_ms: int = 0
    finished_ms: int = 0
    exit_code: int | None = None
    error: str = ""
    app_id: str = ""
    log_key: str = ""
    """The job's log in the cluster's log bucket, once it ended."""
