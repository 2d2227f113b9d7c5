"""The run configuration: one YAML file, loaded and validated once, here, into frozen dataclasses.

Every later stage receives the dataclass of its section, never the YAML. A bad value is reported with
the file and the dotted field (``configs/x.yaml: cluster.k: must be ≥ 2, got 1``). Relative paths are
taken from the directory the command runs in.

    store: stores/charades          # the feature store every stage reads
    encode:  {model: null, actors: 1, batch_size: 256, max_tokens: 32, device: auto}
    cluster: {k: 256, memberships: 2, iterations: 20, max_points_per_centroid: 256, seed: 0, split: train}
    batches: {batch_size: 64, clusters_per_batch: 8, seed: 0}
    run_dir: runs/charades                        # checkpoints, pseudo-labels, predictions, report
    prepare: {dataset: charades-sta, annotations: data/charades_sta, glance: true, ...}
    implicit: {epochs: 10, learning_rate: 0.0005, workers: 1, zero_stage: 1, lam: 1.0, tau: 0.1, ...}
    explicit: {models: [cu_scale.method.grounding_models:SpanDETR], label_sources: [pseudo], epochs: 10, ...}

The settings of the method (`cu_scale.method.losses.LossConfig`, `cu_scale.method.implicit_model.ImplicitModelConfig`)
have no defaults of their own: `ImplicitConfig.losses()` and `.model()` build them, so each setting has one
default, here. The demo's settings are the file `demo.yaml` beside this module (`demo_config`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import typing

import yaml

from cu_scale.data.demo import WORLDS
from cu_scale.data.partial_labels import METHODS as PARTIAL_METHODS
from cu_scale.data.store import OVERSHOOT_POLICIES, LabelPolicy


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the file and the field."""


# PLACEMENT of a training stage's workers (Ray Train's placement strategy): "pack" fills a node before the
# next (collectives stay inside a node: what multi-GPU nodes want); "spread" puts them on different nodes
# where it can (a lost node then takes one worker's share, and the group restarts from its checkpoint with
# the others). Where the workers run never changes what they compute, so no stage marker records it.
PLACEMENTS = ("pack", "spread")


def _at_least(section, name: str, minimum: int):
    value = getattr(section, name)
    if value < minimum:
        raise ConfigError(f"{name}: must be ≥ {minimum}, got {value}")


def _one_of(section, name: str, choices: tuple):
    if getattr(section, name) not in choices:
        raise ConfigError(f"{name}: must be one of {choices}, got {getattr(section, name)!r}")


