"""Cluster-aware batches: N clusters × B/N per batch, coverage per epoch, determinism, refusals."""

import numpy as np
import pytest

from cu_scale.batching import BatchingError, plan_epoch
from cu_scale.config import BatchConfig, ConfigError


def _nearest(seed=0, n=1000, k=23):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 90, size=k)  # very uneven clusters, some smaller than a group
    labels = np.repeat(np.arange(k), sizes)[:n]
    return rng.permutation(labels)


@pytest.mark.parametrize("batch,clusters", [(32, 4), (64, 8), (12, 12)])
def test_every_batch_holds_n_clusters_of_b_over_n_samples(batch, clusters):
    nearest = _nearest()
    config = BatchConfig(batch_size=batch, clusters_per_batch=clusters, seed=3)
    batches = list(plan_epoch(nearest, config, epoch=0))
    for positions in batches:
        assert positions.shape == (batch,)
        groups = nearest[positions].reshape(clusters, batch // clusters)
        assert (groups == groups[:, :1]).all(), "each group of B/N comes from one cluster"
        assert len(np.unique(groups[:, 0])) == clusters, "N distinct clusters"


def test_every_sample_appears_at_least_once_per_epoch():
    nearest = _nearest()
    for epoch in range(3):
        seen = np.concatenate(list(plan_epoch(nearest, BatchConfig(32, 4, seed=1), epoch)))
        assert set(seen) == set(range(len(nearest)))
        # Padding only fills short groups and the tail: few repeats.
        assert len(seen) < 1.5 * len(nearest)


def test_no_sample_twice_in_a_group_when_its_cluster_is_large_enough():
    nearest = _nearest()
    sizes = np.bincount(nearest)
    for positions in plan_epoch(nearest, BatchConfig(32, 4, seed=2), 0):
        for group in positions.reshape(4, 8):
            if sizes[nearest[group[0]]] >= 8:
                assert len(set(group)) == 8


def test_same_seed_same_batches_and_each_epoch_reshuffles():
    nearest = _nearest()
    config = BatchConfig(32, 4, seed=5)
    first = [b.tolist() for b in plan_epoch(nearest, config, 0)]
    assert first == [b.tolist() for b in plan_epoch(nearest, config, 0)]
    assert first != [b.tolist() for b in plan_epoch(nearest, config, 1)]
    assert first != [b.tolist() for b in plan_epoch(nearest, BatchConfig(32, 4, seed=6), 0)]
    assert first != [b.tolist() for b in plan_epoch(nearest, config, 0, rank=1)]


def test_refusals_are_clear():
    with pytest.raises(ConfigError, match=r"B=30 is not divisible by clusters_per_batch N=4.*try B=28"):
        BatchConfig(30, 4)
    with pytest.raises(BatchingError, match="needs N=8 clusters but this partition has samples in only 3"):
        list(plan_epoch(np.array([0, 1, 2] * 10), BatchConfig(16, 8), 0))
