"""The `cluster` stage: faiss k-means over the query embeddings, and each sample's clusters (paper §II-B).

The inter-sample contrasts (Eq. 6–7) treat samples of the same query cluster as positives. Built to hold
at web scale:
- k-means trains on a uniform sample of at most K × `max_points_per_centroid` embeddings (faiss's own
  default bound), drawn shard by shard, never the whole corpus at once;
- every embedding is then assigned in streaming batches, one store shard at a time;
- faiss runs on a GPU when faiss sees one (``faiss.get_num_gpus() > 0``), else on the CPU.

Multiple membership (*choice*, the `memberships` setting m): a sample belongs to its m nearest centroids;
its first cluster is the nearest. The paper says a sample "could appear in different clusters" without
saying how; nearest-m is simple, gives every sample the same number of memberships, and m = 1 recovers
hard clustering.

Only the samples of one split are clustered (the training set: the contrasts are training losses).
Output: ``STORE/clusters/{split}-K{K}-m{m}/part-NNNNN.parquet`` (sample_id, clusters: list of m ids, nearest
first), co-partitioned with the store, ``summary.json`` with the cluster sizes, and ``counts.npy``: per store
shard, how many of its samples with a partial label (the ones the implicit stage trains on) have each
nearest cluster, a (shards × K) table from which the training streams plan every epoch's batches before
reading a sample (`cu_scale.stages.streams.implicit_plan`). A directory per (split, K, m) caches the result, so a
search over K clusters each K once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import numpy as np
import pyarrow as pa

from cu_scale.config import ClusterConfig
from cu_scale.stages.encode import read_embeddings
from cu_scale.stages.monitoring import CLUSTERED_QUERIES, Progress
from cu_scale.data.store import FeatureStore
from cu_scale.storage import Location, publish, read_array, read_table, staging_for, write_array, write_table

CLUSTERS_DIR = "clusters"
COUNTS_FILE = "counts.npy"


class ClusteringError(ValueError):
    """Clustering cannot give what was asked (K larger than the distinct queries, say)."""


FAISS_HELP = (
    "clustering needs faiss, which is not installed: install exactly one build, `pip install 'cu-scale[cpu]'` "
    "(faiss-cpu) or, in a CUDA image, `pip install 'cu-scale[gpu]'` (faiss-gpu)"
)


def import_faiss():
    """The faiss module; a ClusteringError that says which extra to install when no faiss build is."""
    try:
        import faiss
    except ModuleNotFoundError as error:
        if error.name != "faiss":
            raise
        raise ClusteringError(FAISS_HELP) from None
    return faiss


@dataclasses.dataclass
class KMeansModel:
    centroids: np.ndarray  # (K, D) float32
    objective: float
    trained_on: int
    device: str

    def assign(self, embeddings: np.ndarray, memberships: int) -> tuple[np.ndarray, np.ndarray]:
        """The `memberships` nearest centroids of each row, nearest first: (ids (n, m) int64, squared L2 (n, m))."""
        faiss = import_faiss()
        index = faiss.IndexFlatL2(self.centroids.shape[1])
        index.add(self.centroids)
        distances, ids = index.search(np.ascontiguousarray(embeddings, dtype=np.float32), memberships)
        return ids, distances


def _count_distinct_rows(x: np.ndarray) -> int:
    """Distinct rows, counted on four random projections (n × 4 numbers, not a sorted copy of x).

    Identical rows always project alike; distinct rows collide on all four with probability ~0 for real data.
    """
    projections = x @ np.random.default_rng(0).standard_normal((x.shape[1], 4)).astype(x.dtype)
    return len(np.unique(projections, axis=0))


def train_kmeans(embeddings: np.ndarray, k: int, iterations: int = 20, seed: int = 0, max_points_per_centroid: int = 256) -> KMeansModel:
    """faiss k-means on `embeddings` (the training sample), GPU when faiss sees one.

    Refuses, with a message that says what to change, a K larger than the number of distinct non-zero rows.
    """
    faiss = import_faiss()
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    is_zero = ~embeddings.any(axis=1)
    nonzero = embeddings[~is_zero] if is_zero.any() else embeddings  # no copy in the common case
    if len(nonzero) < k:
        raise ClusteringError(f"K={k} clusters need at least K queries; there are {len(nonzero)} (with a non-zero embedding). Lower cluster.k.")
    distinct = _count_distinct_rows(nonzero)
    if distinct < k:
        raise ClusteringError(
            f"K={k} clusters need at least K distinct queries; the {len(nonzero):,} queries hold only {distinct:,} distinct ones"
            f" ({len(nonzero) - distinct:,} duplicates). Lower cluster.k to at most {distinct}."
        )
    gpu = faiss.get_num_gpus() > 0
    kmeans = faiss.Kmeans(
        nonzero.shape[1], k, niter=iterations, seed=seed, gpu=gpu, max_points_per_centroid=max_points_per_centroid, verbose=False
    )
    kmeans.train(nonzero)
    return KMeansModel(np.asarray(kmeans.centroids, np.float32), float(kmeans.obj[-1]), len(nonzero), "gpu" if gpu else "cpu")


def clusters_dir(store: FeatureStore, config: ClusterConfig) -> Location:
    return store.path / CLUSTERS_DIR / f"{config.split}-K{config.k}-m{config.memberships}"


def split_embeddings(store: FeatureStore, shard_index: int, split: str) -> tuple[list[str], np.ndarray]:
    """Sample ids and embeddings of one shard's samples of `split` (embeddings are stored in sample order)."""
    sample_ids, embeddings = read_embeddings(store, shard_index)
    keep = np.array(store.shard_samples(shard_index, ["split"]).column("split").to_pylist()) == split
    return [i for i, k in zip(sample_ids, keep) if k], embeddings[keep]


