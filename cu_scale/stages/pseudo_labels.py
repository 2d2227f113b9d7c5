"""The `pseudo-label` stage: the trained event detector, run once over the training set (paper §II-C).

Ray Data batch inference: read tasks stream the training samples that have a partial label shard by shard,
with their padded features and the word features the encode stage stored (`cu_scale.stages.streams.inference_dataset`);
an actor pool (GPU when present, sized beside the readers, `cu_scale.stages.resources.actor_pool`), each actor
holding the implicit model from the checkpoint, runs the detector at every sample's own anchor (the centre
of its partial label). The driver writes the results as they arrive, in store order, one file per store
shard: ``RUN_DIR/pseudo_labels/part-NNNNN.parquet`` (sample_id, pseudo_start, pseudo_end in seconds, plus
the labels they came from and the duration), co-partitioned with the store so that the explicit stage's
windows read them shard by shard. The directory is written as ``pseudo_labels.partial`` and renamed when
complete, and reads as one table with ``pyarrow.parquet.read_table``.

When ground truth is known, the pseudo-labels are scored (R@0.3/0.5/0.7, mIoU) beside two baselines in
the same table: the partial label as is, and the partial label widened to the training set's mean moment
length around its centre, clipped to the video. Scoring reads the files twice (the mean length first), a
shard at a time. `pseudo_label_shape` says how the events compare with the moments (lengths, and how far
their centres sit from the partial label), and `pseudo_label_warning` says in words when the pseudo-labels
lose to the widened partial label: then the explicit stage would learn better from doing nothing.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cu_scale.evaluation.metrics import IoUTally, temporal_iou
from cu_scale.storage import Location, locate, parquet_writer, publish, read_table, staging_for

PSEUDO_LABELS_DIR = "pseudo_labels"
OUTPUT_COLUMNS = ("sample_id", "pseudo_start", "pseudo_end", "partial_start", "partial_end", "gt_start", "gt_end", "duration", "partial_kind")


class PseudoLabeler:
    """A Ray Data actor: the implicit model; one batch of inference rows in, their pseudo-labels out."""

    def __init__(self, checkpoint_dir: str, threads: int, run: str):
        import torch

        from cu_scale.stages.implicit import load_implicit_model
        from cu_scale.stages.monitoring import PSEUDO_LABELLED_SAMPLES, Progress

        torch.set_num_threads(threads)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_implicit_model(checkpoint_dir).to(self.device)
        self.progress = Progress(PSEUDO_LABELLED_SAMPLES, "training samples pseudo-labelled", run=run)

    def __call__(self, batch: dict) -> dict:
        torch = self.torch
        duration = batch["duration"]
        anchor = (batch["partial_start"] + batch["partial_end"]) / 2 / duration
        with torch.inference_mode():
            out = self.model(
                torch.as_tensor(batch["features"], device=self.device).float(),
                torch.as_tensor(batch["mask"], device=self.device),
                torch.as_tensor(batch["words"], device=self.device).float(),
                torch.as_tensor(batch["words_valid"], device=self.device),
                torch.as_tensor(anchor, device=self.device).float(),
            )
        self.progress.add(len(duration))
        keep = {name: batch[name] for name in OUTPUT_COLUMNS if name in batch}
        return {**keep, "shard": batch["shard"], "pseudo_start": out.start.double().cpu().numpy() * duration, "pseudo_end": out.end.double().cpu().numpy() * duration}


class ShardFiles:
    """Writes rows that arrive in store order into one Parquet file per store shard, one shard open at a time."""

    def __init__(self, directory: Location, shard_names: list[str], columns: tuple[str, ...]):
        self.directory, self.names, self.columns = directory, shard_names, columns
        self.writer, self.current, self.rows = None, None, 0

    def add(self, batch: dict) -> None:
        shards = np.asarray(batch["shard"])
        for rows in np.split(np.arange(len(shards)), np.flatnonzero(np.diff(shards)) + 1):
            if shards[rows[0]] != self.current:
                self.close()
                self.current = int(shards[rows[0]])
            table = pa.table({name: batch[name][rows] for name in self.columns})
            if self.writer is None:
                self.writer = parquet_writer(self.directory / self.names[self.current], table.schema)
            self.writer.write_table(table)
            self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


def pseudo_label(store_path: str | os.PathLike, checkpoint_dir: str, out_dir: str | os.PathLike, encode, heartbeat=None) -> dict:
    """Write ``OUT_DIR/pseudo_labels/``; returns {"rows": n, "metrics": table or None}. `encode` is the run's
    `EncodeConfig`: the store's word features must be that encoder's."""
    import ray

    from cu_scale.stages.encode import check_encoder
    from cu_scale.stages.resources import READ_TASK_CPUS, actor_pool
    from cu_scale.data.store import FeatureStore
    from cu_scale.stages.streams import INFERENCE_ROWS, StoreLayout, inference_dataset

    store = FeatureStore(store_path)
    layout = StoreLayout.of(store, check_encoder(store, encode))
    out = locate(out_dir)
    pool = actor_pool(encode.actors, gpu=encode.device, readers=READ_TASK_CPUS)
    labelled = inference_dataset(layout, "train", partial_only=True).map_batches(
        PseudoLabeler,
        fn_constructor_kwargs={"checkpoint_dir": locate(checkpoint_dir).uri, "threads": pool.threads, "run": out.name},
        batch_size=INFERENCE_ROWS,
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_gpus=pool.gpus_per_actor,
        num_cpus=pool.cpus_per_actor,
    )
    labelled.context.execution_options.preserve_order = True  # store order: one shard's file at a time
    final = out / PSEUDO_LABELS_DIR
    staging = staging_for(final)
    files = ShardFiles(staging, [pathlib.PurePosixPath(s["samples_file"]).name for s in store.shards], OUTPUT_COLUMNS)
    for batch in labelled.iter_batches(batch_size=None, batch_format="numpy"):
        files.add(batch)
        if heartbeat is not None:
            heartbeat.beat.remote(len(batch["shard"]))
    files.close()
    publish(staging, final)
    return {"rows": files.rows, "metrics": score_pseudo_labels(final), "shape": pseudo_label_shape(final)}


def _scored_shards(directory: str | os.PathLike):
    """The pseudo-label files' columns (float seconds; partial_kind as text), one shard at a time, on the
    samples with ground truth. Files written before label kinds were kept read as kind "unknown"."""
    for part in locate(directory).glob("part-*.parquet"):
        with part.open_input() as handle:
            names = pq.read_schema(handle).names
        table = read_table(part, columns=[c for c in OUTPUT_COLUMNS[1:] if c in names])
        columns = {name: table.column(name).to_numpy(zero_copy_only=False).astype(float) for name in table.column_names if name != "partial_kind"}
        kinds = table.column("partial_kind").to_numpy(zero_copy_only=False) if "partial_kind" in table.column_names else np.full(table.num_rows, "unknown")
        known = ~np.isnan(columns["gt_start"])
        yield {**{name: values[known] for name, values in columns.items()}, "partial_kind": kinds[known]}


def score_pseudo_labels(directory: str | os.PathLike) -> dict[str, dict[str, float]] | None:
    """Metrics of the pseudo-labels in `directory` and of the two baselines, on the samples with ground truth;
    with samples of several label kinds (mixed supervision), the pseudo-labels' metrics per kind too."""
    count, total_length = 0, 0.0
    for c in _scored_shards(directory):
        count, total_length = count + len(c["gt_start"]), total_length + float((c["gt_end"] - c["gt_start"]).sum())
    if not count:
        return None
    mean_length = total_length / count
    tallies = {"pseudo": IoUTally(), "as is": IoUTally(), "widened": IoUTally()}
    by_kind: dict[str, IoUTally] = {}
    for c in _scored_shards(directory):
        gt = (c["gt_start"], c["gt_end"])
        centre = (c["partial_start"] + c["partial_end"]) / 2
        widened = (np.clip(centre - mean_length / 2, 0, c["duration"]), np.clip(centre + mean_length / 2, 0, c["duration"]))
        pseudo = temporal_iou(c["pseudo_start"], c["pseudo_end"], *gt)
        tallies["pseudo"].add(pseudo)
        tallies["as is"].add(temporal_iou(c["partial_start"], c["partial_end"], *gt))
        tallies["widened"].add(temporal_iou(*widened, *gt))
        for kind in np.unique(c["partial_kind"]):
            by_kind.setdefault(str(kind), IoUTally()).add(pseudo[c["partial_kind"] == kind])
    kinds = {f"  of {kind} labels ({tally.count:,})": tally.metrics() for kind, tally in sorted(by_kind.items())} if len(by_kind) > 1 else {}
    return {
        "pseudo-labels": tallies["pseudo"].metrics(),
        **kinds,
        "partial label as is": tallies["as is"].metrics(),
        f"partial widened to mean length {mean_length:.1f} s": tallies["widened"].metrics(),
    }


