"""Turn annotations and features into a feature store: the `cu-scale prepare` stage.

One function per dataset reads its annotation files, decides each sample's partial label (a glance file
as given, or one sampled from ground truth), and hands videos to `build_store`, which fetches or simulates
each video's features one at a time and streams them into a `StoreWriter`. Only videos that some sample
refers to are written.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable, Protocol

import numpy as np
from tqdm import tqdm

from cu_scale.data.annotations import read_activitynet, read_charades_sta, read_charades_v1
from cu_scale.data.corpus import corpus_videos, read_corpus, read_durations
from cu_scale.data.demo import generate_demo_corpus
from cu_scale.data.features import open_features
from cu_scale.data.partial_labels import MIXED_SPLIT, LabelMix, PartialLabelSpec, assign_partial_labels, mix_label_kinds
from cu_scale.data.records import Sample, Video
from cu_scale.data.simulator import FeatureSimulator, SimulatorSettings, events_from_moments
from cu_scale.data.store import LabelPolicy, StoreWriter


class FeatureSource(Protocol):
    feature_dim: int

    def describe(self) -> str: ...

    def features_for(self, video: Video, samples: list[Sample]) -> np.ndarray | None: ...


class SimulatedFeatures:
    """Features rendered by the simulator, from the video's action intervals or (generic path) its moments."""

    def __init__(self, settings: SimulatorSettings, events_from: str):
        if events_from not in ("actions", "moments"):
            raise ValueError(f"events_from must be 'actions' or 'moments', got {events_from!r}")
        self.simulator = FeatureSimulator(settings)
        self.feature_dim = settings.feature_dim
        self.events_from = events_from

    def describe(self) -> str:
        return f"{self.simulator.describe()}, events from {self.events_from}"

    def features_for(self, video: Video, samples: list[Sample]) -> np.ndarray:
        if self.events_from == "moments":
            video = dataclasses.replace(video, events=events_from_moments(samples))
        return self.simulator.render(video)


class ImportedFeatures:
    """Features read from ``.npy`` files, an ``.h5`` file or a Parquet table (see `cu_scale.data.features`)."""

    def __init__(self, path: str | os.PathLike, max_steps: int, video_ids: list[str]):
        self.reader = open_features(path, max_steps)
        self.feature_dim = self._first_width(video_ids)

    def _first_width(self, video_ids: list[str]) -> int:
        for video_id in video_ids:
            features = self.reader.get(video_id)
            if features is not None and features.ndim == 2 and features.shape[0] > 0:
                return int(features.shape[1])
        raise ValueError(f"{self.reader.describe()} holds features for none of the {len(video_ids)} annotated videos")

    def describe(self) -> str:
        return self.reader.describe()

    def features_for(self, video: Video, samples: list[Sample]) -> np.ndarray | None:
        return self.reader.get(video.video_id)


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    """How a store is written; built from a `prepare:` section (cu_scale.config.PrepareConfig), which holds the defaults."""

    out: str
    max_steps: int
    shard_videos: int
    policy: LabelPolicy
    strict: bool
    overwrite: bool
    progress: bool


