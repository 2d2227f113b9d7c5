"""Cluster-aware batches: each batch of B holds N clusters × B/N samples (paper §II-B).

Within a batch, samples of the same cluster are the positives of the inter-sample contrasts and the
other N − 1 clusters give the negatives, so a batch must hold several samples of each of N clusters.

How an epoch is planned, per worker, from the (small) sample → cluster table of its own partition:
1. Each sample is scheduled under its nearest cluster, so it appears at least once per epoch.
2. Each cluster's members are shuffled and cut into groups of B/N; a last, short group is filled with
   other members of the same cluster (drawn without replacement while there are enough, else with).
3. Batch after batch, N distinct clusters are drawn with probability proportional to their remaining
   groups (large clusters drain at the same pace as small ones), and one group is taken from each. When
   fewer than N clusters still have groups, the batch is completed with fresh groups of other clusters.
All draws come from one generator seeded by (seed, epoch, rank): the same seed gives the same batches,
and each epoch reshuffles. The planner holds integers only (sample positions), never features; each
training worker plans over the samples of its own Ray Data shard (`cu_scale.implicit.worker_loop`), so
nothing is collected on the driver.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from cu_scale.config import BatchConfig


class BatchingError(ValueError):
    pass


def plan_epoch(nearest: np.ndarray, config: BatchConfig, epoch: int, rank: int = 0) -> Iterator[np.ndarray]:
    """Batches of positions into `nearest` (each sample's nearest cluster), as described in the module docstring."""
    batch, groups_per_batch = config.batch_size, config.clusters_per_batch
    if batch % groups_per_batch:
        raise BatchingError(f"batch size B={batch} is not divisible by N={groups_per_batch} clusters per batch")
    group = batch // groups_per_batch
    rng = np.random.default_rng([config.seed, epoch, rank])
    order = np.argsort(nearest, kind="stable")
    cluster_ids, starts = np.unique(nearest[order], return_index=True)
    members = np.split(order, starts[1:])
    if len(cluster_ids) < groups_per_batch:
        raise BatchingError(f"a batch needs N={groups_per_batch} clusters but this partition has samples in only {len(cluster_ids)}")

    def fill(pool: np.ndarray, need: int) -> np.ndarray:
        return rng.choice(pool, need, replace=need > len(pool))

    queues = []
    for pool in members:
        shuffled = rng.permutation(pool)
        short = (-len(shuffled)) % group
        if short:
            # Complete the last group with members not already in it; a cluster smaller than a group repeats.
            in_full_groups = shuffled[: len(shuffled) - group + short]
            shuffled = np.concatenate([shuffled, fill(in_full_groups if len(in_full_groups) >= short else pool, short)])
        queues.append(list(shuffled.reshape(-1, group)))
    remaining = np.array([len(q) for q in queues], float)
    while remaining.sum() > 0:
        live = np.flatnonzero(remaining)
        if len(live) >= groups_per_batch:
            chosen = rng.choice(live, groups_per_batch, replace=False, p=remaining[live] / remaining[live].sum())
            extra = np.array([], int)
        else:
            chosen = live
            others = np.setdiff1d(np.arange(len(queues)), live)
            extra = rng.choice(others, groups_per_batch - len(live), replace=False)
        parts = []
        for c in chosen:
            parts.append(queues[c].pop())
            remaining[c] -= 1
        parts += [fill(members[c], group) for c in extra]
        yield np.concatenate(parts)
