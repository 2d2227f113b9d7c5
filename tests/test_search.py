"""`cu-scale tune`: the search file's validation, the validation part of the training set, relabelled stores,
and a real Ray Tune search (ASHA) over the implicit stage on a tiny demo corpus, resumed once finished."""

import csv
import json
import os

import numpy as np
import pytest

from cu_scale.cli import main
from cu_scale.config import ConfigError, load_config
from cu_scale.stages.streams import validation_videos
from cu_scale.ops.relabel import label_spec, relabel_store
from cu_scale.ops.search import load_search
from cu_scale.data.store import FeatureStore

# A run on the shared tiny run's store (prepared, encoded, clustered with K 4).
TINY = """
store: {store}
run_dir: {root}/run
cluster: {{k: 4, memberships: 2}}
batches: {{batch_size: 16, clusters_per_batch: 2}}
implicit: {{epochs: 1, hidden_dim: 32, heads: 2}}
"""
SEARCH = """
trials: 2
max_epochs: 3
grace_epochs: 1
reduction_factor: 2
validation_fraction: 0.5
space:
  implicit.lam: {loguniform: [0.3, 3.0]}
  implicit.tau: {choice: [0.05, 0.2]}
  cluster.k: {choice: [3, 4]}
  clip_seconds: {grid: [0, 2]}
"""


@pytest.fixture(scope="module")
def config_only(tmp_path_factory):
    """The same settings on a store that need not exist: what validating a search file reads."""
    root = tmp_path_factory.mktemp("search-config")
    config = root / "run.yaml"
    config.write_text(TINY.format(store=root / "store", root=root))
    return root, config