def build_store(
    options: StoreOptions,
    dataset: str,
    videos: dict[str, Video],
    samples: list[Sample],
    features: FeatureSource,
    partial_labels: dict[str, str],
    missing_video: Callable[[str], str] = lambda video_id: f"video {video_id} is not in the video annotations",
) -> dict:
    """Write `samples` and the videos they refer to; returns the manifest.

    Videos are written split by split (in the order splits first appear) so that a reader of one split
    touches few shards; samples whose video is unknown are rejected as ``missing_video``, with the reason
    `missing_video(video_id)`.
    """
    by_video: dict[str, list[Sample]] = {}
    for sample in samples:
        by_video.setdefault(sample.video_id, []).append(sample)
    split_order = {split: i for i, split in enumerate(dict.fromkeys(s.split for s in samples))}
    ordered = sorted(by_video, key=lambda v: (min(split_order[s.split] for s in by_video[v]), v))
    description = {
        "dataset": dataset,
        "features": features.describe(),
        "partial_labels": partial_labels,
    }
    with StoreWriter(
        options.out,
        features.feature_dim,
        options.max_steps,
        shard_videos=options.shard_videos,
        policy=options.policy,
        strict=options.strict,
        overwrite=options.overwrite,
        description=description,
    ) as writer:
        for video_id in tqdm(ordered, desc=f"prepare {dataset}", unit="video", disable=not options.progress):
            video = videos.get(video_id)
            if video is None:
                writer.reject_samples(by_video[video_id], "missing_video", missing_video(video_id))
                continue
            video_features = features.features_for(video, by_video[video_id])
            if video_features is None:
                writer.reject_samples(by_video[video_id], "missing_video", f"no features for video {video_id} in {features.describe()}")
                continue
            writer.add_video(video_id, video.duration, video_features, by_video[video_id], source=video.source)
    return writer.manifest


def _require(path: pathlib.Path) -> pathlib.Path:
    if not path.is_file():
        raise FileNotFoundError(f"expected annotation file {path} is missing")
    return path


def _label_samples(
    samples: list[Sample], from_glance: bool, spec: PartialLabelSpec, glance_source: str, videos: dict[str, Video]
) -> tuple[list[Sample], str]:
    if from_glance:
        return samples, f"glance labels from {glance_source}"
    durations = {video_id: video.duration for video_id, video in videos.items()}
    return assign_partial_labels(samples, spec, durations), spec.describe()


def _mixed(samples: list[Sample], labels: dict[str, str], mix: LabelMix) -> tuple[list[Sample], dict[str, str]]:
    """The samples after `mix` (none when both fractions are 0), and the label descriptions saying so."""
    if not (mix.full or mix.unlabelled):
        return samples, labels
    return mix_label_kinds(samples, mix), {split: f"{text}; mixed: {mix.describe()}" if split == MIXED_SPLIT else text for split, text in labels.items()}


def prepare_charades_sta(
    options: StoreOptions,
    annotations: str | os.PathLike,
    glance: bool,
    spec: PartialLabelSpec,
    mix: LabelMix,
    simulator: SimulatorSettings | None = None,
    features_path: str | None = None,
) -> dict:
    """Charades-STA from DIR/charades_sta_{train,test}.txt (or DIR/glance/...) and DIR/Charades_v1_*.csv."""
    root = pathlib.Path(annotations)
    videos: dict[str, Video] = {}
    for split in ("train", "test"):
        videos.update(read_charades_v1(_require(root / f"Charades_v1_{split}.csv")))
    samples, labels = [], {}
    for split in ("train", "test"):
        path = _require(root / "glance" / f"charades_sta_{split}.txt" if glance else root / f"charades_sta_{split}.txt")
        split_samples, labels[split] = _label_samples(read_charades_sta(path, split, glance=glance), glance, spec, str(path), videos)
        samples += split_samples
    samples, labels = _mixed(samples, labels, mix)
    source = _feature_source(simulator, features_path, options.max_steps, "actions", samples)
    return build_store(options, "charades-sta", videos, samples, source, labels)


ACTIVITYNET_SPLITS = ("train", "val_1", "val_2")