class LengthHistogram:
    """Counts of lengths in seconds on a log scale (1 % wide bins from 10 ms to 10⁵ s): percentiles of any
    number of samples in fixed memory, to within one bin."""

    EDGES = np.logspace(-2, 5, 1621)  # 1620 bins, each 1 % wider than the last

    def __init__(self):
        self.counts = np.zeros(len(self.EDGES) + 1, np.int64)

    def add(self, lengths: np.ndarray) -> None:
        self.counts += np.bincount(np.searchsorted(self.EDGES, lengths), minlength=len(self.counts))

    def percentile(self, q: float) -> float:
        """The q-th percentile (0–100): the geometric centre of the bin it falls in (0 below 10 ms)."""
        rank = np.searchsorted(np.cumsum(self.counts), q / 100 * self.counts.sum(), side="left")
        if rank == 0:
            return 0.0
        low, high = self.EDGES[max(rank - 1, 0)], self.EDGES[min(rank, len(self.EDGES) - 1)]
        return float(np.sqrt(low * high))


def pseudo_label_shape(directory: str | os.PathLike) -> dict[str, float] | None:
    """How the pseudo-labels' events compare with the true moments, on the samples with ground truth:
    median and 5–95 % lengths of both (seconds, `LengthHistogram`), the mean distance of each centre from
    the partial label's centre (the anchor the detector starts from), and between the two centres. A shard
    at a time, in fixed memory."""
    predicted, true = LengthHistogram(), LengthHistogram()
    count, predicted_offset, true_offset, apart = 0, 0.0, 0.0, 0.0
    for c in _scored_shards(directory):
        anchor = (c["partial_start"] + c["partial_end"]) / 2
        centre, true_centre = (c["pseudo_start"] + c["pseudo_end"]) / 2, (c["gt_start"] + c["gt_end"]) / 2
        predicted.add(c["pseudo_end"] - c["pseudo_start"])
        true.add(c["gt_end"] - c["gt_start"])
        count += len(anchor)
        predicted_offset += float(np.abs(centre - anchor).sum())
        true_offset += float(np.abs(true_centre - anchor).sum())
        apart += float(np.abs(centre - true_centre).sum())
    if not count:
        return None
    return {
        "samples": count,
        "median_length": predicted.percentile(50), "median_true_length": true.percentile(50),
        "length_p5": predicted.percentile(5), "length_p95": predicted.percentile(95),
        "true_length_p5": true.percentile(5), "true_length_p95": true.percentile(95),
        "centre_from_anchor": predicted_offset / count, "true_centre_from_anchor": true_offset / count, "centre_error": apart / count,
    }


