"""Ray Data pipelines that turn the feature store into ready batches, so that no stage holds the corpus.

The store is the only copy of the data. Every stage that needs features reads them here, inside Ray Data
tasks, a bounded piece at a time:

**Training streams** (`implicit_stream`, `explicit_stream`): one Ray Dataset per epoch whose rows are whole
batches, one row per batch (Ray Data may merge or split blocks, and `streaming_split(equal=True)` balances
rows, not blocks: a batch that is one row can be neither torn apart nor split between workers).
- The store's shards are dealt into *windows* of G consecutive shards of an order reshuffled every epoch
  from the seed (`epoch_windows`). `WINDOW_TASKS` Ray Data tasks share the windows (task t takes windows
  t, t + WINDOW_TASKS, ...); for each window in turn a task reads its shards (samples, videos, word
  features, clusters or labels), plans that window's batches for one worker (`cu_scale.method.batching` for the
  implicit stage's N clusters × B/N; a plain shuffle for the explicit stage) and yields them one by one.
  A video's features are held once in the task and copied only into the batches that use them.
- Each window plans a multiple of W batches (W workers), so every epoch has a multiple of W rows and the
  equal split gives every worker the same number of steps, known in advance on the driver from small
  per-shard counts (`implicit_plan`, `explicit_plan`): the learning-rate schedule gets its exact total.
- Memory: a window task holds one window's G shards at a time (it asks Ray for that much, `memory=`, from
  the manifest), two window tasks run at once (one being consumed, the next being read), its batches leave
  it in blocks of `STREAM_BLOCK_BYTES`, and it stops producing when two of its blocks are not taken (Ray
  Data's streaming-generator backpressure).
  The stream's object-store budget is a few blocks per task and per worker (`STREAM_BASE_BLOCKS`,
  `STREAM_BLOCKS_PER_WORKER`), at most `STREAM_OBJECT_STORE_FRACTION` of the object store.
- Workers take their share with `streaming_split` (a group of one iterates a short epoch's dataset
  itself: `cu_scale.stages.training.split_stream`) with prefetching, the next epoch's stream started before the
  checkpoint (`cu_scale.stages.training.epoch_batches`); a worker holds a few blocks of batches, never a shard.

G (`batches.window_shards`) trades repeats for memory. Each cluster present in a window ends with a short
group of B/N filled with repeats (half a group on average), so repeats are about K·(B/N) / (2·window
samples) of an epoch; the default G is the fewest shards holding `WINDOW_SAMPLES_PER_CLUSTER_GROUP` × K × B/N
training samples, about 3 % repeats. Past K ≈ 10³ a window that large gets big: re-shard the store by
a coarse super-cluster once, offline, so that a window of fewer shards holds whole clusters.

**Inference batches** (`inference_dataset`): one read task per shard yields blocks of at most
`INFERENCE_ROWS` samples of one split, one row per sample with its padded features and word features.
Rows carry their shard index, so consumers can write outputs co-partitioned with the store.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cu_scale.config import BatchConfig, ConfigError
from cu_scale.stages.encode import read_words
from cu_scale.data.store import FeatureStore, StoreError, features_from_column, read_shard
from cu_scale.storage import locate, read_table

WINDOW_SAMPLES_PER_CLUSTER_GROUP = 16  # window ≥ 16·K·(B/N) training samples: ~3 % repeats
# A stream's blocks hold this many bytes of batches (at least one batch). Ray Data's default, 128 MiB, is 52
# batches of the benchmark's 1M store: a worker prefetching two blocks held a hundred batches in its memory,
# and a task made 52 batches before the first left it. One batch a block costs a block's overhead per batch
# (the task's generator report, serialisation, stats, the executor's bookkeeping): measured at 5 batches/s,
# the data path took 58 ms of CPU per batch with one-batch blocks, 27 ms with 16 MiB and 25 ms with 128 MiB.
STREAM_BLOCK_BYTES = 16 * 2**20
# A training stream's blocks in the object store: room for each window task's two unconsumed blocks and
# the one it is building, and for each worker's prefetched blocks, with slack (at most a quarter of the
# object store). A worker's resident memory counts every object-store page it has read a batch from, and
# the object store hands a stream fresh pages until the stream's budget is used: with a quarter of the
# object store (1.4 GiB here) the worker's RSS grew by the batches it read, 2.6 MB a step, for 400 steps.
STREAM_BASE_BLOCKS, STREAM_BLOCKS_PER_WORKER = 8, 4
STREAM_OBJECT_STORE_FRACTION = 0.25
WINDOW_TASKS = 2  # window tasks at once: one being consumed, the next being read
LOOP_PAUSE_SECONDS = 0.01  # Ray Data's scheduling loop rests this long per step (`LoopPause`) ...
LOOP_REST_SECONDS = 0.05  # ... and this long while its consumer has outputs it has not taken
INFERENCE_ROWS = 256  # samples per block of an inference dataset
KEY_BITS = 32  # sample_key = shard index << KEY_BITS | row in the shard: a unique integer per sample


@dataclasses.dataclass(frozen=True)
class StoreLayout:
    """What a read task needs to know about a store: plain values, cheap to send to every task."""

    path: str
    feature_dim: int
    max_steps: int
    word_dim: int
    max_tokens: int
    shards: tuple[dict, ...]  # the manifest's entry of each shard: its files, sizes and checksums
    shard_bytes: tuple[int, ...]  # per shard, its features and word features at most padded

    @classmethod
    def of(cls, store: FeatureStore, encode_meta: dict) -> "StoreLayout":
        dim, tokens = int(encode_meta["dim"]), int(encode_meta["max_tokens"])
        return cls(
            store.path.uri, store.feature_dim, store.max_steps, dim, tokens,
            tuple(store.shards),
            tuple(2 * (s["num_videos"] * store.max_steps * store.feature_dim + s["num_samples"] * tokens * dim) for s in store.shards),
        )

    def task_memory(self, shard_groups) -> int:
        """Bytes a task that reads these groups of shards may hold: a Python worker's own, plus its largest
        group twice (Parquet decodes into buffers of its own before they are handed over)."""
        from cu_scale.stages.resources import TASK_BASE_MEMORY

        return int(TASK_BASE_MEMORY + 2 * max((sum(self.shard_bytes[i] for i in group) for group in shard_groups), default=0))


def stack_padded(views: list[np.ndarray], index: np.ndarray, length: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """`views[i]` for i in `index`, each ``(n_i, dim)``, zero-padded into ``(len(index), length, dim)`` float16, with the mask."""
    out = np.zeros((len(index), length, dim), np.float16)
    mask = np.zeros((len(index), length), bool)
    for k, i in enumerate(index):
        view = views[i]
        out[k, : len(view)] = view
        mask[k, : len(view)] = True
    return out, mask


class Window:
    """The samples of one split in a few shards, with their videos and word features, each held once.

    Features stay as views into the Parquet buffers they were read into; `gather` copies the rows of one
    batch. With `features=False` only the sample columns are read (planning, checks). `keep(samples) -> bool mask` narrows the samples further (those with a partial label, say);
    `extra(shard_index, samples, rows) -> dict` reads per-sample columns of the caller's (clusters, labels).
    """

    def __init__(self, layout: StoreLayout, shard_indices, split: str | None, keep=None, extra=None, features: bool = True):
        self.layout = layout
        self.video_views: list[np.ndarray] = []
        self.word_views: list[np.ndarray] = []
        columns: dict[str, list] = {}
        for index in shard_indices:
            samples = read_shard(layout.path, layout.shards[index], "samples")
            chosen = np.ones(samples.num_rows, bool) if split is None else pc.equal(samples.column("split"), split).to_numpy(zero_copy_only=False)
            if keep is not None:
                chosen &= keep(samples)
            rows = np.flatnonzero(chosen)
            if not len(rows):
                continue
            videos = read_shard(layout.path, layout.shards[index], "videos", ["video_id", "duration", *(["features"] if features else [])])
            row_of = {v: i for i, v in enumerate(videos.column("video_id").to_pylist())}
            video_ids = samples.column("video_id").to_numpy(zero_copy_only=False)[rows]
            video_rows = np.array([row_of[v] for v in video_ids], np.int64)
            part = {name: samples.column(name).to_numpy(zero_copy_only=False)[rows] for name in ("sample_id", "video_id", "query", "partial_kind", "partial_start", "partial_end", "gt_start", "gt_end")}
            part["duration"] = videos.column("duration").to_numpy()[video_rows]
            part["video"] = video_rows + len(self.video_views)
            part["words"] = np.arange(len(rows)) + len(self.word_views)
            part["sample_key"] = (np.int64(index) << KEY_BITS) | rows.astype(np.int64)
            part["shard"] = np.full(len(rows), index, np.int64)
            if extra is not None:
                part.update(extra(index, samples, rows))
            for name, values in part.items():
                columns.setdefault(name, []).append(values)
            if features:
                words, _ = read_words(layout.path, layout.shards[index]["samples_file"], layout.word_dim, samples.column("sample_id"))
                self.video_views += features_from_column(videos.column("features"), layout.feature_dim)
                self.word_views += [words[r] for r in rows]
        self.columns = {name: np.concatenate(parts) for name, parts in columns.items()}
        self.size = len(self.columns["sample_id"]) if columns else 0

    def gather(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Padded features, mask, word features and word mask of the samples at `positions`."""
        layout = self.layout
        features, mask = stack_padded(self.video_views, self.columns["video"][positions], layout.max_steps, layout.feature_dim)
        words, words_valid = stack_padded(self.word_views, self.columns["words"][positions], layout.max_tokens, layout.word_dim)
        return {"features": features, "mask": mask, "words": words, "words_valid": words_valid}


