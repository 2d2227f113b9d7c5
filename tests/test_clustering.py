"""faiss clustering: multi-assignment, edge cases, and the encode → cluster → batches stages on a demo store."""

import json

import numpy as np
import pytest

from cu_scale.cli import main
from cu_scale.stages.clustering import COUNTS_FILE, ClusteringError, clusters_dir, read_assignments, train_kmeans, trainable_counts
from cu_scale.config import ClusterConfig, load_config
from cu_scale.data.store import FeatureStore


def _blobs(n_per=50, k=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(k, dim, dtype=np.float32) * 5
    return np.concatenate([c + 0.1 * rng.standard_normal((n_per, dim), dtype=np.float32) for c in centres])


def test_kmeans_recovers_blobs_and_assigns_m_nearest_first():
    x = _blobs()
    model = train_kmeans(x, 4, seed=0)
    ids, distances = model.assign(x, 2)
    assert model.device == "cpu" and ids.shape == (200, 2)
    assert all(len(set(ids[i * 50 : (i + 1) * 50, 0])) == 1 for i in range(4))  # one cluster per blob
    assert len(set(ids[::50, 0])) == 4
    assert (distances[:, 0] <= distances[:, 1]).all() and (ids[:, 0] != ids[:, 1]).all()


def test_k_larger_than_the_queries_is_refused_clearly():
    with pytest.raises(ClusteringError, match="K=300 clusters need at least K queries; there are 200"):
        train_kmeans(_blobs(), 300)


def test_duplicates_leaving_too_few_distinct_queries_are_refused_clearly():
    x = np.repeat(_blobs(n_per=1), 40, axis=0)  # 4 distinct rows, 160 queries
    with pytest.raises(ClusteringError, match="hold only 4 distinct ones \\(156 duplicates\\). Lower cluster.k to at most 4"):
        train_kmeans(x, 8)
    assert train_kmeans(x, 4).centroids.shape == (4, 16)  # duplicates alone are fine


def test_zero_vectors_are_left_out_of_training_and_still_assigned():
    x = np.concatenate([_blobs(), np.zeros((3, 16), np.float32)])
    model = train_kmeans(x, 4)
    assert model.trained_on == 200
    ids, _ = model.assign(x[-3:], 1)
    assert ids.shape == (3, 1) and (ids >= 0).all()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, local_ray):
    root = tmp_path_factory.mktemp("demo")
    assert main(["prepare", "demo", "--out", str(root / "store"), "--videos", "120", "--quiet"]) == 0
    config = root / "run.yaml"
    config.write_text(f"store: {root / 'store'}\ncluster: {{k: 8, memberships: 2}}\nbatches: {{batch_size: 16, clusters_per_batch: 4}}\n")
    return root, config


def test_encode_is_resumable_and_cluster_writes_assignments(demo_run, capsys):
    root, config = demo_run
    store = FeatureStore(root / "store")
    assert main(["encode", str(config), "--quiet"]) == 0
    assert "encode       225 queries" in capsys.readouterr().out
    assert main(["encode", str(config), "--quiet"]) == 0  # resumes: nothing left to do
    out = capsys.readouterr().out
    assert "encode       0 queries" in out and "1 of 1 shards were done already" in out

    assert main(["cluster", str(config)]) == 0
    out = capsys.readouterr().out
    assert "cluster      169 train queries into K=8 on cpu" in out
    summary = json.loads((root / "store" / "clusters" / "train-K8-m2" / "summary.json").read_text())
    assert summary["samples"] == 169 and summary["split"] == "train"
    ids, clusters = read_assignments(store, ClusterConfig(k=8, memberships=2), 0)
    assert clusters.shape == (169, 2) and ids == store.samples_table(split="train", columns=["sample_id"]).column("sample_id").to_pylist()
    # Queries about the same action (verb and object) land in the same nearest cluster more often than not.
    queries = store.samples_table(split="train", columns=["query"]).column("query").to_pylist()
    same = [clusters[i, 0] == clusters[j, 0] for i in range(60) for j in range(i + 1, 60) if queries[i].split()[-1] == queries[j].split()[-1]]
    assert np.mean(same) > 0.5


def test_without_faiss_cluster_says_which_extra_to_install(demo_run, monkeypatch, capsys):
    """As when no faiss build is installed: `import faiss` fails (a None entry in sys.modules makes the
    import system raise ModuleNotFoundError for it, as for a missing package)."""
    root, config = demo_run
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)
    assert main(["cluster", str(config), "--set", "cluster.k=5"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cu-scale[cpu]" in error and "cu-scale[gpu]" in error
    assert not (root / "store" / "clusters" / "train-K5-m2").exists()


def test_cluster_counts_per_shard_are_what_the_streams_plan_from(demo_run):
    root, config_path = demo_run
    config = load_config(config_path)
    store = FeatureStore(root / "store")
    if not (root / "store" / "clusters" / "train-K8-m2" / "summary.json").exists():
        assert main(["encode", str(config_path), "--quiet"]) == 0 and main(["cluster", str(config_path)]) == 0
    nearest = np.concatenate([read_assignments(store, config.cluster, i)[1][:, 0] for i in range(len(store.shards))])
    assert len(nearest) == store.manifest["counts"]["splits"]["train"]["samples"]
    counts = trainable_counts(store, config.cluster)
    assert counts.shape == (len(store.shards), 8) and counts.sum(0).tolist() == np.bincount(nearest, minlength=8).tolist()
    # A cluster directory from before the counts file existed gets it from its assignments.
    (clusters_dir(store, config.cluster) / COUNTS_FILE).unlink()
    assert trainable_counts(store, config.cluster).tolist() == counts.tolist()
