"""Partial labels sampled from ground truth, for annotation studies (paper §II-A, Table III).

A partial label is written (t_c, r): a clip of r seconds centred at t_c inside the moment (s, e);
r = 0 is the single-frame ("glance") label. Given ground truth we can sample any of them:

- single frame, uniform: t ~ U(s, e)                          (Table III "Uniform")
- single frame, Gaussian: t ~ N((s+e)/2, (sigma_fraction·(e−s))²), truncated to [s, e]
                                                              (Table III "Gaussian")
- short clip of r seconds: start ~ U(s, e − r), clip (start, start + r); r ≥ e − s gives (s, e).

*Choice* (the paper gives no σ): sigma_fraction defaults to 1/6, so that ±3σ spans the moment; the
truncation redraws out-of-moment values rather than clipping them, so no mass piles up on the edges.

A *mix* (`LabelMix`) turns a labelled corpus into one of mixed supervision, to measure what a few full
labels add: a seeded fraction of the samples with ground truth keep their full moment as the label (kind
full), another loses its label (kind none), the rest keep the partial label they had.

Every sampler takes a seed and is deterministic for it: the same file, seed and method always
give the same labels. Glance files are used as given, never resampled.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cu_scale.data.records import Sample

METHODS = ("uniform", "gaussian", "clip")


def sample_single_frame_uniform(starts: np.ndarray, ends: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(starts, ends)


def sample_single_frame_gaussian(
    starts: np.ndarray, ends: np.ndarray, rng: np.random.Generator, sigma_fraction: float = 1 / 6
) -> np.ndarray:
    if sigma_fraction <= 0:
        raise ValueError(f"sigma_fraction must be positive, got {sigma_fraction}")
    starts, ends = np.asarray(starts, float), np.asarray(ends, float)
    centres, sigmas = (starts + ends) / 2, sigma_fraction * (ends - starts)
    instants = rng.normal(centres, sigmas)
    outside = (instants < starts) | (instants > ends)
    while outside.any():  # redraw the tails: a truncated normal, not one clipped onto the edges
        instants[outside] = rng.normal(centres[outside], sigmas[outside])
        outside = (instants < starts) | (instants > ends)
    return instants


def sample_clip(starts: np.ndarray, ends: np.ndarray, seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if seconds < 0:
        raise ValueError(f"clip length must be ≥ 0 seconds, got {seconds}")
    starts, ends = np.asarray(starts, float), np.asarray(ends, float)
    room = np.maximum(ends - starts - seconds, 0.0)
    clip_starts = starts + rng.uniform(0.0, 1.0, size=starts.shape) * room
    return clip_starts, np.minimum(clip_starts + seconds, ends)


@dataclasses.dataclass(frozen=True)
class PartialLabelSpec:
    """How to derive partial labels from ground truth: `method` in METHODS, `clip_seconds` r for clips."""

    method: str = "uniform"
    seed: int = 0
    clip_seconds: float = 0.0
    sigma_fraction: float = 1 / 6

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"partial-label method {self.method!r} is not one of {METHODS}")
        if self.method == "clip" and self.clip_seconds <= 0:
            raise ValueError("a clip partial label needs clip_seconds > 0 (r = 0 is the single-frame label)")

    def describe(self) -> str:
        if self.method == "clip":
            return f"sampled {self.clip_seconds:g} s clips (uniform inside the moment, seed {self.seed})"
        return f"sampled single frames ({self.method}, seed {self.seed})"


def assign_partial_labels(samples: list[Sample], spec: PartialLabelSpec, durations: dict[str, float] | None = None) -> list[Sample]:
    """Replace each sample's partial label by one sampled from its ground truth.

    With `durations` (video id → seconds) the label is drawn inside the part of the moment that lies in
    the video, as an annotator watching it would: real moments overshoot the recorded duration (Charades-STA
    has 2,367), and a clip drawn past the end would be clipped shorter than r. Samples without ground truth
    keep no label (kind "none"). A moment with start > end gets the moment itself as label, so that the
    store rejects it for the right reason instead of the sampler raising.
    """
    durations = durations or {}

    def visible(sample: Sample) -> tuple[float, float]:
        start, end = sample.gt
        duration = durations.get(sample.video_id, end)
        return (max(start, 0.0), min(end, duration)) if max(start, 0.0) <= min(end, duration) else (start, end)

    with_gt = [i for i, s in enumerate(samples) if s.gt is not None and s.gt[0] <= s.gt[1]]
    bounds = np.array([visible(samples[i]) for i in with_gt], float).reshape(-1, 2)
    starts, ends = bounds[:, 0], bounds[:, 1]
    rng = np.random.default_rng(spec.seed)
    if spec.method == "uniform":
        label_starts = label_ends = sample_single_frame_uniform(starts, ends, rng)
    elif spec.method == "gaussian":
        label_starts = label_ends = sample_single_frame_gaussian(starts, ends, rng, spec.sigma_fraction)
    else:
        label_starts, label_ends = sample_clip(starts, ends, spec.clip_seconds, rng)
    kind = "clip" if spec.method == "clip" else "single-frame"
    out = [
        dataclasses.replace(s, partial=s.gt, partial_kind=kind if s.gt is not None else "none") for s in samples
    ]
    for k, i in enumerate(with_gt):
        out[i] = dataclasses.replace(samples[i], partial=(float(label_starts[k]), float(label_ends[k])), partial_kind=kind)
    return out


@dataclasses.dataclass(frozen=True)
class LabelMix:
    """What fraction of the samples with ground truth train from their full moment, and what fraction from nothing."""

    full: float = 0.0
    unlabelled: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not (0 <= self.full <= 1 and 0 <= self.unlabelled <= 1 and self.full + self.unlabelled <= 1):
            raise ValueError(f"label mix: full ({self.full}) and unlabelled ({self.unlabelled}) must be fractions that sum to at most 1")

    def describe(self) -> str:
        return f"{100 * self.full:g}% full and {100 * self.unlabelled:g}% unlabelled (seed {self.seed})"


MIXED_SPLIT = "train"  # the split the stages train on; a mix changes how it is supervised, never what is evaluated


def mix_label_kinds(samples: list[Sample], mix: LabelMix) -> list[Sample]:
    """`samples` with round(full·n) of the n training samples (split `MIXED_SPLIT`) that have ground truth turned
    into full labels and round(unlabelled·n) others into unlabelled samples, chosen by a permutation seeded by
    `mix.seed`; the rest, and every sample of the other splits, are unchanged.

    Which samples are chosen depends on their order and the seed only, not on their labels: the 90% of a
    10%-full mix keep exactly the partial labels they have in the all-partial corpus, so the two differ by
    the full labels alone.
    """
    with_gt = [i for i, s in enumerate(samples) if s.gt is not None and s.split == MIXED_SPLIT]
    order = np.random.default_rng(mix.seed).permutation(len(with_gt))
    full_count, none_count = round(mix.full * len(with_gt)), round(mix.unlabelled * len(with_gt))
    out = list(samples)
    for k, position in enumerate(order[: full_count + none_count]):
        i = with_gt[position]
        if k < full_count:
            out[i] = dataclasses.replace(samples[i], partial=samples[i].gt, partial_kind="full")
        else:
            out[i] = dataclasses.replace(samples[i], partial=None, partial_kind="none")
    return out
