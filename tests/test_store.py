"""The feature store: round trip, every reject reason, strict mode, checksums, and Ray Data reading."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from cu_scale.data.records import Sample
from cu_scale.data.store import (
    REJECT_REASONS,
    FeatureStore,
    LabelPolicy,
    StoreError,
    StoreRejectError,
    StoreWriter,
    join_shard,
)

DV, T = 8, 6


def _features(steps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 4, (steps, DV)).astype(np.float16)


def _sample(sample_id, video_id, gt=(1.0, 2.0), partial=(1.5, 1.5), kind="single-frame", query="a person opens a door.", split="train"):
    return Sample(sample_id, video_id, query, split, f"file.txt:{sample_id}", gt=gt, partial=partial, partial_kind=kind)


def _write_small_store(path, shard_videos=2):
    videos = {f"v{i}": (10.0 + i, _features(3 + i % 4, i)) for i in range(5)}
    samples = {
        "v0": [_sample("a", "v0"), _sample("b", "v0", partial=(1.0, 2.0), kind="clip")],
        "v1": [_sample("c", "v1", split="test", partial=None, kind="none")],
        "v2": [_sample("d", "v2", gt=None, partial=(3.0, 4.0), kind="clip")],
        "v3": [],
        "v4": [_sample("e", "v4", gt=(2.0, 14.0), partial=(14.0, 14.0), split="test")],
    }
    with StoreWriter(path, DV, T, shard_videos=shard_videos, description={"dataset": "unit"}) as writer:
        for video_id, (duration, features) in videos.items():
            writer.add_video(video_id, duration, features, samples[video_id], source=f"feats/{video_id}.npy")
    return videos, samples


def test_round_trip_keeps_every_value(tmp_path):
    videos, samples = _write_small_store(tmp_path / "store")
    store = FeatureStore(tmp_path / "store")
    m = store.manifest
    assert (m["feature_dim"], m["max_steps"], m["dataset"], len(m["shards"])) == (DV, T, "unit", 3)
    assert m["counts"]["videos"] == 5 and m["counts"]["samples"] == 5
    assert m["counts"]["splits"] == {
        "train": {"samples": 3, "videos": 2, "label_kinds": {"single-frame": 1, "clip": 2}},
        "test": {"samples": 2, "videos": 2, "label_kinds": {"none": 1, "single-frame": 1}},
    }
    assert m["counts"]["clipped_labels"] == {}
    assert m["counts"]["feature_bytes"] == sum(f.shape[0] for _, f in videos.values()) * DV * 2
    assert store.verify() == []

    read_videos = {}
    read_samples = {}
    for video_table, sample_table in store.iter_shards():
        from cu_scale.data.store import features_from_column

        for vid, duration, steps, feats in zip(
            video_table.column("video_id").to_pylist(),
            video_table.column("duration").to_pylist(),
            video_table.column("num_steps").to_pylist(),
            features_from_column(video_table.column("features"), DV),
        ):
            read_videos[vid] = (duration, feats)
            assert steps == feats.shape[0]
        for row in sample_table.to_pylist():
            read_samples[row["sample_id"]] = row
    for vid, (duration, feats) in videos.items():
        assert read_videos[vid][0] == duration
        np.testing.assert_array_equal(read_videos[vid][1], feats)
        assert read_videos[vid][1].dtype == np.float16
    assert read_samples["b"]["partial_kind"] == "clip" and (read_samples["b"]["partial_start"], read_samples["b"]["partial_end"]) == (1.0, 2.0)
    assert read_samples["c"]["partial_start"] is None and read_samples["c"]["partial_kind"] == "none"
    assert read_samples["d"]["gt_start"] is None and read_samples["d"]["source"] == "file.txt:d"
    assert store.samples_table(split="test").column("sample_id").to_pylist() == ["c", "e"]


def test_samples_are_co_partitioned_with_their_videos(tmp_path):
    _write_small_store(tmp_path / "store")
    store = FeatureStore(tmp_path / "store")
    for shard, (videos, samples) in zip(store.shards, store.iter_shards()):
        assert set(samples.column("video_id").to_pylist()) <= set(videos.column("video_id").to_pylist())
        assert shard["num_samples"] == samples.num_rows


def test_join_shard_pads_features_and_masks_them(tmp_path):
    videos, _ = _write_small_store(tmp_path / "store", shard_videos=5)
    video_table, sample_table = next(FeatureStore(tmp_path / "store").iter_shards())
    batch = join_shard(video_table, sample_table, DV, T)
    assert batch["features"].shape == (5, T, DV) and batch["mask"].shape == (5, T)
    e = list(batch["sample_id"]).index("e")
    steps = videos["v4"][1].shape[0]
    np.testing.assert_array_equal(batch["features"][e, :steps], videos["v4"][1])
    assert batch["mask"][e].tolist() == [True] * steps + [False] * (T - steps)
    assert not batch["features"][e, steps:].any() and batch["duration"][e] == 14.0


def test_clipping_counts_and_clips_overshooting_labels(tmp_path):
    with StoreWriter(tmp_path / "s", DV, T) as writer:
        writer.add_video("v", 10.0, _features(4, 0), [_sample("a", "v", gt=(8.0, 10.6), partial=(10.3, 10.3)), _sample("b", "v", gt=(-0.5, 3.0))], "x")
    store = FeatureStore(tmp_path / "s")
    rows = {r["sample_id"]: r for r in store.samples_table().to_pylist()}
    assert (rows["a"]["gt_start"], rows["a"]["gt_end"], rows["a"]["partial_start"]) == (8.0, 10.0, 10.0)
    assert (rows["b"]["gt_start"], rows["b"]["gt_end"]) == (0.0, 3.0)
    assert store.manifest["counts"]["clipped_labels"] == {"gt": 2, "partial": 1}
    assert store.manifest["rejects"]["count"] == 0


# Each case: (what to add, expected reject code, a fragment of the message).
def _reject_cases():
    good = _features(4, 1)
    return [
        ("empty_query", lambda w: w.add_video("v", 10.0, good, [_sample("s", "v", query="  ")], "feats:v"), "query is empty"),
        ("start_after_end", lambda w: w.add_video("v", 10.0, good, [_sample("s", "v", gt=(5.0, 4.0))], "feats:v"), "starts at 5 s after its end 4 s"),
        ("outside_video", lambda w: w.add_video("v", 10.0, good, [_sample("s", "v", gt=(16.0, 18.0), partial=(17.0, 17.0))], "feats:v"), "lies outside the video [0, 10] s"),
        ("outside_video", lambda w: w.add_video("v", 10.0, good, [_sample("s", "v", gt=(-3.0, -1.0), partial=None, kind="none")], "feats:v"), "[-3, -1]"),
        ("nonfinite_features", lambda w: w.add_video("v", 10.0, np.where(np.arange(DV) == 3, np.inf, good).astype(np.float16), [_sample("s", "v")], "feats:v"), "NaN/inf (first at step 0)"),
        ("nonfinite_features", lambda w: w.add_video("v", 10.0, np.vstack([good, np.full((1, DV), np.nan, np.float16)]), [_sample("s", "v")], "feats:v"), "first at step 4"),
        ("wrong_feature_width", lambda w: w.add_video("v", 10.0, _features(4, 1)[:, :5], [_sample("s", "v")], "feats:v"), "shape (4, 5), expected (steps, 8)"),
        ("no_feature_steps", lambda w: w.add_video("v", 10.0, np.zeros((0, DV), np.float16), [_sample("s", "v")], "feats:v"), "0 time steps"),
        ("bad_duration", lambda w: w.add_video("v", float("nan"), good, [_sample("s", "v")], "feats:v"), "not a positive number"),
        ("missing_video", lambda w: w.reject_samples([_sample("s", "ghost")], "missing_video", "video ghost is not in the video annotations"), "ghost"),
        ("duplicate_sample_id", lambda w: (w.add_video("v", 10.0, good, [_sample("s", "v")], "feats:v"), w.add_video("w", 10.0, good, [_sample("s", "w")], "feats:w")), "appears twice"),
    ]


@pytest.mark.parametrize("code,add,message", _reject_cases(), ids=[c[0] + str(i) for i, c in enumerate(_reject_cases())])
def test_every_reject_reason_lands_in_the_rejects_file_with_its_source(tmp_path, code, add, message):
    with StoreWriter(tmp_path / "s", DV, T) as writer:
        add(writer)
    store = FeatureStore(tmp_path / "s")
    rejects = store.rejects()
    assert code in REJECT_REASONS
    assert rejects[0]["code"] == code and message in rejects[0]["reason"]
    assert rejects[0]["source"] in ("feats:v", "file.txt:s")
    assert store.manifest["rejects"]["by_code"][code] >= 1
    if rejects[0]["kind"] == "video":  # the video's samples follow it, each with its own reason
        assert rejects[1] == {
            "kind": "sample",
            "key": "s",
            "source": "file.txt:s",
            "code": "video_rejected",
            "reason": f"its video v was rejected: {rejects[0]['reason']}",
        }
    assert store.manifest["counts"]["samples"] + store.manifest["rejects"]["count"] >= 1


def test_overshoot_policy_reject(tmp_path):
    with StoreWriter(tmp_path / "s", DV, T, policy=LabelPolicy(overshoot="reject")) as writer:
        writer.add_video("v", 10.0, _features(4, 0), [_sample("a", "v", gt=(8.0, 10.6)), _sample("b", "v")], "x")
    store = FeatureStore(tmp_path / "s")
    assert [r["code"] for r in store.rejects()] == ["overshoot"]
    assert store.manifest["counts"]["samples"] == 1


def test_tolerance_bounds_what_counts_as_outside(tmp_path):
    with StoreWriter(tmp_path / "s", DV, T, policy=LabelPolicy(tolerance_seconds=0.5)) as writer:
        writer.add_video("v", 10.0, _features(4, 0), [_sample("a", "v", gt=(8.0, 11.0), partial=(10.4, 10.4)), _sample("b", "v", gt=(8.0, 11.0), partial=(10.6, 10.6))], "x")
    assert [r["key"] for r in FeatureStore(tmp_path / "s").rejects()] == ["b"]


def test_strict_stops_at_the_first_reject_and_leaves_nothing(tmp_path):
    with pytest.raises(StoreRejectError, match="file.txt:b: sample b rejected: gt label starts at 5 s after its end 4 s"):
        with StoreWriter(tmp_path / "s", DV, T, strict=True) as writer:
            writer.add_video("v", 10.0, _features(4, 0), [_sample("a", "v"), _sample("b", "v", gt=(5.0, 4.0))], "x")
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()


def test_existing_store_is_not_overwritten_by_default(tmp_path):
    _write_small_store(tmp_path / "store")
    with pytest.raises(FileExistsError, match="--overwrite"):
        StoreWriter(tmp_path / "store", DV, T)


def test_verify_detects_a_changed_shard_and_reader_refuses_unknown_versions(tmp_path):
    _write_small_store(tmp_path / "store")
    store = FeatureStore(tmp_path / "store")
    shard = tmp_path / "store" / store.shards[1]["samples_file"]
    table = pq.read_table(shard)
    pq.write_table(table.slice(0, 0), shard)
    assert store.verify() == [f"{shard}: checksum differs from manifest.json"]
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (tmp_path / "store" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="schema_version 99; this cu-scale reads version 1"):
        FeatureStore(tmp_path / "store")
    with pytest.raises(StoreError, match="is not a feature store"):
        FeatureStore(tmp_path)


def test_ray_data_reads_samples_and_videos(tmp_path, local_ray):
    videos, _ = _write_small_store(tmp_path / "store")
    store = FeatureStore(tmp_path / "store")
    assert sorted(r["sample_id"] for r in store.samples_dataset(split="train").take_all()) == ["a", "b", "d"]
    rows = {r["video_id"]: r for r in store.videos_dataset().take_all()}
    assert len(rows) == 5 and rows["v1"]["num_steps"] == videos["v1"][1].shape[0]
