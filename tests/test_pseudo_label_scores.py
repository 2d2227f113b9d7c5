"""Scoring pseudo-labels: the shape of the events against the moments, and the warning when they lose."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cu_scale.stages.pseudo_labels import OUTPUT_COLUMNS, LengthHistogram, describe_shape, pseudo_label_shape, pseudo_label_warning, score_pseudo_labels


def _write(directory, part, rows):
    """rows: (pseudo_start, pseudo_end, partial_start, partial_end, gt_start, gt_end, duration)."""
    columns = list(zip(*rows))
    table = pa.table({"sample_id": [f"{part}-{i}" for i in range(len(rows))], **{name: pa.array(values, pa.float64()) for name, values in zip(OUTPUT_COLUMNS[1:], columns)}})
    pq.write_table(table, directory / f"part-{part:05d}.parquet")


def test_length_histogram_percentiles_are_within_a_bin_of_numpy():
    lengths = np.random.default_rng(0).lognormal(2.0, 1.0, 20_000)
    histogram = LengthHistogram()
    histogram.add(lengths[:7_000])
    histogram.add(lengths[7_000:])
    for q in (5, 50, 95):
        assert histogram.percentile(q) == pytest.approx(np.percentile(lengths, q), rel=0.01)
    empty_length = LengthHistogram()
    empty_length.add(np.array([0.0, 0.0, 5.0]))
    assert empty_length.percentile(50) == 0.0


def test_shape_and_warning_on_hand_made_pseudo_labels(tmp_path):
    # Two shards. Events of 20, 40, 60 s around anchors at 50, 100, 150; moments of 10 s centred 5 s from
    # the anchor; one sample has no ground truth and is left out.
    _write(tmp_path, 0, [(40.0, 60.0, 50.0, 50.0, 45.0, 55.0, 300.0), (85.0, 125.0, 100.0, 100.0, 100.0, 110.0, 300.0)])
    _write(tmp_path, 1, [(120.0, 180.0, 150.0, 150.0, 150.0, 160.0, 300.0), (0.0, 300.0, 10.0, 10.0, np.nan, np.nan, 300.0)])
    shape = pseudo_label_shape(tmp_path)
    assert shape["samples"] == 3
    assert shape["median_length"] == pytest.approx(40.0, rel=0.01) and shape["median_true_length"] == pytest.approx(10.0, rel=0.01)
    # |centre − anchor|: 0, 5, 0 → 5/3; true centres 0, 5, 5 from their anchors → 10/3; apart 0, 0, 5 → 5/3.
    assert shape["centre_from_anchor"] == pytest.approx(5 / 3) and shape["true_centre_from_anchor"] == pytest.approx(10 / 3)
    assert shape["centre_error"] == pytest.approx(5 / 3)
    assert "median 40.0 s" in describe_shape(shape) and "true moments 10.0 s" in describe_shape(shape)

    metrics = score_pseudo_labels(tmp_path)
    # The events' IoUs: 10/20, 10/40, 10/60. Widened to the mean moment length, 10 s around each anchor:
    # [45, 55], [95, 105], [145, 155] against the moments, 1, 5/15, 5/15.
    widened_name = next(name for name in metrics if name.startswith("partial widened"))
    assert metrics["pseudo-labels"]["mIoU"] == pytest.approx(100 * (1 / 2 + 1 / 4 + 1 / 6) / 3)
    assert metrics[widened_name]["mIoU"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    warning = pseudo_label_warning(metrics)
    assert warning.startswith("WARNING: the pseudo-labels lose to the partial widened to mean length 10.0 s (mIoU")
    winning = {**metrics, "pseudo-labels": {key: 100.0 for key in metrics["pseudo-labels"]}}
    assert pseudo_label_warning(winning) is None and pseudo_label_warning(None) is None
