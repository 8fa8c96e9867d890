"""The Spark service's replicated tables (full copy on every node)."""

from __future__ import annotations

from typing import Any

from apps.spark.messages import SparkCluster, SparkJob, SparkNode
from meshcloud.state.schema import TableSchema, record_codec

CLUSTER_KEY = "default"

_c_enc, _c_dec = record_codec(SparkCluster)
SPARK_CLUSTER: TableSchema[SparkCluster] = TableSchema(
    "spark_cluster", partition=(str,), encode=_c_enc, decode=_c_dec, max_value_bytes=4096)

_n_enc, _n_dec = record_codec(SparkNode)
SPARK_NODES: TableSchema[SparkNode] = TableSchema(
    "spark_nodes", partition=(bytes,), encode=_n_enc, decode=_n_dec, max_value_bytes=2048)
"""Key: node id; each node writes only its own row."""

_j_enc, _j_dec = record_codec(SparkJob)
SPARK_JOBS: TableSchema[SparkJob] = TableSchema(
    "spark_jobs", partition=(str,), encode=_j_enc, decode=_j_dec, max_value_bytes=16384)


def cluster(state: Any) -> SparkCluster | None:
    value = state.get(SPARK_CLUSTER.name, (CLUSTER_KEY,))
    return value if isinstance(value, SparkCluster) else None


def spark_nodes(state: Any) -> dict[bytes, SparkNode]:
    return {k[0]: v for k, v in state.scan(SPARK_NODES.name)
            if v is not None and k and isinstance(k[0], bytes)}


def jobs(state: Any) -> dict[str, SparkJob]:
    return {k[0]: v for k, v in state.scan(SPARK_JOBS.name)
            if v is not None and k and isinstance(k[0], str)}