DATASETS = ("demo", "charades-sta", "activitynet", "corpus")
# T, the most feature steps a video keeps, when `prepare.steps` is not given: about two steps a second
# on Charades-STA's 30-second videos, one on the demo's, one every second or so on ActivityNet's minutes.
# A user's corpus gets ActivityNet's: its lengths are unknown, and too few steps for long videos with short
# moments is the failure that costs most (a video shorter than T keeps its own steps).
DEFAULT_STEPS = {"demo": 32, "charades-sta": 64, "activitynet": 128, "corpus": 128}
# The demo's settings ship inside the package (configs/demo.yaml in a checkout is a link to it), so that
# `cu-scale demo` works from an installed wheel too.
DEMO_CONFIG = pathlib.Path(__file__).resolve().parent / "demo.yaml"
# What the explicit stage trains from: the pseudo-labels; the ground truth (the upper bound); the raw partial
# labels (the naive baseline); or "mixed": a sample's full moment where its label kind is full, its
# pseudo-label elsewhere (mixed supervision; never the ground truth kept beside a partial label).
LABEL_SOURCES = ("pseudo", "gt", "partial", "mixed")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """How the store is built: a config's `prepare:` section, and what `cu-scale prepare` builds from its options."""

    dataset: str = "demo"  # demo (built in, no files), charades-sta, activitynet, or corpus (a user's own)
    annotations: str | None = None  # the dataset's annotation directory (not for demo); for corpus, the annotation table file
    glance: bool = False  # partial labels from the dataset's glance files; else sampled from ground truth
    partial: str = "uniform"  # sampled labels: uniform or gaussian single frame, or a clip of clip_seconds
    clip_seconds: float = 0.0  # r, the annotation clip length, for partial: clip
    partial_seed: int = 0
    features: str | None = None  # a directory of VIDEO.npy, one .h5 file or a .parquet table; None: simulate features
    durations: str | None = None  # corpus only: a table of video_id, duration (else the annotation table's duration column)
    sample_labels: bool = False  # corpus only: replace the table's labels by ones sampled from its full moments (`partial`)
    full_fraction: float = 0.0  # mixed supervision: this fraction of the training samples with ground truth train from their full moment
    unlabelled_fraction: float = 0.0  # ... and this fraction from nothing (seeded by partial_seed); other splits keep their labels
    feature_dim: int = 1024  # Dv of simulated features (I3D's)
    noise: float | None = None  # simulator noise; None: the calibrated default (cu_scale.data.simulator)
    steps: int | None = None  # T, max feature steps per video; None: DEFAULT_STEPS of the dataset
    shard_videos: int = 256
    overshoot: str = LabelPolicy.overshoot  # a label partly outside the video: "clip" it (and count it) or "reject" the sample
    overshoot_tolerance: float = LabelPolicy.tolerance_seconds  # seconds past the end after which a label is outside the video (LabelPolicy says why)
    strict: bool = False  # any reject stops the prepare stage with the first reason
    videos: int = 240  # demo only: how many videos
    world: str = "short"  # demo only: "short" (15–45 s videos) or "long" (2–7 minutes, short moments; cu_scale.data.demo)
    seed: int = 0  # simulator (and demo world) seed
    world_seed: int = 0
    splits: tuple[str, ...] = ("train", "val_1", "val_2")  # activitynet only

    def __post_init__(self):
        _one_of(self, "dataset", DATASETS)
        _one_of(self, "partial", PARTIAL_METHODS)
        _one_of(self, "world", tuple(WORLDS))
        _one_of(self, "overshoot", OVERSHOOT_POLICIES)
        if self.dataset != "demo" and not self.annotations:
            raise ConfigError(f"annotations: the {self.dataset} annotation directory is required")
        if self.partial == "clip" and self.clip_seconds <= 0:
            raise ConfigError(f"clip_seconds: partial: clip needs clip_seconds > 0, got {self.clip_seconds}")
        for name in ("feature_dim", "shard_videos", "videos"):
            _at_least(self, name, 1)
        if self.steps is not None:
            _at_least(self, "steps", 1)
        for name in ("full_fraction", "unlabelled_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}: must be a fraction between 0 and 1, got {getattr(self, name)}")
        if self.full_fraction + self.unlabelled_fraction > 1:
            raise ConfigError(f"full_fraction + unlabelled_fraction: must be at most 1, got {self.full_fraction + self.unlabelled_fraction}")
        if self.dataset != "corpus" and (self.durations or self.sample_labels):
            raise ConfigError(f"durations, sample_labels: only a corpus reads them, not {self.dataset}")
        if self.glance and self.dataset not in ("charades-sta", "activitynet"):
            raise ConfigError(f"glance: only charades-sta and activitynet have glance files, not {self.dataset} (a corpus gives its labels in its table)")

    @property
    def max_steps(self) -> int:
        return DEFAULT_STEPS[self.dataset] if self.steps is None else self.steps


