"""The benchmark functions run and report every figure (tiny sizes; no timing asserted)."""

from __future__ import annotations

from blobstore import benchmarks


def test_benchmark_functions_report_positive_figures(tmp_path):
    figures = {}
    figures.update(benchmarks.erasure_throughput(chunk=64 * 1024, min_time=0.0, threads=2))
    figures.update(benchmarks.seal_throughput(chunk=64 * 1024, min_time=0.0))
    figures.update(benchmarks.shardstore_throughput(total=2 << 20, shard=256 << 10,
                                                    directory=tmp_path))
    figures.update(benchmarks.pipeline_throughput(size=2 << 20, directory=tmp_path))
    expected = {"zfec_encode_MBps", "zfec_decode_missing_m_MBps", "code_encode_MBps",
                "zfec_encode_2_threads_MBps", "seal_MBps", "open_MBps",
                "lmdb_write_nosync_MBps", "lmdb_write_fsync_MBps", "lmdb_read_MBps",
                "put_MBps", "get_MBps"}
    assert expected <= set(figures)
    assert all(value > 0 for value in figures.values())