def describe_shape(shape: dict[str, float]) -> str:
    """Two lines for a person: the events' lengths and centres beside the moments'."""
    return (
        f"event lengths: median {shape['median_length']:.1f} s (5-95 % {shape['length_p5']:.1f}-{shape['length_p95']:.1f} s),"
        f" true moments {shape['median_true_length']:.1f} s ({shape['true_length_p5']:.1f}-{shape['true_length_p95']:.1f} s)\n"
        f"event centres: {shape['centre_from_anchor']:.1f} s from the partial label on average (true centres {shape['true_centre_from_anchor']:.1f} s),"
        f" {shape['centre_error']:.1f} s from the true centre"
    )


def pseudo_label_warning(metrics: dict[str, dict[str, float]] | None) -> str | None:
    """A sentence when the pseudo-labels lose to the partial label widened to the mean moment length on mIoU
    or R@0.5 (`score_pseudo_labels`' table); None when they win or nothing was scored."""
    if not metrics:
        return None
    pseudo = metrics["pseudo-labels"]
    name, widened = next((n, m) for n, m in metrics.items() if n.startswith("partial widened"))
    lost = [key for key in ("mIoU", "R@0.5") if pseudo[key] < widened[key]]
    if not lost:
        return None
    said = " and ".join(f"{key} {pseudo[key]:.2f} against {widened[key]:.2f}" for key in lost)
    return (
        f"WARNING: the pseudo-labels lose to the {name} ({said}): an explicit model trained on them is likely to do"
        " worse than one trained on the partial labels widened by hand. Look at the event lengths above; see the README's"
        " section on long videos for the settings that matter."
    )