@dataclasses.dataclass(frozen=True)
class EncodeConfig:
    model: str | None = None  # a local Hugging Face model directory; None: the bundled all-MiniLM-L6-v2
    actors: int = 1  # encoder actors in the Ray Data pool (each holds one model)
    batch_size: int = 256  # queries per forward pass
    max_tokens: int = 32
    device: str = "auto"  # auto: a GPU when Ray has one, else cpu

    def __post_init__(self):
        _at_least(self, "actors", 1)
        _at_least(self, "batch_size", 1)
        _at_least(self, "max_tokens", 2)
        _one_of(self, "device", ("auto", "cpu", "cuda"))


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    k: int = 256  # K, the number of query clusters (paper §II-B)
    memberships: int = 2  # m: each sample belongs to its m nearest centroids ("the same sample could appear in different clusters")
    iterations: int = 20
    max_points_per_centroid: int = 256  # k-means trains on at most K × this many queries, then assigns all
    seed: int = 0
    split: str = "train"  # the queries to cluster: the training set, never the test split

    def __post_init__(self):
        _at_least(self, "k", 2)
        _at_least(self, "memberships", 1)
        if self.memberships > self.k:
            raise ConfigError(f"memberships: must be ≤ k ({self.k}), got {self.memberships}")
        _at_least(self, "iterations", 1)
        _at_least(self, "max_points_per_centroid", 1)


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    batch_size: int = 64  # B, the global batch (all workers together)
    clusters_per_batch: int = 8  # N: a batch holds N clusters × B/N samples
    seed: int = 0
    # G: store shards per window of the training streams (cu_scale.stages.streams); 0: the fewest shards that hold
    # 16·K·(B/N) training samples, about 3 % repeated samples per epoch. A window is held in one Ray task.
    window_shards: int = 0

    def __post_init__(self):
        _at_least(self, "batch_size", 1)
        _at_least(self, "clusters_per_batch", 1)
        _at_least(self, "window_shards", 0)
        if self.batch_size % self.clusters_per_batch:
            raise ConfigError(
                f"batch_size: B={self.batch_size} is not divisible by clusters_per_batch N={self.clusters_per_batch};"
                f" a batch holds N clusters × B/N samples (try B={self.batch_size - self.batch_size % self.clusters_per_batch})"
            )

    def per_worker(self, workers: int) -> "BatchConfig":
        """Each of W data-parallel workers' share of the global batch: N/W clusters × B/N samples.

        B and N describe the *global* batch, so one worker and several train the same way: the same
        number of optimizer steps per epoch, and (with `implicit.gather_across_workers`) the same B
        samples in every contrast.
        """
        if self.clusters_per_batch % workers:
            raise ConfigError(
                f"clusters_per_batch: N={self.clusters_per_batch} clusters of the global batch cannot be split evenly over {workers} workers"
            )
        return dataclasses.replace(self, batch_size=self.batch_size // workers, clusters_per_batch=self.clusters_per_batch // workers)


@dataclasses.dataclass(frozen=True)
class ImplicitConfig:
    """Training of the implicit stage (paper §II-D) and its losses (Eq. 3–8)."""

    epochs: int = 10
    learning_rate: float = 5e-4
    lr_schedule: str = "cosine"  # "cosine" (5% linear warm-up, then cosine to 0) or "constant"
    weight_decay: float = 0.01
    hidden_dim: int = 256
    heads: int = 4
    dropout: float = 0.1
    contrast_features: str = "unimodal"  # what Eq. 2 pools: "unimodal" or "fused" (cu_scale.method.implicit_model explains)
    # The event's scale (cu_scale.method.implicit_model gives the diagnosis and the runs). Defaults measured on the
    # demo's long world and on simulated Charades-STA with glance labels (pseudo-label mIoU, median event):
    #   the paper's reading (κ 30 per video, whole video, λ 1, pooled L_raun):  long world 32.62, 4.7 s;  Charades-STA 70.99
    #   κ 1 per feature step, context ρ = 1, λ = 0.5 (pooled L_raun):          long world 45.71, 12.6 s; Charades-STA 72.96
    #   ... and L_raun between centred steps (defaults; cu_scale.method.losses.raun_steps_loss): ActivityNet events
    #   no longer balloon (3.30× the moments before, 1.64× now), Charades-STA 73.95 in the plain loop
    # ("video", 30.0, None, lam 1.0 and raun_similarity "pooled" give the paper's reading back.)
    steepness_unit: str = "step"  # the plateau mask's κ per feature step ("step") or per normalised time ("video")
    initial_steepness: float = 1.0  # κ at start, in 1/steepness_unit: a mask edge (10 to 90 %) spans about 4.4/κ units
    initial_width: float | None = None  # the event width ℓ at start, a fraction of the video; None: about 0.5
    context_widths: float | None = 1.0  # Eq. 2's background and video within this many event widths of the event; None: the whole video
    offset_unit: str = "video"  # δ a fraction of the video, or of the event's width ("width": the anchor stays inside; long world 43.74 against 45.71)
    detector_similarity: bool = False  # Φ also reads each step's similarity to the query (cu_scale.method.implicit_model; long world 48.18 against 45.71)
    raun_warmup_epochs: int = 0  # L_raun joins after this many epochs (cu_scale.method.implicit_model: what ballooned events on ActivityNet)
    workers: int = 1
    zero_stage: int = 1
    max_failures: int = 2  # restarts of the worker group from the latest checkpoint
    placement: str = "pack"  # PLACEMENT: how the workers spread over the nodes
    # losses (Eq. 3–8)
    # The paper gives no margins. While a hinge is active its gradient does not depend on the margin, so the
    # margins only matter once most samples satisfy them; then β sets how hard L_raun pushes the event to
    # cover all of its content. With β = 0.2 predicted events stayed 20% short of the true moments on
    # simulated Charades-STA (mean 6.6 s against 8.2 s, pseudo-label mIoU 60.5); β = 0.5 gave 9.4 s and 65.4.
    alpha: float = 0.2
    beta: float = 0.5
    tau: float = 0.1
    # λ (the paper gives no value) sets how long the events come out: the inter-sample contrasts favour
    # short, pure events and L_raun events that stand out from their surroundings. Pseudo-label mIoU / R@0.5
    # and the median event against the true median (benchmarks/implicit_plain_loop.py, L_raun between steps):
    #   long world (moments 4 % of the video)   λ 0.25: 51.32 / 49.70, 0.98×   λ 0.5: 47.10 / 41.51, 0.75×
    #   ActivityNet (moments 18 %, overlapping) λ 0.5: 46.94 / 43.47, 1.64×    λ 1.0: 46.85 / 42.78, 1.45×   λ 2.0: 1.23×, R@0.5 below the widened label's
    # So shorter moments want a smaller λ; `cu-scale tune` searches it on a validation part of the training set.
    lam: float = 0.5
    gamma: float = 1.0
    use_raml: bool = True
    use_raun: bool = True
    use_erml: bool = True
    use_erun: bool = True
    representation: str = "event"
    gather_across_workers: bool = True
    raun_similarity: str = "steps"  # S of Eq. 5 between centred steps or over pooled features, the paper's "pooled" (cu_scale.method.losses.raun_steps_loss)
    # Mixed supervision: a full label in Eq. 8 is covered by the event ("cover", Eq. 8 as written) or holds the
    # event from both sides ("match"). Simulated Charades-STA, 10 % full and 90 % glance labels, the shipped config
    # (benchmarks/mixed_supervision.py), pseudo-label mIoU of the training set, all / the single frames' / the
    # full labels': cover 74.17 / 73.90 / 76.63, match 74.68 / 74.36 / 77.52 (all glance labels: 74.29).
    full_label_grounding: str = "match"
    seed: int = 0

    def __post_init__(self):
        _at_least(self, "epochs", 1)
        _at_least(self, "workers", 1)
        _at_least(self, "raun_warmup_epochs", 0)
        if self.raun_warmup_epochs >= self.epochs:
            raise ConfigError(f"raun_warmup_epochs: must be below epochs ({self.epochs}) or L_raun never joins, got {self.raun_warmup_epochs}")
        _at_least(self, "hidden_dim", 8)
        _one_of(self, "zero_stage", (0, 1, 2))
        _one_of(self, "lr_schedule", ("cosine", "constant"))
        _one_of(self, "placement", PLACEMENTS)
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate: must be > 0, got {self.learning_rate}")
        try:  # the method checks its own settings; its messages start with the field's name
            self.losses()
            self.model(video_dim=1, word_dim=1)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def model(self, video_dim: int, word_dim: int):
        """The `ImplicitModelConfig` these settings train, for features of `video_dim` and words of `word_dim`."""
        from cu_scale.method.implicit_model import ImplicitModelConfig  # torch: imported when a model is built

        fields = {f.name for f in dataclasses.fields(ImplicitModelConfig) if f.default is dataclasses.MISSING} - {"video_dim", "word_dim"}
        return ImplicitModelConfig(video_dim=video_dim, word_dim=word_dim, **{name: getattr(self, name) for name in fields})

    def losses(self):
        """The `LossConfig` of Eq. 3–8 these settings train with (its fields carry the same names here)."""
        from cu_scale.method.losses import LossConfig

        return LossConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LossConfig)})