def _as_row(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A whole batch as one Ray Data row: every array gets a leading axis of 1."""
    return {name: value[None] for name, value in batch.items()}


def has_partial_label(samples: pa.Table) -> np.ndarray:
    return pc.is_valid(samples.column("partial_start")).to_numpy(zero_copy_only=False)


# ----------------------------------------------------------------------------------------------------------
# Windows and the plan of an epoch (driver side: small integers only)
# ----------------------------------------------------------------------------------------------------------


def window_shards(samples_per_shard: np.ndarray, config: BatchConfig, k: int) -> int:
    """G: `config.window_shards`, or the fewest shards that hold `WINDOW_SAMPLES_PER_CLUSTER_GROUP`·K·(B/N)
    training samples on average (both stages use the same windows: the explicit stage's shuffle is as wide)."""
    if config.window_shards:
        return config.window_shards
    used = samples_per_shard[samples_per_shard > 0]
    if not len(used):
        return 1
    target = WINDOW_SAMPLES_PER_CLUSTER_GROUP * k * (config.batch_size // config.clusters_per_batch)
    return max(1, min(len(used), math.ceil(target / used.mean())))


def epoch_windows(shards: np.ndarray, size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The shards that hold samples, in an order drawn from (seed, epoch), cut into windows of `size`."""
    order = np.random.default_rng([seed, epoch]).permutation(np.asarray(shards))
    return [order[i : i + size] for i in range(0, len(order), size)]


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """One epoch of a training stream: the shards of each window and the batches each window makes."""

    epoch: int
    windows: tuple[tuple[int, ...], ...]
    batches: tuple[int, ...]  # per window, a multiple of the worker count
    workers: int

    @property
    def steps(self) -> int:
        return sum(self.batches) // self.workers


def implicit_plan(cluster_counts: np.ndarray, per_worker: BatchConfig, workers: int, size: int, epoch: int) -> EpochPlan:
    """The implicit stream of one epoch from the (shards × K) nearest-cluster counts of the trainable samples."""
    from cu_scale.method.batching import batch_count

    shards = np.flatnonzero(cluster_counts.sum(1))
    windows = epoch_windows(shards, size, per_worker.seed, epoch)
    batches = [batch_count(cluster_counts[w].sum(0), per_worker, multiple=workers) for w in windows]
    return EpochPlan(epoch, tuple(tuple(int(s) for s in w) for w in windows), tuple(batches), workers)


def explicit_plan(labelled: np.ndarray, batch_size: int, workers: int, size: int, seed: int, epoch: int) -> EpochPlan:
    """The explicit stream of one epoch from the per-shard counts of training samples with a label."""
    shards = np.flatnonzero(labelled)
    windows = epoch_windows(shards, size, seed, epoch)
    batches = [-(-math.ceil(int(labelled[w].sum()) / batch_size) // workers) * workers for w in windows]
    return EpochPlan(epoch, tuple(tuple(int(s) for s in w) for w in windows), tuple(batches), workers)


def check_window_fits(memory: int, setting: str = "batches.window_shards") -> None:
    """Refuse a window larger than a quarter of the cluster's memory: it would never be scheduled, or OOM."""
    import ray

    available = ray.cluster_resources().get("memory", 0)
    if available and memory > available / 4:
        raise ConfigError(
            f"{setting}: a window of the store needs about {memory / 2**30:.1f} GiB in one Ray task, more than a quarter of the"
            f" cluster's {available / 2**30:.1f} GiB of task memory; set a smaller {setting}"
        )


def _pausing_loop():
    """`LoopPause`, the Ray Data execution callback, defined on first use (its base class is Ray's)."""
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    class LoopPause(ExecutionCallback):
        """Rests Ray Data's scheduling loop after every step: `LOOP_PAUSE_SECONDS`, or `LOOP_REST_SECONDS`
        while the consumer has outputs it has not taken yet.

        When a pipeline is held back by its consumer (a training worker is slower than the store's readers,
        which is how it should be), Ray 2.60's streaming executor finds a finished output it may not take yet
        and goes round its loop again at once: measured here, a `streaming_split` coordinator then burns 97 %
        of a core, which on these two cores slowed the implicit stage by a quarter. With a 10 ms pause it used
        3 % on a short stream, but 13 % on a long one, where the executor stays alive for the whole epoch
        (its step, resource accounting and metrics, costs about a millisecond), and in a group of one on a
        short epoch it runs in the training process itself. So it rests 50 ms while outputs wait unread (the consumer then
        holds those and its own prefetched batches: enough for 60 steps a second) and 10 ms otherwise;
        a step still takes every output and starts every task it may."""

        def on_execution_step(self, executor):
            output = getattr(executor, "_output_node", None)  # Ray 2.60's (operator, state) of the last operator
            waiting = output[1].output_queue.num_blocks if output is not None else 0
            time.sleep(LOOP_REST_SECONDS if waiting else LOOP_PAUSE_SECONDS)

    return LoopPause


def quiet(dataset, object_store_bytes: int | None = None):
    """The dataset with this project's execution settings: no progress bars of Ray's, the loop pause, and
    optionally a budget of at most that many bytes of the object store for its blocks (and at most
    `STREAM_OBJECT_STORE_FRACTION` of it)."""
    import ray

    context = dataset.context
    context.enable_progress_bars = False
    context.custom_execution_callback_classes = [*context.custom_execution_callback_classes, _pausing_loop()]
    budget = min(object_store_bytes or 0, ray.cluster_resources().get("object_store_memory", 0) * STREAM_OBJECT_STORE_FRACTION)
    if budget:
        context.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(object_store_memory=budget)
    return dataset


def _stream(plan: EpochPlan, make_batches, layout: StoreLayout):
    """The Ray Dataset of one epoch: `WINDOW_TASKS` tasks, each reading its share of the windows in turn
    and yielding their planned batches as rows."""
    import ray

    from cu_scale.stages.resources import READ_TASK_CPUS

    windows, batches = plan.windows, plan.batches

    def window_rows(item: dict):
        for indices in item["windows"]:
            for index in indices:
                for batch in make_batches(windows[index], batches[index], [plan.epoch, int(index)]):
                    yield _as_row(batch)

    # Task t reads windows t, t + WINDOW_TASKS, ... one after the other: the executor's input queue has
    # WINDOW_TASKS entries whatever the store's size, and no window waits as a queued task of its own.
    tasks = max(1, min(WINDOW_TASKS, len(windows)))
    items = [{"windows": list(range(t, len(windows), tasks))} for t in range(tasks)]
    dataset = ray.data.from_items(items, override_num_blocks=tasks)
    dataset = dataset.map_batches(window_rows, batch_size=1, num_cpus=READ_TASK_CPUS, memory=layout.task_memory(windows), compute=ray.data.TaskPoolStrategy(size=tasks))
    dataset.context.target_max_block_size = STREAM_BLOCK_BYTES
    return quiet(dataset, STREAM_BLOCK_BYTES * (STREAM_BASE_BLOCKS + STREAM_BLOCKS_PER_WORKER * plan.workers))


def implicit_window(layout: StoreLayout, clusters_dir: str, memberships: int, per_worker: BatchConfig, shards, count: int, seed: list[int], features: bool = True):
    """One window of the implicit stream: the `Window` of its trainable samples (with their ``clusters``)
    and its `count` batches of positions into it, planned from (seed, epoch, window) = `seed`."""
    from cu_scale.method.batching import plan_batches

    def clusters_of(index: int, samples: pa.Table, rows: np.ndarray) -> dict:
        path = locate(clusters_dir) / pathlib.PurePosixPath(layout.shards[index]["samples_file"]).name
        table = read_table(path)
        train_rows = np.flatnonzero(pc.equal(samples.column("split"), "train").to_numpy(zero_copy_only=False))
        if not table.column("sample_id").equals(samples.column("sample_id").take(pa.array(train_rows))):
            raise StoreError(f"{path} does not hold the training samples of {layout.shards[index]['samples_file']} in order: rerun `cu-scale cluster`")
        column = table.column("clusters").combine_chunks()
        clusters = column.values.to_numpy().reshape(len(table), memberships)
        return {"clusters": clusters[np.searchsorted(train_rows, rows)]}

    window = Window(layout, shards, "train", keep=has_partial_label, extra=clusters_of, features=features)
    return window, plan_batches(window.columns["clusters"][:, 0], per_worker, [per_worker.seed, *seed], total=count)


def implicit_batches(layout: StoreLayout, clusters_dir: str, memberships: int, per_worker: BatchConfig, shards, count: int, seed: list[int]):
    """The `count` batches of one window of the implicit stream (`implicit_stream` gives their columns), as
    plain numpy dicts: what a window task yields, and what a loop without Ray can train on."""
    window, batches = implicit_window(layout, clusters_dir, memberships, per_worker, shards, count, seed)
    c = window.columns
    duration = c["duration"].astype(np.float32)
    anchor = ((c["partial_start"] + c["partial_end"]) / 2 / duration).astype(np.float32)
    start, end = (c["partial_start"] / duration).astype(np.float32), (c["partial_end"] / duration).astype(np.float32)
    for positions in batches:
        yield {
            **window.gather(positions), "anchor": anchor[positions], "partial_start": start[positions], "partial_end": end[positions],
            "clusters": c["clusters"][positions].astype(np.int32), "sample_key": c["sample_key"][positions],
            "full": c["partial_kind"][positions] == "full",
        }


def implicit_stream(layout: StoreLayout, clusters_dir: str, memberships: int, per_worker: BatchConfig, plan: EpochPlan):
    """The implicit stage's batches of one epoch. Row columns (each with a leading axis of 1):
    features (B, T, Dv) f16, mask (B, T), words (B, M, Dq) f16, words_valid (B, M), anchor, partial_start,
    partial_end (B,) f32 in normalised time, clusters (B, m) int32, sample_key (B,) int64, full (B,) bool (the
    label is a full moment)."""
    return _stream(plan, functools.partial(implicit_batches, layout, clusters_dir, memberships, per_worker), layout)


def explicit_labels(layout: StoreLayout, source: str, pseudo_labels_dir: str | None):
    """A `Window` `extra` that reads the training label of `source` as target_start, target_end (seconds):
    the store's ground truth or partial label, the pseudo-label stage's file of the shard, or for ``mixed``
    the pseudo-label where the sample's label kind is not full and its full moment (its label) where it is."""

    def labels_of(index: int, samples: pa.Table, rows: np.ndarray) -> dict:
        if source in ("gt", "partial"):
            prefix = "gt" if source == "gt" else "partial"
            return {"target_start": samples.column(f"{prefix}_start").to_numpy(zero_copy_only=False)[rows].astype(float),
                    "target_end": samples.column(f"{prefix}_end").to_numpy(zero_copy_only=False)[rows].astype(float)}
        table = read_table(locate(pseudo_labels_dir) / pathlib.PurePosixPath(layout.shards[index]["samples_file"]).name, columns=["sample_id", "pseudo_start", "pseudo_end"])
        where = pc.index_in(samples.column("sample_id").take(pa.array(rows)), value_set=table.column("sample_id"))
        if where.null_count:
            raise StoreError(f"{pseudo_labels_dir}: {where.null_count} training samples of {layout.shards[index]['samples_file']} have no pseudo-label: rerun the pseudo-label stage")
        where = where.to_numpy()
        target = {"target_start": table.column("pseudo_start").to_numpy()[where], "target_end": table.column("pseudo_end").to_numpy()[where]}
        if source == "mixed":
            full = samples.column("partial_kind").to_numpy(zero_copy_only=False)[rows] == "full"
            for side in ("start", "end"):
                label = samples.column(f"partial_{side}").to_numpy(zero_copy_only=False)[rows].astype(float)
                target[f"target_{side}"] = np.where(full, label, target[f"target_{side}"])
        return target

    return labels_of


def explicit_targets(columns: dict[str, np.ndarray], source: str, attend_to_partial: bool) -> dict[str, np.ndarray]:
    """target_start, target_end, inside_start, inside_end (f32, normalised by the duration, clipped to [0, 1])
    of a window's columns read with `explicit_labels`: the span to learn, and a span known to lie in the
    moment (the partial label for pseudo-labels with `attend_to_partial`, the target otherwise; a full label
    is its own partial label, so ``mixed`` reads the partial label for every sample)."""
    inside = "partial" if source in ("pseudo", "mixed") and attend_to_partial else "target"
    return {
        f"{name}_{side}": np.clip(columns[f"{column}_{side}"] / columns["duration"], 0, 1).astype(np.float32)
        for name, column in (("target", "target"), ("inside", inside))
        for side in ("start", "end")
    }


def explicit_stream(layout: StoreLayout, source: str, pseudo_labels_dir: str | None, batch_size: int, seed: int, plan: EpochPlan, attend_to_partial: bool):
    """The explicit stage's shuffled batches of one epoch, trained on `source` labels. Row columns:
    features, mask, words, words_valid (as `implicit_stream`), target_start, target_end, inside_start,
    inside_end (B,) f32 (`explicit_targets`), sample_key (B,) int64. The last batch of a window is
    completed with other samples of the window, and windows make a multiple of W batches: every sample at
    least once."""

    def make_batches(shards, count: int, window_seed: list[int]):
        window = Window(layout, shards, "train", keep=labelled_mask(source), extra=explicit_labels(layout, source, pseudo_labels_dir))
        targets = explicit_targets(window.columns, source, attend_to_partial)
        rng = np.random.default_rng([seed, *window_seed])
        order = rng.permutation(window.size)
        short = count * batch_size - window.size
        if short < 0:
            raise StoreError(f"window of shards {list(shards)} holds {window.size} labelled samples, more than the {count} planned batches of {batch_size}")
        order = np.concatenate([order, rng.choice(window.size, short, replace=short > window.size)])
        for positions in np.sort(order.reshape(count, batch_size), axis=1):
            yield {**window.gather(positions), **{name: values[positions] for name, values in targets.items()}, "sample_key": window.columns["sample_key"][positions]}

    return _stream(plan, make_batches, layout)


def labelled_mask(source: str):
    """Which samples of a shard have a label of `source` (pseudo-labels and mixed: the samples with a partial
    label, full ones included, the ones the pseudo-label stage labels; an unlabelled sample trains nothing)."""
    column = {"gt": "gt_start", "partial": "partial_start", "pseudo": "partial_start", "mixed": "partial_start"}[source]

    def keep(samples: pa.Table) -> np.ndarray:
        return pc.is_valid(samples.column(column)).to_numpy(zero_copy_only=False)

    return keep


def labelled_counts(store: FeatureStore, source: str) -> np.ndarray:
    """Per shard, the training samples with a label of `source` (read from the samples tables' label columns)."""
    keep = labelled_mask(source)
    counts = np.zeros(len(store.shards), np.int64)
    for index, shard in enumerate(store.shards):
        if shard["splits"].get("train"):
            samples = store.shard_samples(index, ["split", "partial_start", "gt_start"])
            counts[index] = int((keep(samples) & pc.equal(samples.column("split"), "train").to_numpy(zero_copy_only=False)).sum())
    return counts


# ----------------------------------------------------------------------------------------------------------
# Inference batches
# ----------------------------------------------------------------------------------------------------------


def validation_videos(video_ids, fraction: float, seed: int) -> np.ndarray:
    """Which samples belong to the validation part of the training set: whole videos, picked by a seeded
    hash of their id, so every task and every trial picks the same ones without talking to each other."""
    import hashlib

    def draw(video_id: str) -> float:
        digest = hashlib.blake2b(f"{seed}:{video_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64

    return np.array([draw(str(v)) < fraction for v in video_ids], bool)


def inference_dataset(layout: StoreLayout, split: str, *, partial_only: bool = False, validation: dict | None = None, shards=None, columns=None):
    """The samples of `split` as Ray Data rows, one per sample, read shard by shard (one task per shard,
    blocks of at most `INFERENCE_ROWS`). Columns: sample_id, video_id, query, partial_kind (strings), shard, sample_key,
    duration, partial_start, partial_end, gt_start, gt_end (float64, NaN when unknown), features
    (T, Dv) f16, mask (T,), words (M, Dq) f16, words_valid (M,).

    `partial_only`: only samples with a partial label (the pseudo-label stage). `validation`
    ({"fraction", "seed"}): only the validation videos' samples with ground truth (a search's score).
    `columns`: only these (chosen inside the read task: a `select_columns` would be a task of its own, asking
    for a whole CPU)."""
    import ray

    from cu_scale.stages.resources import READ_TASK_CPUS

    def keep(samples: pa.Table) -> np.ndarray:
        chosen = has_partial_label(samples) if partial_only else np.ones(samples.num_rows, bool)
        if validation:
            video_ids = samples.column("video_id").to_numpy(zero_copy_only=False)
            chosen &= validation_videos(video_ids, validation["fraction"], validation["seed"])
            chosen &= pc.is_valid(samples.column("gt_start")).to_numpy(zero_copy_only=False)
        return chosen

    def shard_rows(item: dict):
        for index in item["shard"]:
            window = Window(layout, [int(index)], split, keep=keep)
            for start in range(0, window.size, INFERENCE_ROWS):
                positions = np.arange(start, min(start + INFERENCE_ROWS, window.size))
                rows = {name: window.columns[name][positions] for name in ("sample_id", "video_id", "query", "partial_kind", "shard", "sample_key", "duration")}
                for name in ("partial_start", "partial_end", "gt_start", "gt_end"):
                    rows[name] = window.columns[name][positions].astype(np.float64)  # None (unknown) → NaN
                rows.update(window.gather(positions))
                yield rows if columns is None else {name: rows[name] for name in columns}

    indices = list(range(len(layout.shards))) if shards is None else list(shards)
    dataset = ray.data.from_items([{"shard": i} for i in indices], override_num_blocks=max(1, len(indices)))
    return quiet(dataset.map_batches(shard_rows, batch_size=1, num_cpus=READ_TASK_CPUS, memory=layout.task_memory([[i] for i in indices])))


def read_examples(layout: StoreLayout, sample_ids: list[str]) -> dict[str, np.ndarray]:
    """A few samples, read here (no Ray), with the columns of `inference_dataset`; store order, unknown ids left out."""
    wanted = pa.array(list(sample_ids), pa.string())
    parts = []
    for index, shard in enumerate(layout.shards):
        ids = read_shard(layout.path, shard, "samples").column("sample_id")
        if pc.any(pc.is_in(ids, value_set=wanted)).as_py():
            window = Window(layout, [index], None, keep=lambda samples: pc.is_in(samples.column("sample_id"), value_set=wanted).to_numpy(zero_copy_only=False))
            parts.append({**window.columns, **window.gather(np.arange(window.size))})
    if not parts:
        raise StoreError(f"{layout.path}: none of the samples {list(sample_ids)[:3]}... is in the store")
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
