"""Cluster-aware batches: N clusters × B/N per batch, coverage, a count known in advance, determinism, refusals."""

import math

import numpy as np
import pytest

from cu_scale.method.batching import BatchingError, batch_count, plan_batches
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
    batches = plan_batches(nearest, config, [3, 0])
    for positions in batches:
        assert positions.shape == (batch,)
        groups = nearest[positions].reshape(clusters, batch // clusters)
        assert (groups == groups[:, :1]).all(), "each group of B/N comes from one cluster"
        assert len(np.unique(groups[:, 0])) == clusters, "N distinct clusters"


def test_every_sample_appears_at_least_once_and_the_count_is_known_in_advance():
    nearest = _nearest()
    config = BatchConfig(32, 4, seed=1)
    sizes = np.bincount(nearest)
    groups = -(-sizes // 8)
    # Hand-computed: the most groups of one cluster and ⌈all groups / N⌉, whichever is larger.
    expected = max(math.ceil(groups.sum() / 4), groups.max())
    assert batch_count(sizes, config) == expected
    assert batch_count(sizes, config, multiple=3) == -(-expected // 3) * 3
    for epoch in range(3):
        batches = plan_batches(nearest, config, [1, epoch])
        assert len(batches) == expected
        seen = np.concatenate(batches)
        assert set(seen) == set(range(len(nearest)))
        # Padding only fills short groups and the tail: few repeats.
        assert len(seen) < 1.5 * len(nearest)


def test_one_huge_cluster_sets_the_count_and_still_gets_n_clusters_per_batch():
    # 400 samples in cluster 0 (50 groups of 8), 10 in each of five others: 50 batches, not ⌈(50+10)/4⌉ = 15.
    nearest = np.concatenate([np.zeros(400, int), np.repeat(np.arange(1, 6), 10)])
    config = BatchConfig(32, 4, seed=0)
    batches = plan_batches(nearest, config, [0])
    assert len(batches) == batch_count(np.bincount(nearest), config) == 50
    assert all(len(np.unique(nearest[b].reshape(4, 8)[:, 0])) == 4 for b in batches)
    assert set(np.concatenate(batches)) == set(range(len(nearest)))


def test_more_batches_than_needed_are_fresh_groups_and_fewer_are_refused():
    nearest = _nearest()
    config = BatchConfig(32, 4, seed=1)
    fewest = batch_count(np.bincount(nearest), config)
    batches = plan_batches(nearest, config, [1], total=fewest + 5)
    assert len(batches) == fewest + 5
    for positions in batches[-5:]:
        assert len(np.unique(nearest[positions].reshape(4, 8)[:, 0])) == 4
    with pytest.raises(BatchingError, match=f"need at least {fewest} batches, {fewest - 1} were planned"):
        plan_batches(nearest, config, [1], total=fewest - 1)


def test_no_sample_twice_in_a_group_when_its_cluster_is_large_enough():
    nearest = _nearest()
    sizes = np.bincount(nearest)
    for positions in plan_batches(nearest, BatchConfig(32, 4, seed=2), [2, 0]):
        for group in positions.reshape(4, 8):
            if sizes[nearest[group[0]]] >= 8:
                assert len(set(group)) == 8


def test_same_seed_same_batches_and_each_epoch_reshuffles():
    nearest = _nearest()
    config = BatchConfig(32, 4, seed=5)
    first = [b.tolist() for b in plan_batches(nearest, config, [5, 0, 0])]
    assert first == [b.tolist() for b in plan_batches(nearest, config, [5, 0, 0])]
    assert first != [b.tolist() for b in plan_batches(nearest, config, [5, 1, 0])]  # another epoch
    assert first != [b.tolist() for b in plan_batches(nearest, config, [6, 0, 0])]  # another seed
    assert first != [b.tolist() for b in plan_batches(nearest, config, [5, 0, 1])]  # another window


def test_refusals_are_clear():
    with pytest.raises(ConfigError, match=r"B=30 is not divisible by clusters_per_batch N=4.*try B=28"):
        BatchConfig(30, 4)
    with pytest.raises(BatchingError, match="needs N=8 clusters but these samples are in only 3"):
        plan_batches(np.array([0, 1, 2] * 10), BatchConfig(16, 8), [0])