@dataclasses.dataclass(frozen=True)
class ExplicitConfig:
    """Training of the explicit stage (paper §II-C): fully-supervised models on the chosen labels.

    Every model is trained once per label source: ``pseudo`` (the method: the implicit stage's
    pseudo-labels), ``gt`` (full supervision, the upper bound) and ``partial`` (the raw partial labels,
    the naive baseline). *Choice*: the model of the last epoch is the one evaluated; nothing is selected
    on the test split, and no validation split is carved out because a partial-label run has no full
    labels to select with.

    *Choice* (`attend_to_partial`, the paper treats pseudo-labels as ground truth and says no more): a model
    that holds its attention to the target's steps (the BoundaryRegressor's calibration) holds it, on
    pseudo-labels, to the partial label, the part of the moment a person saw, and regresses its span onto
    the pseudo-label, the method's estimate around it. The pseudo-label's steps are right about the width
    but a few seconds off in place; the partial label is always inside the moment. Measured with
    `benchmarks/explicit_plain_loop.py` on the long demo world (a held-out fifth of the training videos,
    BoundaryRegressor hidden 64, 20 epochs; mIoU): 23.20 against 20.94 with the attention on the pseudo-label;
    trained on the raw single frames 20.45, on ground truth 25.75.
    """

    models: tuple[str, ...] = ("cu_scale.method.grounding_models:SpanDETR",)  # "module:Class" (cu_scale.method.grounding_models.GroundingModel)
    label_sources: tuple[str, ...] = ("pseudo",)
    epochs: int = 10
    learning_rate: float = 3e-4
    lr_schedule: str = "cosine"
    weight_decay: float = 0.01
    batch_size: int = 64  # the global batch (all workers together)
    hidden_dim: int = 128
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1
    workers: int = 1
    zero_stage: int = 1
    max_failures: int = 2
    placement: str = "pack"  # PLACEMENT
    test_split: str = "test"  # the split the models are evaluated on (never trained or selected on)
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always has one); each costs a save
    seed: int = 0
    attend_to_partial: bool = True  # on pseudo-labels, attention is held to the partial label (the class docstring)
    top_k: int = 5  # ranked spans kept per query in the predictions files (SpanDETR ranks its candidates; the regressor has one)

    def __post_init__(self):
        _at_least(self, "epochs", 1)
        _at_least(self, "top_k", 1)
        _at_least(self, "checkpoint_every", 1)
        _at_least(self, "workers", 1)
        _at_least(self, "batch_size", self.workers)
        _at_least(self, "hidden_dim", 8)
        _at_least(self, "layers", 1)
        _one_of(self, "zero_stage", (0, 1, 2))
        _one_of(self, "lr_schedule", ("cosine", "constant"))
        _one_of(self, "placement", PLACEMENTS)
        if not self.models or not self.label_sources:
            raise ConfigError("models: at least one model and one label source are needed")
        for model in self.models:
            module, _, name = model.partition(":")
            if not module or not name.isidentifier():
                raise ConfigError(f"models: {model!r} is not 'package.module:ClassName'")
        for source in self.label_sources:
            if source not in LABEL_SOURCES:
                raise ConfigError(f"label_sources: {source!r} is not one of {LABEL_SOURCES}")
        if self.hidden_dim % self.heads:
            raise ConfigError(f"heads: hidden_dim {self.hidden_dim} must be divisible by heads {self.heads}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate: must be > 0, got {self.learning_rate}")

    def model_options(self) -> dict:
        """The keyword arguments every grounding model's constructor receives."""
        return {"hidden_dim": self.hidden_dim, "heads": self.heads, "layers": self.layers, "dropout": self.dropout}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    store: str
    run_dir: str = "runs/default"  # checkpoints, pseudo-labels, predictions and reports of this run
    # A Ray stage that makes no progress for this long stops with an error that says what Ray has pending
    # (cu_scale.stages.watchdog); raise it where the cluster may take longer to start workers (autoscaling).
    watchdog_seconds: float = 600.0
    prepare: PrepareConfig | None = None  # how `cu-scale run` builds the store; None: the store must exist
    encode: EncodeConfig = EncodeConfig()
    cluster: ClusterConfig = ClusterConfig()
    batches: BatchConfig = BatchConfig()
    implicit: ImplicitConfig = ImplicitConfig()
    explicit: ExplicitConfig = ExplicitConfig()
    source: str = "<config>"


