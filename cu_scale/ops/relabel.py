"""One corpus at another annotation budget: a store whose partial labels are redrawn, sharing everything else.

The paper's Table III question (how long must an annotated clip be?) and the search over the clip
length r (`cu-scale tune`) need the same videos and queries with partial labels of several lengths.
Only the labels differ, so a relabelled store hard-links the source's video shards, query embeddings, word features
and query clusters (copies them where the file system cannot link; none depends on the labels) and
rewrites the samples tables alone, with labels drawn from ground truth by
`partial_labels.assign_partial_labels` inside the part of each moment that lies in the video:
r = 0 a single frame drawn uniformly, r > 0 a clip of r seconds. Samples without ground truth keep
their labels. The manifest records where the store came from and how its labels were drawn.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from cu_scale.stages.clustering import COUNTS_FILE
from cu_scale.data.partial_labels import PartialLabelSpec, assign_partial_labels
from cu_scale.data.records import Sample
from cu_scale.data.store import MANIFEST_FILE, REJECTS_FILE, SAMPLE_SCHEMA, FeatureStore, _sample_row
from cu_scale.storage import locate

SHARED_DIRECTORIES = ("videos", "embeddings", "words", "clusters")


def label_spec(clip_seconds: float, seed: int = 0) -> PartialLabelSpec:
    """r = 0: a single frame, uniform inside the moment; r > 0: a clip of r seconds."""
    if clip_seconds < 0:
        raise ValueError(f"clip length r must be ≥ 0 seconds, got {clip_seconds}")
    return PartialLabelSpec("clip", seed=seed, clip_seconds=clip_seconds) if clip_seconds > 0 else PartialLabelSpec("uniform", seed=seed)


def _link_tree(source: pathlib.Path, target: pathlib.Path) -> None:
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:  # another file system, or one without hard links
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


def _samples(table: pa.Table) -> list[Sample]:
    def span(start, end):
        return None if start is None or end is None else (start, end)

    return [
        Sample(row["sample_id"], row["video_id"], row["query"], row["split"], row["source"], gt=span(row["gt_start"], row["gt_end"]),
               partial=span(row["partial_start"], row["partial_end"]), partial_kind=row["partial_kind"])
        for row in table.to_pylist()
    ]


def relabel_store(source: str | os.PathLike, out: str | os.PathLike, spec: PartialLabelSpec) -> FeatureStore:
    """Write OUT: the store at SOURCE with every partial label redrawn by `spec` (see the module docstring)."""
    store = FeatureStore(source)
    if not (store.path.is_local and locate(out).is_local):
        raise ValueError(f"{store.path} → {out}: relabelling links the store's files on local disk; object storage is not supported here yet")
    out = pathlib.Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in SHARED_DIRECTORIES:
        if (store.path / name).is_dir():
            _link_tree(store.path / name, staging / name)
    # Which samples carry a partial label may change with the labels: the clusters' training counts are
    # made again, from this store's own samples, when a stage first needs them (`clustering.trainable_counts`).
    for counts in (staging / "clusters").glob(f"*/{COUNTS_FILE}"):
        counts.unlink()
    shutil.copy2(store.path / REJECTS_FILE, staging / REJECTS_FILE)
    (staging / "samples").mkdir()
    manifest = json.loads((store.path / MANIFEST_FILE).read_text())
    description = spec.describe()
    for shard in manifest["shards"]:
        videos = store.shard_videos(shard["index"], ["video_id", "duration"])
        durations = dict(zip(videos.column("video_id").to_pylist(), videos.column("duration").to_pylist()))
        original = _samples(store.shard_samples(shard["index"]))
        samples = [s if s.gt is None else relabelled for s, relabelled in zip(original, assign_partial_labels(original, spec, durations))]
        file = staging / shard["samples_file"]
        pq.write_table(pa.Table.from_pylist([_sample_row(s) for s in samples], schema=SAMPLE_SCHEMA), file)
        shard["samples_sha256"], shard["samples_bytes"] = locate(file).sha256(), file.stat().st_size
    manifest["partial_labels"] = {split: description for split in manifest["counts"]["splits"]}
    manifest["relabelled_from"] = store.path.path
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return FeatureStore(out)
