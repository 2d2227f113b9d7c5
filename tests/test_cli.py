"""The `cu-scale` command end to end on the real annotations, tiny feature files and the demo."""

import dataclasses
import json

import numpy as np
import pytest

from cu_scale.cli import main
from cu_scale.config import ConfigError
from cu_scale.data.store import FeatureStore

SMALL = ["--dv", "16", "--steps", "8", "--quiet"]  # real annotations, small features: fast


def test_prepare_charades_sta_glance_writes_every_sample(datasets, tmp_path, capsys):
    out = tmp_path / "sta"
    code = main(["prepare", "charades-sta", "--annotations", str(datasets / "charades_sta"), "--glance", "--simulate", "--out", str(out), *SMALL])
    assert code == 0
    counts = FeatureStore(out).manifest["counts"]
    assert counts["splits"] == {
        "train": {"samples": 12408, "videos": 5338, "label_kinds": {"single-frame": 12408}},
        "test": {"samples": 3720, "videos": 1334, "label_kinds": {"single-frame": 3720}},
    }
    # 1,805 + 562 moments end past the Charades v1 length; 249 + 82 glances lie past it too.
    assert counts["clipped_labels"] == {"gt": 2367, "partial": 331}
    capsys.readouterr()
    assert main(["store", "info", str(out), "--verify"]) == 0
    info = capsys.readouterr().out
    assert "train         12,408 samples     5,338 videos" in info
    assert "test           3,720 samples     1,334 videos" in info
    assert "Dv 16   T (max steps) 8" in info and "schema version 1" in info and "rejects      0" in info
    assert "all shard checksums match" in info


def test_prepare_charades_sta_sampled_clips(datasets, tmp_path):
    out = tmp_path / "sta"
    args = ["prepare", "charades-sta", "--annotations", str(datasets / "charades_sta"), "--partial", "clip", "--clip-seconds", "2", "--simulate", "--out", str(out), *SMALL]
    assert main(args) == 0
    store = FeatureStore(out)
    # The plain Charades-STA train file has four moments written end-first (the glance release swapped them).
    lines = sorted(int(r["source"].rsplit(":", 1)[1]) for r in store.rejects())
    assert lines == [8252, 8440, 9623, 9624] and store.manifest["rejects"]["by_code"] == {"start_after_end": 4}
    assert store.manifest["partial_labels"]["train"] == "sampled 2 s clips (uniform inside the moment, seed 0)"
    table = store.samples_table(split="train", columns=["partial_kind", "partial_start", "partial_end", "gt_start", "gt_end"]).to_pandas()
    assert (table.partial_kind == "clip").all()
    length = table.partial_end - table.partial_start
    moment = table.gt_end - table.gt_start  # as stored: clipped to the video
    assert np.allclose(length[moment >= 2], 2.0) and np.allclose(length[moment < 2], moment[moment < 2])
    assert (table.partial_start >= table.gt_start).all() and (table.partial_end <= table.gt_end).all()
    assert store.manifest["counts"]["clipped_labels"] == {"gt": 2364}  # no sampled clip needs clipping


def test_prepare_activitynet_rejects_reversed_moments_and_says_which_labels(datasets, tmp_path):
    out = tmp_path / "anet"
    args = ["prepare", "activitynet", "--annotations", str(datasets / "activitynet_captions"), "--glance", "--simulate", "--out", str(out), "--splits", "train", "val_1", *SMALL]
    assert main(args) == 0
    store = FeatureStore(out)
    m = store.manifest
    # train.json holds two moments whose start is after their end; nothing else is rejected.
    assert m["rejects"]["by_code"] == {"start_after_end": 2}
    assert m["counts"]["splits"]["train"]["samples"] == 37421 - 2 and m["counts"]["splits"]["val_1"]["samples"] == 17505
    assert m["partial_labels"]["train"] == "sampled single frames (uniform, seed 0)"
    assert m["partial_labels"]["val_1"].startswith("glance labels from")
    assert {r["source"].split("/")[-1].split(":")[0] for r in store.rejects()} == {"train.json"}


def test_strict_exits_non_zero_with_the_first_reason(datasets, tmp_path, capsys):
    out = tmp_path / "anet"
    args = ["prepare", "activitynet", "--annotations", str(datasets / "activitynet_captions"), "--simulate", "--out", str(out), "--splits", "train", "--strict", *SMALL]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--strict:" in err and "train.json:" in err and "starts at" in err and "after its end" in err
    assert not out.exists()