def _build_section(cls, values, where: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    values = dict(values)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        expected = hints[name]
        if typing.get_origin(expected) is tuple:  # a list of strings in YAML
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{name}: expected a list of strings, got {value!r}")
            values[name] = tuple(value)
            continue
        allowed = typing.get_args(expected) or (expected,)
        allowed = tuple(type(None) if a is None else a for a in allowed)
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > 2**53:
                raise ConfigError(f"{where}.{name}: {value} is too large")
            values[name] = value = float(value)  # YAML reads "1" as an int; a float field takes it
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            raise ConfigError(f"{where}.{name}: expected {' or '.join(a.__name__ for a in allowed)}, got {value!r}")
    try:
        return cls(**values)
    except ConfigError as error:
        raise ConfigError(f"{where}.{error}") from None


def read_yaml_mapping(path: str | os.PathLike, what: str = "config") -> dict:
    """A YAML file that must hold a mapping; errors name the file (and the line of a syntax error)."""
    path = pathlib.Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to read") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise ConfigError(f"{path}:{mark.line + 1 if mark else '?'}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(raw).__name__}")
    return raw


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> RunConfig:
    """Read and validate a run configuration; `overrides` maps dotted keys to values (``{"cluster.k": 64}``)."""
    return build_config(read_yaml_mapping(path), str(path), overrides)


