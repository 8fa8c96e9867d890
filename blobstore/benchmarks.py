"""Benchmark functions for the blobstore's hot paths (``bench/blobstore.py`` calls these).

Each function runs one measurement and returns a dict of figures (MB/s are 10^6 bytes per
second of *object* bytes, so figures compare directly with disk and network speeds).
Nothing here asserts on time; tests never call these with real sizes.

* :func:`erasure_throughput`: zfec k+m on 4 MiB chunks: encode (parity from data),
  decode from data shards only (the common read), decode with m data shards missing
  (the worst read), raw zfec and through :class:`~blobstore.erasure.ZfecCode`;
* :func:`seal_throughput`: XChaCha20-Poly1305 seal and open of 4 MiB chunks;
* :func:`shardstore_throughput`: LMDB shard writes (1 MiB shards, real files in a temp
  dir), with and without fsync per commit, and reads;
* :func:`pipeline_throughput`: a whole put and get through the writer and reader over
  k+m real shard stores in one process (no network).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zfec

from blobstore.chunker import DEFAULT_CHUNK_SIZE
from blobstore.crypto import new_object_key, open_chunk, seal_chunk
from blobstore.erasure import Scheme, ZfecCode
from blobstore.shards import ShardHeader, pack_shard
from blobstore.shardstore import ShardStore

MB = 1_000_000


def _rate(nbytes: int, fn: Callable[[], object], *, min_time: float = 0.5,
          min_rounds: int = 3) -> float:
    """MB/s of ``fn`` processing ``nbytes`` per call, best of a few timed batches."""
    fn()  # warm up
    best = 0.0
    rounds, spent = 0, 0.0
    while rounds < min_rounds or spent < min_time:
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        spent += took
        rounds += 1
        best = max(best, nbytes / took / MB)
    return best


def erasure_throughput(k: int = 4, m: int = 2, chunk: int = DEFAULT_CHUNK_SIZE,
                       threads: int = 2, min_time: float = 0.5) -> dict[str, float]:
    data = os.urandom(chunk)
    code = ZfecCode(k, m)
    size = code.shard_size(chunk)
    blocks = tuple(data[i * size:(i + 1) * size] for i in range(k))
    encoder, decoder = zfec.Encoder(k, k + m), zfec.Decoder(k, k + m)
    parity_nums = tuple(range(k, k + m))
    shards = code.encode(data)
    worst = {i: shards[i] for i in range(m, k + m)}  # the first m data shards missing
    worst_nums = tuple(sorted(worst))
    worst_blocks = tuple(worst[i] for i in worst_nums)
    data_shards = {i: shards[i] for i in range(k)}

    def rate(nbytes: int, fn: Callable[[], object]) -> float:
        return _rate(nbytes, fn, min_time=min_time)

    figures = {
        "zfec_encode_MBps": rate(chunk, lambda: encoder.encode(blocks, parity_nums)),
        "zfec_decode_missing_m_MBps": rate(chunk,
                                           lambda: decoder.decode(worst_blocks, worst_nums)),
        "code_encode_MBps": rate(chunk, lambda: code.encode(data)),
        "code_decode_data_shards_MBps": rate(chunk, lambda: code.decode(data_shards, chunk)),
        "code_decode_missing_m_MBps": rate(chunk, lambda: code.decode(worst, chunk)),
    }
    if threads > 1:
        def parallel() -> None:
            workers = [threading.Thread(target=lambda: [encoder.encode(blocks, parity_nums)
                                                        for _ in range(4)])
                       for _ in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        figures[f"zfec_encode_{threads}_threads_MBps"] = rate(chunk * 4 * threads, parallel)
    return figures


def seal_throughput(chunk: int = DEFAULT_CHUNK_SIZE, min_time: float = 0.5
                    ) -> dict[str, float]:
    key, oid = new_object_key(), b"bench-object-id!"
    data = os.urandom(chunk)
    sealed = seal_chunk(key, oid, 0, data)
    return {
        "seal_MBps": _rate(chunk, lambda: seal_chunk(key, oid, 0, data), min_time=min_time),
        "open_MBps": _rate(chunk, lambda: open_chunk(key, oid, 0, sealed), min_time=min_time),
    }


def shardstore_throughput(total: int = 64 << 20, shard: int = 1 << 20,
                          directory: str | Path | None = None) -> dict[str, float]:
    payloads = [os.urandom(shard) for _ in range(4)]
    count = max(1, total // shard)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for sync in (False, True):
            label = "fsync" if sync else "nosync"
            blobs = [
                pack_shard(ShardHeader(b"bench-%d" % sync, i, 0, Scheme.REPLICATION, 1, 0,
                                       shard), payloads[i % 4])
                for i in range(count)
            ]
            with ShardStore(Path(tmp) / label, map_size=32 << 20, sync=sync,
                            min_free_bytes=0) as store:
                start = time.perf_counter()
                ids = [store.put(b)[0] for b in blobs]
                figures[f"lmdb_write_{label}_MBps"] = count * shard / (
                    time.perf_counter() - start) / MB
                if not sync:
                    start = time.perf_counter()
                    for sid in ids:
                        store.get(sid)
                    figures["lmdb_read_MBps"] = count * shard / (time.perf_counter() - start) / MB
                    figures["lmdb_map_grown_to_MiB"] = store.stats().map_size / (1 << 20)
    return figures


def pipeline_throughput(size: int = 32 << 20, directory: str | Path | None = None
                        ) -> dict[str, float]:
    """Put then get ``size`` bytes through 4+2 over six real stores in one process."""
    import trio

    from blobstore.client import LocalShardClient
    from blobstore.holders import RendezvousHolders
    from blobstore.reader import read_object
    from blobstore.writer import write_object

    data = os.urandom(1 << 20)
    figures: dict[str, float] = {}

    async def main(tmp: Path) -> None:
        stores = {bytes([i]) * 32: ShardStore(tmp / f"n{i}", sync=False, min_free_bytes=0)
                  for i in range(6)}
        try:
            client = LocalShardClient(stores)

            async def source():  # type: ignore[no-untyped-def]
                for _ in range(size // len(data)):
                    yield data

            start = time.perf_counter()
            manifest = await write_object(source(), client=client,
                                          picker=RendezvousHolders(stores), code=ZfecCode(4, 2))
            figures["put_MBps"] = size / (time.perf_counter() - start) / MB
            start = time.perf_counter()
            got = 0
            async for piece in read_object(manifest, client):
                got += len(piece)
            figures["get_MBps"] = got / (time.perf_counter() - start) / MB
        finally:
            for store in stores.values():
                store.close()

    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        trio.run(main, Path(tmp))
    return figures


def run_all() -> dict[str, float]:
    figures: dict[str, float] = {}
    for fn in (erasure_throughput, seal_throughput, shardstore_throughput,
               pipeline_throughput):
        figures.update(fn())  # type: ignore[operator]
    return figures


if __name__ == "__main__":
    for name, value in run_all().items():
        print(f"{name:36s} {value:10.1f}")
