"""Sampler distributions (statistical checks with fixed seeds), clip geometry and reproducibility."""

import numpy as np
import pytest

from cu_scale.data.partial_labels import (
    PartialLabelSpec,
    assign_partial_labels,
    sample_clip,
    sample_single_frame_gaussian,
    sample_single_frame_uniform,
)
from cu_scale.data.records import Sample

N = 200_000


def _chi_square_uniform(values: np.ndarray, bins: int = 20) -> float:
    counts, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
    expected = len(values) / bins
    return float(((counts - expected) ** 2 / expected).sum())


def test_uniform_single_frame_is_uniform_inside_the_moment():
    rng = np.random.default_rng(0)
    starts, ends = rng.uniform(0, 20, N), None
    ends = starts + rng.uniform(0.5, 15, N)
    instants = sample_single_frame_uniform(starts, ends, np.random.default_rng(1))
    assert ((instants >= starts) & (instants <= ends)).all()
    relative = (instants - starts) / (ends - starts)
    # 19 degrees of freedom: the 0.999 quantile of chi-square is 43.8.
    assert _chi_square_uniform(relative) < 43.8
    assert abs(relative.mean() - 0.5) < 0.005 and abs(relative.var() - 1 / 12) < 0.002


def test_gaussian_single_frame_is_a_truncated_normal_around_the_centre():
    starts, ends = np.zeros(N), np.full(N, 12.0)
    instants = sample_single_frame_gaussian(starts, ends, np.random.default_rng(2))
    assert ((instants >= 0) & (instants <= 12)).all()
    # sigma = 12 / 6 = 2; truncation at ±3σ shrinks the std by 1.3% only.
    assert abs(instants.mean() - 6.0) < 0.02
    assert 1.95 < instants.std() < 2.0
    # 68.3% of a normal lies within one sigma (68.5% after truncation at ±3σ).
    assert abs(np.mean(np.abs(instants - 6.0) < 2.0) - 0.685) < 0.005


def test_gaussian_sigma_fraction_sets_the_spread():
    instants = sample_single_frame_gaussian(np.zeros(N), np.full(N, 10.0), np.random.default_rng(3), sigma_fraction=0.05)
    assert abs(instants.std() - 0.5) < 0.01


def test_clip_has_length_r_inside_the_moment_and_a_uniform_start():
    starts, ends = np.full(N, 5.0), np.full(N, 15.0)
    clip_starts, clip_ends = sample_clip(starts, ends, 2.0, np.random.default_rng(4))
    assert np.allclose(clip_ends - clip_starts, 2.0)
    assert ((clip_starts >= 5.0) & (clip_ends <= 15.0)).all()
    assert _chi_square_uniform((clip_starts - 5.0) / 8.0) < 43.8


def test_clip_longer_than_the_moment_is_the_whole_moment():
    clip_starts, clip_ends = sample_clip(np.array([3.0, 1.0]), np.array([4.5, 9.0]), 4.0, np.random.default_rng(5))
    assert (clip_starts[0], clip_ends[0]) == (3.0, 4.5)
    assert clip_ends[1] - clip_starts[1] == pytest.approx(4.0)


def _samples(n=50):
    return [Sample(f"s{i}", "v", "q", "train", f"f:{i}", gt=(float(i), float(i) + 3.0)) for i in range(n)] + [
        Sample("no-gt", "v", "q", "test", "f:x")
    ]


@pytest.mark.parametrize("spec", [PartialLabelSpec("uniform", 7), PartialLabelSpec("gaussian", 7), PartialLabelSpec("clip", 7, clip_seconds=2.0)])
def test_assignment_is_reproducible_per_seed_and_kinds_are_right(spec):
    first, again = assign_partial_labels(_samples(), spec), assign_partial_labels(_samples(), spec)
    other = assign_partial_labels(_samples(), PartialLabelSpec(spec.method, 8, spec.clip_seconds))
    assert first == again and first != other
    kind = "clip" if spec.method == "clip" else "single-frame"
    assert all(s.partial_kind == kind and s.gt[0] <= s.partial[0] <= s.partial[1] <= s.gt[1] for s in first[:-1])
    assert first[-1].partial is None and first[-1].partial_kind == "none"


def test_spec_refuses_a_clip_of_zero_seconds_and_unknown_methods():
    with pytest.raises(ValueError, match="clip_seconds > 0"):
        PartialLabelSpec("clip", clip_seconds=0)
    with pytest.raises(ValueError, match="not one of"):
        PartialLabelSpec("beta")


def test_labels_are_drawn_inside_the_visible_part_of_an_overshooting_moment():
    samples = [Sample(f"s{i}", "v", "q", "train", "f", gt=(8.0, 14.0)) for i in range(200)]
    clips = assign_partial_labels(samples, PartialLabelSpec("clip", 0, clip_seconds=1.0), durations={"v": 10.0})
    assert all(8.0 <= s.partial[0] and s.partial[1] <= 10.0 and s.partial[1] - s.partial[0] == pytest.approx(1.0) for s in clips)
    frames = assign_partial_labels(samples, PartialLabelSpec("uniform", 0), durations={"v": 10.0})
    assert max(s.partial[0] for s in frames) <= 10.0 and min(s.partial[0] for s in frames) >= 8.0
