"""Cluster-aware batches: each batch of B holds N clusters × B/N samples (paper §II-B).

Within a batch, samples of the same cluster are the positives of the inter-sample contrasts and the
other N − 1 clusters give the negatives, so a batch must hold several samples of each of N clusters.

How the batches of a set of samples (a window of the store, `cu_scale.stages.streams`) are planned from their
nearest clusters alone (integers, never features):
1. Each sample is scheduled under its nearest cluster, so it appears at least once.
2. Each cluster's members are shuffled and cut into groups of B/N; a last, short group is filled with
   other members of the same cluster (drawn without replacement while there are enough, else with).
3. Batch after batch, N distinct clusters are drawn with probability proportional to their remaining
   groups (large clusters drain at the same pace as small ones), and one group is taken from each. When
   fewer than N clusters still have groups, the batch is completed with fresh groups of other clusters.
4. The number of batches is fixed in advance, `batch_count`: max(⌈groups / N⌉, the most groups of one
   cluster), so that it can be known before any sample is read (every worker must run the same number of
   steps, and the learning-rate schedule needs the total). To meet it, a cluster that has as many groups
   left as there are batches left is always among the N drawn. Planned with more batches than that (to
   reach a multiple of the worker count), the extra batches are N fresh groups each.
All draws come from one generator seeded by the caller (seed, epoch, window): the same seed gives the
same batches, and every epoch reshuffles.

Repeats per set: about half a group per cluster present (the filled last groups) plus the fresh groups
of the tail, so about K·(B/N) / (2·samples) of the set, which is why the stream plans over windows of
many shards (`cu_scale.stages.streams.window_shards`).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np


class BatchConfig(Protocol):
    """The batch composition these functions read: a run's `batches:` section (cu_scale.config.BatchConfig)."""

    batch_size: int  # B
    clusters_per_batch: int  # N


class BatchingError(ValueError):
    pass


def _check(config: BatchConfig) -> int:
    if config.batch_size % config.clusters_per_batch:
        raise BatchingError(f"batch size B={config.batch_size} is not divisible by N={config.clusters_per_batch} clusters per batch")
    return config.batch_size // config.clusters_per_batch


def batch_count(cluster_sizes: np.ndarray, config: BatchConfig, multiple: int = 1) -> int:
    """The batches `plan_batches` makes of samples with these nearest-cluster sizes, rounded up to a multiple."""
    group = _check(config)
    groups = -(-np.asarray(cluster_sizes, np.int64) // group)
    if not groups.any():
        return 0
    needed = max(math.ceil(int(groups.sum()) / config.clusters_per_batch), int(groups.max()))
    return -(-needed // multiple) * multiple


def plan_batches(nearest: np.ndarray, config: BatchConfig, seed: list[int], total: int | None = None) -> list[np.ndarray]:
    """`total` batches (default: the fewest, `batch_count`) of positions into `nearest`, as the module docstring says."""
    group, groups_per_batch = _check(config), config.clusters_per_batch
    rng = np.random.default_rng(seed)
    order = np.argsort(nearest, kind="stable")
    cluster_ids, starts = np.unique(nearest[order], return_index=True)
    members = np.split(order, starts[1:])
    if len(cluster_ids) < groups_per_batch:
        raise BatchingError(f"a batch needs N={groups_per_batch} clusters but these samples are in only {len(cluster_ids)}")
    fewest = batch_count(np.array([len(m) for m in members]), config)
    total = fewest if total is None else total
    if total < fewest:
        raise BatchingError(f"{len(nearest)} samples in {len(members)} clusters need at least {fewest} batches, {total} were planned")

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
    remaining = np.array([len(q) for q in queues], np.int64)
    batches = []
    for left in range(total, 0, -1):
        live = np.flatnonzero(remaining)
        must = live[remaining[live] == left]  # would not finish in time unless drawn now
        free = np.setdiff1d(live, must)
        draw = min(groups_per_batch - len(must), len(free))
        if draw:
            weights = remaining[free] / remaining[free].sum()
            must = np.concatenate([must, rng.choice(free, draw, replace=False, p=weights)])
        others = np.setdiff1d(np.arange(len(queues)), must)
        extra = rng.choice(others, groups_per_batch - len(must), replace=False)
        parts = []
        for c in must:
            parts.append(queues[c].pop())
            remaining[c] -= 1
        parts += [fill(members[c], group) for c in extra]
        batches.append(np.concatenate(parts))
    return batches