def prepare_activitynet(
    options: StoreOptions,
    annotations: str | os.PathLike,
    glance: bool,
    spec: PartialLabelSpec,
    mix: LabelMix,
    simulator: SimulatorSettings | None = None,
    features_path: str | None = None,
    splits: tuple[str, ...] = ACTIVITYNET_SPLITS,
) -> dict:
    """ActivityNet Captions from DIR/{split}.json; with `glance`, DIR/glance/{split}.json where it exists.

    The ViGA release has glance files for val_1 and val_2 only: a split without one gets partial labels
    sampled by `spec`, and the manifest says which split got which.
    """
    root = pathlib.Path(annotations)
    videos: dict[str, Video] = {}
    samples, labels = [], {}
    for split in splits:
        glance_path = root / "glance" / f"{split}.json"
        use_glance = glance and glance_path.is_file()
        path = glance_path if use_glance else _require(root / f"{split}.json")
        split_samples, split_videos = read_activitynet(path, split, glance=use_glance)
        for video_id, video in split_videos.items():
            videos.setdefault(video_id, video)
        split_samples, labels[split] = _label_samples(split_samples, use_glance, spec, str(path), split_videos)
        samples += split_samples
    samples, labels = _mixed(samples, labels, mix)
    source = _feature_source(simulator, features_path, options.max_steps, "moments", samples)
    return build_store(options, "activitynet-captions", videos, samples, source, labels)


def prepare_corpus(
    options: StoreOptions,
    annotations: str | os.PathLike,
    durations_path: str | None,
    spec: PartialLabelSpec | None,
    mix: LabelMix,
    simulator: SimulatorSettings | None = None,
    features_path: str | None = None,
) -> dict:
    """A user's corpus: an annotation table in the format of `cu_scale.data.corpus`, its features, durations
    from the table or from `durations_path` (which wins where both give one).

    The labels are the table's own; with `spec`, every sample that has a full moment gets a partial label
    sampled from it instead (a fully labelled corpus turned partial), and samples without one keep theirs.
    """
    samples, durations, sources = read_corpus(annotations)
    if durations_path is not None:
        table, table_sources = read_durations(durations_path)
        durations, sources = {**durations, **table}, {**sources, **table_sources}
    videos = corpus_videos(samples, durations, sources)
    labels = {split: "as given in the annotation table" for split in dict.fromkeys(s.split for s in samples)}
    if spec is not None:
        with_gt = [i for i, s in enumerate(samples) if s.gt is not None]
        sampled = assign_partial_labels([samples[i] for i in with_gt], spec, durations)
        samples = list(samples)
        for i, sample in zip(with_gt, sampled):
            samples[i] = sample
        labels = {split: f"{spec.describe()} where the table gives a full moment, else as given" for split in labels}
    samples, labels = _mixed(samples, labels, mix)
    source = _feature_source(simulator, features_path, options.max_steps, "moments", samples)
    def no_duration(video_id: str) -> str:
        return f"no duration for video {video_id}: give {annotations} a duration column" + (f" or add it to {durations_path}" if durations_path else " or a durations table")

    return build_store(options, "corpus", videos, samples, source, labels, missing_video=no_duration)


def prepare_demo(options: StoreOptions, num_videos: int, seed: int, simulator: SimulatorSettings, world: str, mix: LabelMix) -> dict:
    """The demo world `world` (`cu_scale.data.demo`) with uniformly sampled single-frame labels (mixed by `mix`), simulated features."""
    videos, samples = generate_demo_corpus(num_videos, seed, world=world)
    spec = PartialLabelSpec("uniform", seed=seed)
    samples = assign_partial_labels(samples, spec, {v.video_id: v.duration for v in videos.values()})
    samples, labels = _mixed(samples, {split: spec.describe() for split in ("train", "test")}, mix)
    return build_store(options, "demo" if world == "short" else f"demo-{world}", videos, samples, SimulatedFeatures(simulator, "actions"), labels)


def _feature_source(
    simulator: SimulatorSettings | None, features_path: str | None, max_steps: int, events_from: str, samples: list[Sample]
) -> FeatureSource:
    if (simulator is None) == (features_path is None):
        raise ValueError("give exactly one feature source: --simulate or --features PATH")
    if simulator is not None:
        return SimulatedFeatures(dataclasses.replace(simulator, max_steps=max_steps), events_from)
    return ImportedFeatures(features_path, max_steps, list(dict.fromkeys(s.video_id for s in samples)))