@pytest.fixture(scope="module")
def tiny(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    config = root / "run.yaml"
    config.write_text(TINY.format(store=tiny_run.store, root=root))
    return root, config


def _search_error(tmp_path, tiny, text: str) -> str:
    path = tmp_path / "search.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_search(path, load_config(tiny[1]))
    return str(error.value)


def test_a_search_file_is_validated_against_the_config_and_names_the_field(tmp_path, config_only):
    tiny = config_only
    assert "trails: unknown field" in _search_error(tmp_path, tiny, "trails: 2\nspace: {implicit.tau: {choice: [0.1]}}")
    assert "space.implicit.lamda" in _search_error(tmp_path, tiny, "space: {implicit.lamda: {uniform: [0.1, 1]}}")
    assert "space.implicit.tau" in _search_error(tmp_path, tiny, "space: {implicit.tau: {choice: [0.1, 0]}}")  # τ must be > 0
    assert "takes choice or grid, not uniform" in _search_error(tmp_path, tiny, "space: {cluster.k: {uniform: [4, 8]}}")
    assert "expected one of choice, grid" in _search_error(tmp_path, tiny, "space: {implicit.lam: {normal: [1, 2]}}")
    assert "low < high" in _search_error(tmp_path, tiny, "space: {implicit.lam: {loguniform: [3, 1]}}")
    assert "seconds ≥ 0" in _search_error(tmp_path, tiny, "space: {clip_seconds: {grid: [0, -2]}}")
    assert "search.yaml:3: not valid YAML" in _search_error(tmp_path, tiny, "space:\n  - [\n")
    settings = load_search(_write(tmp_path / "ok.yaml", SEARCH), load_config(tiny[1]))
    assert settings.values_of("clip_seconds") == [0, 2] and settings.values_of("cluster.k") == [3, 4] and settings.max_epochs == 3


def _write(path, text):
    path.write_text(text)
    return path


def test_the_validation_part_is_whole_videos_drawn_by_a_seeded_hash():
    videos = [f"v{i:04d}" for i in range(4000)]
    picked = validation_videos(videos, 0.25, seed=0)
    assert abs(picked.mean() - 0.25) < 0.03  # the fraction asked for
    assert np.array_equal(picked, validation_videos(videos, 0.25, seed=0))  # every worker and trial agrees
    assert not np.array_equal(picked, validation_videos(videos, 0.25, seed=1))
    repeated = validation_videos(["v0001", "v0001", "v0002", "v0001"], 0.5, seed=3)
    assert repeated[0] == repeated[1] == repeated[3]  # a video's queries are all in, or all out


def test_a_relabelled_store_redraws_only_the_labels_and_shares_the_features(tmp_path, tiny, local_ray):
    from cu_scale.ops.pipeline import Pipeline

    config = load_config(tiny[1])
    Pipeline(config, progress=False).run_stage("prepare")
    source = FeatureStore(config.store)
    clips = relabel_store(source.path, tmp_path / "r3", label_spec(3.0))
    frames = relabel_store(source.path, tmp_path / "r0", label_spec(0.0))
    assert clips.verify() == [] and frames.verify() == []
    for store, kind in ((clips, "clip"), (frames, "single-frame")):
        table = store.samples_table().to_pandas()
        assert set(table.partial_kind) == {kind}
        assert (table.partial_start >= table.gt_start - 1e-9).all() and (table.partial_end <= table.gt_end + 1e-9).all()
        before = source.samples_table().to_pandas()
        assert (table.sample_id == before.sample_id).all() and (table.gt_start == before.gt_start).all() and (table["query"] == before["query"]).all()
    lengths = (clips.samples_table().to_pandas().eval("partial_end - partial_start")).to_numpy()
    assert lengths.max() <= 3.0 + 1e-9 and np.isclose(lengths, 3.0).mean() > 0.5  # r seconds unless the moment is shorter
    assert (frames.samples_table().to_pandas().eval("partial_end - partial_start") == 0).all()
    assert os.stat(clips.path / source.shards[0]["videos_file"]).st_nlink >= 3  # the source and both relabelled stores
    assert clips.manifest["partial_labels"]["train"].startswith("sampled 3 s clips") and clips.manifest["relabelled_from"] == source.path.path
    assert clips.manifest["counts"] == source.manifest["counts"]


def test_tune_runs_an_asha_search_writes_the_table_best_config_and_frontier_and_resumes(tmp_path, tiny, local_ray, capsys):
    space = _write(tmp_path / "search.yaml", SEARCH)
    out = tmp_path / "search"
    assert main(["tune", str(tiny[1]), "--space", str(space), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "search: 4 trials" in printed and "| trial |" in printed
    with open(out / "trials.csv") as rows_file:
        rows = list(csv.DictReader(rows_file))
    assert len(rows) == 4 and sorted(row["clip_seconds"] for row in rows) == ["0", "0", "2", "2"]
    assert all(row["status"] == "done" and 1 <= int(row["epochs"]) <= 3 for row in rows)
    assert all(0 < float(row["best mIoU"]) <= 100 for row in rows)
    # ASHA stopped the trials below the median of their rung (grace 1 epoch, reduction factor 2).
    assert any(int(row["epochs"]) < 3 for row in rows), rows
    # Each trial's epochs reported the validation score to Tune, epoch by epoch.
    results = sorted((out / "tune").glob("run_trial_*/result.json"))
    reported = [[json.loads(line) for line in path.read_text().splitlines()] for path in results]
    assert sorted(len(r) for r in reported) == sorted(int(row["epochs"]) for row in rows)
    assert all("val_pseudo_mIoU" in line and line["val_samples"] > 0 for r in reported for line in r)
    best = load_config(out / "best.yaml")
    top = max(rows, key=lambda row: float(row["best mIoU"]))
    assert best.store == str(out / "stores" / f"r{top['clip_seconds']}s") and best.prepare is None
    assert best.implicit.epochs == 3 and best.cluster.k == int(top["cluster.k"]) and best.implicit.tau == float(top["implicit.tau"])
    assert (out / "frontier.png").stat().st_size > 10_000 and (out / "trials.md").read_text().startswith("| trial |")

    # Run again: the finished search is restored, not rerun.
    assert main(["tune", str(tiny[1]), "--space", str(space), "--out", str(out), "--quiet"]) == 0
    assert "resuming" in capsys.readouterr().out
    with open(out / "trials.csv") as rows_file:
        assert list(csv.DictReader(rows_file)) == rows