def build_config(raw: dict, source: str, overrides: dict | None = None) -> RunConfig:
    """Validate a configuration given as a plain dict (a parsed YAML file, or `dataclasses.asdict` of one)."""
    path = source
    raw = {key: dict(value) if isinstance(value, dict) else value for key, value in raw.items() if key != "source"}
    for key, value in (overrides or {}).items():
        section, _, field = key.partition(".")
        if field:
            if not isinstance(raw.get(section) or {}, dict):
                raise ConfigError(f"{path}: --set {key}: {section} is not a section")
            raw[section] = {**(raw.get(section) or {}), field: value}
        else:
            raw[section] = value
    sections = {"prepare": PrepareConfig, "encode": EncodeConfig, "cluster": ClusterConfig, "batches": BatchConfig, "implicit": ImplicitConfig, "explicit": ExplicitConfig}
    unknown = sorted(set(raw) - set(sections) - {"store", "run_dir", "watchdog_seconds"}, key=str)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown section (known: store, run_dir, watchdog_seconds, {', '.join(sections)})")
    if not isinstance(raw.get("store"), str):
        raise ConfigError(f"{path}: store: the path of the feature store is required")
    if not isinstance(raw.get("run_dir", ""), str):
        raise ConfigError(f"{path}: run_dir: expected a path, got {raw['run_dir']!r}")
    watchdog = raw.get("watchdog_seconds", RunConfig.watchdog_seconds)
    if isinstance(watchdog, bool) or not isinstance(watchdog, (int, float)) or not 0 < watchdog < 1e9:
        raise ConfigError(f"{path}: watchdog_seconds: expected a number of seconds > 0, got {watchdog!r}")
    built = {}
    for name, cls in sections.items():
        if name == "prepare" and raw.get(name) is None:
            built[name] = None
            continue
        try:
            built[name] = _build_section(cls, raw.get(name), name)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    try:
        built["batches"].per_worker(built["implicit"].workers)
    except ConfigError as error:
        raise ConfigError(f"{path}: batches.{error} (implicit.workers)") from None
    return RunConfig(store=raw["store"], run_dir=raw.get("run_dir", RunConfig.run_dir), watchdog_seconds=float(watchdog), source=source, **built)


def demo_config(run_dir: str = "runs/demo", videos: int | None = None, seed: int | None = None, overrides: dict | None = None) -> RunConfig:
    """What `cu-scale demo` runs: `demo.yaml` (configs/demo.yaml in a checkout), with the store and the run under
    `run_dir`, and `videos`, `seed` and `overrides` (as `--set` gives them) on top."""
    given = {"store": f"{run_dir}/store", "run_dir": run_dir}
    if videos is not None:
        given["prepare.videos"] = videos
    if seed is not None:
        given["prepare.seed"] = seed
    return load_config(DEMO_CONFIG, {**given, **(overrides or {})})


# Every field of a run configuration that names a file or directory.
PATH_FIELDS = ("store", "run_dir", "prepare.annotations", "prepare.features", "encode.model")


def resolve_paths(config: RunConfig, root: str | os.PathLike | None) -> RunConfig:
    """The config with every relative path of PATH_FIELDS made absolute under `root`.

    A Ray job runs in a temporary copy of its working directory, so a relative path there would write the
    run into a directory the cluster deletes, and would not find the annotations. Without a root, a
    relative path is an error that names the fields.
    """
    changes: dict[str, dict] = {}
    relative = []
    for name in PATH_FIELDS:
        section, _, field = name.rpartition(".")
        owner = getattr(config, section) if section else config
        value = getattr(owner, field) if owner is not None else None
        if value is None or pathlib.Path(value).is_absolute() or "://" in value:
            continue
        relative.append(f"{name}: {value}")
        if root is not None:
            changes.setdefault(section, {})[field] = str(pathlib.Path(root).resolve() / value)
    if relative and root is None:
        raise ConfigError(
            f"{config.source}: relative paths ({'; '.join(relative)}) mean nothing inside a Ray job, which runs in a temporary "
            "copy of the working directory: give --root DIR (a directory every node sees) or absolute paths with --set"
        )
    top = changes.pop("", {})
    sections = {section: dataclasses.replace(getattr(config, section), **fields) for section, fields in changes.items()}
    return dataclasses.replace(config, **top, **sections)