def labelled_rows(store: FeatureStore, shard_index: int, split: str) -> np.ndarray:
    """Which of one shard's samples of `split` (in store order) carry a partial label."""
    table = store.shard_samples(shard_index, ["split", "partial_start"])
    in_split = np.array(table.column("split").to_pylist()) == split
    return ~np.isnan(table.column("partial_start").to_numpy(zero_copy_only=False)[in_split])


def trainable_counts(store: FeatureStore, config: ClusterConfig) -> np.ndarray:
    """The (shards × K) nearest-cluster counts of the samples the implicit stage trains on (`COUNTS_FILE`;
    made from the assignments and kept there for a cluster directory written before that file existed)."""
    directory = clusters_dir(store, config)
    path = directory / COUNTS_FILE
    if not path.exists():
        counts = np.zeros((len(store.shards), config.k), np.int64)
        for index, shard in enumerate(store.shards):
            if shard["splits"].get(config.split):
                _, clusters = read_assignments(store, config, index)
                counts[index] = np.bincount(clusters[labelled_rows(store, index, config.split), 0], minlength=config.k)
        write_array(path, counts)
    return read_array(path)


def _training_sample(store: FeatureStore, split: str, limit: int, seed: int) -> np.ndarray:
    """A uniform sample of at most `limit` embeddings, drawn shard by shard (Bernoulli with p = limit / total)."""
    total = store.manifest["counts"]["splits"].get(split, {}).get("samples", 0)
    if total == 0:
        raise ClusteringError(f"{store.path} has no samples of split {split!r}; splits are {sorted(store.manifest['counts']['splits'])}")
    keep = min(1.0, limit / total)
    rng = np.random.default_rng(seed)
    parts = []
    for index, shard in enumerate(store.shards):
        if shard["splits"].get(split):
            _, embeddings = split_embeddings(store, index, split)
            parts.append(embeddings if keep >= 1 else embeddings[rng.random(len(embeddings)) < keep])
    return np.concatenate(parts)


def cluster_store(store_path: str | os.PathLike, config: ClusterConfig) -> dict:
    """Cluster every sample's embedding; writes assignments per shard and the summary; returns the summary."""
    store = FeatureStore(store_path)
    out = clusters_dir(store, config)
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    import_faiss()  # before the training sample is read
    started = time.perf_counter()
    model = train_kmeans(
        _training_sample(store, config.split, config.k * config.max_points_per_centroid, config.seed),
        config.k,
        config.iterations,
        config.seed,
        config.max_points_per_centroid,
    )
    progress = Progress(CLUSTERED_QUERIES, "queries assigned to clusters", store=store.path.name)
    staging = staging_for(out)  # summary.json, written last, is what makes it a result
    sizes = np.zeros(config.k, np.int64)
    primary_sizes = np.zeros(config.k, np.int64)
    zero_ids: list[str] = []
    counts = np.zeros((len(store.shards), config.k), np.int64)
    for index, shard in enumerate(store.shards):
        sample_ids, embeddings = split_embeddings(store, index, config.split)
        ids, _ = model.assign(embeddings, config.memberships)
        progress.add(len(ids))
        counts[index] = np.bincount(ids[labelled_rows(store, index, config.split), 0], minlength=config.k)
        zero_ids += [sample_ids[i] for i in np.flatnonzero(np.linalg.norm(embeddings, axis=1) == 0)]
        np.add.at(sizes, ids.reshape(-1), 1)
        np.add.at(primary_sizes, ids[:, 0], 1)
        table = pa.table(
            {
                "sample_id": pa.array(sample_ids, pa.string()),
                "clusters": pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1).astype(np.int32)), config.memberships),
            }
        )
        write_table(table, staging / pathlib.PurePosixPath(shard["samples_file"]).name)
    write_array(staging / "centroids.npy", model.centroids)
    write_array(staging / COUNTS_FILE, counts)
    summary = {
        "k": config.k,
        "memberships": config.memberships,
        "split": config.split,
        "device": model.device,
        "trained_on": model.trained_on,
        "objective": model.objective,
        "samples": int(primary_sizes.sum()),
        "seconds": round(time.perf_counter() - started, 2),
        "empty_clusters": int((primary_sizes == 0).sum()),
        "nearest_cluster_size": _describe_sizes(primary_sizes),
        "membership_size": _describe_sizes(sizes),
        "zero_embeddings": {"count": len(zero_ids), "first": zero_ids[:10]},
    }
    (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    publish(staging, out)
    return summary


def _describe_sizes(sizes: np.ndarray) -> dict:
    return {
        "min": int(sizes.min()),
        "p10": int(np.percentile(sizes, 10)),
        "median": int(np.median(sizes)),
        "p90": int(np.percentile(sizes, 90)),
        "max": int(sizes.max()),
    }


def read_assignments(store: FeatureStore, config: ClusterConfig, shard_index: int) -> tuple[list[str], np.ndarray]:
    """Sample ids and ``(n, m)`` cluster ids (nearest first) of one shard's samples of the clustered split."""
    path = clusters_dir(store, config) / pathlib.PurePosixPath(store.shards[shard_index]["samples_file"]).name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `cu-scale cluster` with k={config.k}, memberships={config.memberships}, split={config.split}")
    table = read_table(path)
    column = table.column("clusters").combine_chunks()
    return table.column("sample_id").to_pylist(), column.values.to_numpy().reshape(len(table), config.memberships)