def test_prepare_from_npy_features_rejects_videos_without_features_and_bad_widths(tmp_path, capsys):
    annotations = tmp_path / "sta"
    annotations.mkdir()
    (annotations / "charades_sta_train.txt").write_text("AAAAA 1.0 4.0##a person opens a door.\nBBBBB 0.0 2.0##a person sits.\nCCCCC 1.0 3.0##gone.\n")
    (annotations / "charades_sta_test.txt").write_text("DDDDD 2.0 5.0##a person eats.\n")
    header = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
    (annotations / "Charades_v1_train.csv").write_text(header + "AAAAA,s,Kitchen,1,1,Yes,,,,,10.0\nBBBBB,s,Kitchen,1,1,Yes,,,,,8.0\nCCCCC,s,Kitchen,1,1,Yes,,,,,8.0\n")
    (annotations / "Charades_v1_test.csv").write_text(header + "DDDDD,s,Kitchen,1,1,Yes,,,,,9.0\n")
    features = tmp_path / "features"
    features.mkdir()
    np.save(features / "AAAAA.npy", np.ones((20, 6), np.float32))
    np.save(features / "BBBBB.npy", np.ones((5, 4), np.float32))  # wrong width
    np.save(features / "DDDDD.npy", np.ones((3, 6), np.float32))
    out = tmp_path / "store"
    assert main(["prepare", "charades-sta", "--annotations", str(annotations), "--features", str(features), "--out", str(out), "--steps", "8", "--quiet"]) == 0
    store = FeatureStore(out)
    assert store.manifest["feature_dim"] == 6 and store.manifest["counts"]["samples"] == 2
    rejects = {r["key"]: r for r in store.rejects()}
    assert rejects["BBBBB"]["code"] == "wrong_feature_width" and rejects["train-000002"]["code"] == "video_rejected"
    assert rejects["train-000003"]["code"] == "missing_video" and "CCCCC" in rejects["train-000003"]["reason"]
    videos, _ = next(store.iter_shards())
    assert videos.column("num_steps").to_pylist() == [8, 3]  # 20 steps pooled to 8; 3 kept
    assert "rejects      3" in capsys.readouterr().out


def test_missing_annotation_file_is_named(tmp_path, capsys):
    assert main(["prepare", "charades-sta", "--annotations", str(tmp_path), "--simulate", "--out", str(tmp_path / "s")]) == 2
    assert f"expected annotation file {tmp_path}/Charades_v1_train.csv is missing" in capsys.readouterr().err


def test_glance_and_partial_are_exclusive(datasets, tmp_path):
    with pytest.raises(SystemExit, match="not both"):
        main(["prepare", "charades-sta", "--annotations", str(datasets / "charades_sta"), "--glance", "--partial", "uniform", "--simulate", "--out", str(tmp_path / "s")])


def test_the_demo_runs_the_shipped_demo_config_under_its_own_directory():
    import pathlib

    from cu_scale.config import demo_config, load_config

    shipped = load_config(pathlib.Path(__file__).parents[1] / "configs" / "demo.yaml")
    assert shipped.store == f"{shipped.run_dir}/store"
    demo = demo_config("elsewhere", videos=50, overrides={"explicit.epochs": 3})
    assert demo.store == "elsewhere/store" and demo.run_dir == "elsewhere"
    assert demo.prepare == dataclasses.replace(shipped.prepare, videos=50) and demo.explicit == dataclasses.replace(shipped.explicit, epochs=3)
    assert (demo.implicit, demo.cluster, demo.batches, demo.encode) == (shipped.implicit, shipped.cluster, shipped.batches, shipped.encode)


def test_prepare_options_and_a_prepare_section_build_the_same_store_settings():
    from cu_scale.cli import build_parser, prepare_settings
    from cu_scale.config import PrepareConfig

    args = build_parser().parse_args(["prepare", "demo", "--out", "s", "--videos", "30"])
    assert prepare_settings(args) == PrepareConfig(dataset="demo", videos=30)
    assert PrepareConfig(dataset="demo").max_steps == 32 and PrepareConfig(dataset="demo").feature_dim == 1024
    args = build_parser().parse_args(["prepare", "charades-sta", "--annotations", "a", "--partial", "clip", "--clip-seconds", "2", "--simulate", "--out", "s", "--strict"])
    assert prepare_settings(args) == PrepareConfig(dataset="charades-sta", annotations="a", partial="clip", clip_seconds=2.0, strict=True)
    with pytest.raises(ConfigError, match="cu-scale prepare charades-sta: clip_seconds: partial: clip needs clip_seconds > 0"):
        prepare_settings(build_parser().parse_args(["prepare", "charades-sta", "--annotations", "a", "--partial", "clip", "--simulate", "--out", "s"]))


def test_demo_runs_the_whole_pipeline_and_prints_the_metrics_and_the_report(tiny_run, capsys):
    # The shared tiny run is `cu-scale demo` with the demo's own settings made small with --set.
    store = FeatureStore(tiny_run.store)
    assert store.manifest["dataset"] == "demo" and store.manifest["counts"]["videos"] == 40
    out = tiny_run.printed
    training = store.manifest["counts"]["splits"]["train"]["samples"]
    assert "implicit     6 epoch(s) on 1 worker(s)" in out and f"pseudo-label {training} training samples" in out
    assert "test split: explicit models" in out and "BoundaryRegressor-pseudo" in out
    assert f"report       {tiny_run.root / 'report.md'}" in out and "demo ready" in out
    assert (tiny_run.root / "plots" / "timeline.png").is_file()
    assert main(["store", "info", str(tiny_run.store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schema_version"] == 1
