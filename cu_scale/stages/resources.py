"""How much of the cluster each Ray stage asks for: actor pools, training groups and their readers.

Every pipeline here has readers (Ray Data tasks that read store shards, `READ_TASK_CPUS` each) feeding
consumers that hold CPUs for as long as the stage runs (encoder and inference actors, Ray Train workers).
If the consumers reserve every CPU, the readers never start and the stage waits forever (seen: two
1-CPU `PseudoLabeler` actors on a 2-CPU machine left a 0.5-CPU read task pending, at 4% CPU, for 15
minutes; which of them Ray scheduled first decided whether it hung). So consumers are sized from what
the cluster has, after the readers' share:
- a consumer reserves at most one CPU, and together they leave `READ_TASK_CPUS` for the readers;
- torch inside an actor still uses its share of *all* CPUs as threads (`threads`): readers are light
  next to a forward pass, and Ray's reservation would otherwise leave cores idle;
- a training worker's torch leaves the CPUs of the stream's window tasks out of its threads (at least
  one thread). Its OpenMP threads wait for each other at every parallel op, so a reader that takes any
  of their cores stalls them all: on 2 CPUs and the training-scale benchmark's 100k store, one worker
  with two threads trained at 4.81-5.12 steps/s (rounds of three runs), with one thread at 4.96-5.26
  (one run), and its plain loop over prebuilt batches ran at 5.36 with one thread against 5.38-6.02
  with two: the stream at 0.95× that loop instead of 0.84-0.89× (0.92× and 0.93× at 10k and 1M).
Reservations are bookkeeping, not results: the number of actors or threads never changes what a stage
computes, so the stage markers do not record them (`cu_scale.ops.pipeline`).
"""

from __future__ import annotations

import dataclasses

READ_TASK_CPUS = 0.5  # a store-reading Ray Data task
TASK_BASE_MEMORY = 512 * 2**20  # a Ray Data task's Python worker before it reads anything (pyarrow, numpy; torch if the worker ran it before)
MIN_CONSUMER_CPUS = 0.1  # the least a consumer reserves (Ray needs a positive amount to schedule it)


@dataclasses.dataclass(frozen=True)
class ActorPool:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int  # torch threads per actor
    device: str  # "cuda" or "cpu"


def cluster_totals() -> tuple[float, float]:
    """(CPUs, GPUs) of the whole Ray cluster."""
    import ray

    resources = ray.cluster_resources()
    return float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0))


def consumer_cpus(cluster_cpus: float, consumers: int, readers: float) -> float:
    """CPUs each of `consumers` reserves so that `readers` CPUs stay free: at most 1, at least 0.1."""
    return min(1.0, max(MIN_CONSUMER_CPUS, (cluster_cpus - readers) / consumers))


def actor_pool(requested: int, gpu: str = "auto", readers: float = 0.0) -> ActorPool:
    """A Ray Data actor pool of up to `requested` actors that fits the cluster beside `readers` CPUs of read tasks.

    `gpu`: "auto" (a GPU per actor when the cluster has one for each, fewer actors otherwise), "cuda" or "cpu".
    On GPUs the pool is capped at the number of GPUs; on CPUs at the number whose reservations still fit.
    """
    cpus, gpus = cluster_totals()
    use_gpu = gpu == "cuda" or (gpu == "auto" and gpus >= 1)
    actors = max(1, min(requested, int(gpus))) if use_gpu and gpus >= 1 else requested
    actors = max(1, min(actors, int((cpus - readers) / MIN_CONSUMER_CPUS)))
    return ActorPool(
        actors=actors,
        cpus_per_actor=consumer_cpus(cpus, actors, readers),
        gpus_per_actor=1.0 if use_gpu else 0.0,
        threads=max(1, int(cpus // actors)),
        device="cuda" if use_gpu else "cpu",
    )


def training_group(workers: int) -> tuple[float, int, bool]:
    """(CPUs per Ray Train worker, torch threads per worker, use GPUs) for a group of `workers` beside the
    stream's read tasks: the reservations of `actor_pool`, threads from the CPUs the window tasks do not
    use (see above), a GPU per worker when there is one for each."""
    from cu_scale.stages.streams import WINDOW_TASKS

    cpus, gpus = cluster_totals()
    threads = max(1, int((cpus - WINDOW_TASKS * READ_TASK_CPUS) // workers))
    return consumer_cpus(cpus, workers, READ_TASK_CPUS), threads, gpus >= workers
