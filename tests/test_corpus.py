"""A user's own corpus: the annotation table in three formats, its validation, Parquet features, the README's
example, mixed supervision from a labelled corpus, and the `mixed` label source's targets. No Ray here."""

import json
import pathlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cu_scale.cli import main
from cu_scale.data.annotations import AnnotationError
from cu_scale.data.corpus import read_corpus, read_durations
from cu_scale.data.features import ParquetFeatures, open_features
from cu_scale.data.partial_labels import LabelMix, mix_label_kinds
from cu_scale.data.records import Sample
from cu_scale.data.store import FeatureStore

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

ROWS = [
    {"video_id": "v1", "query": "opens the door", "split": "train", "duration": 30, "t": 5.0, "gt_start": 3, "gt_end": 9},
    {"video_id": "v1", "query": "sits down", "split": "train", "duration": 30, "start": 12, "end": 14},
    {"video_id": "v2", "query": "drinks water", "split": "train", "gt_start": 1, "gt_end": 6, "sample_id": "mine-7"},
    {"video_id": "v2", "query": "laughs", "split": "test"},
]


def _write(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".csv":
        columns = list(dict.fromkeys(key for row in rows for key in row))
        path.write_text(",".join(columns) + "\n" + "".join(",".join(str(row.get(c, "")) for c in columns) + "\n" for row in rows))
    else:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_each_row_trains_from_its_partial_label_else_its_full_moment_else_nothing(tmp_path, suffix):
    samples, durations, sources = read_corpus(_write(tmp_path / f"ann{suffix}", ROWS))
    assert [(s.partial_kind, s.partial, s.gt) for s in samples] == [
        ("single-frame", (5.0, 5.0), (3.0, 9.0)),  # the moment beside a partial label is ground truth only
        ("clip", (12.0, 14.0), None),
        ("full", (1.0, 6.0), (1.0, 6.0)),
        ("none", None, None),
    ]
    assert [s.sample_id for s in samples] == ["train-000001", "train-000002", "mine-7", "test-000004"]
    where = "row 2" if suffix == ".parquet" else "3" if suffix == ".csv" else "2"  # a CSV's line 1 is its header
    assert samples[1].source == f"{tmp_path / f'ann{suffix}'}:{where}"
    assert durations == {"v1": 30.0} and sources["v1"] == samples[0].source
    numbered = _write(tmp_path / f"ids{suffix}", [{"video_id": 17, "query": "q", "split": "train", "sample_id": 4}])
    assert (read_corpus(numbered)[0][0].video_id, read_corpus(numbered)[0][0].sample_id) == ("17", "4")  # integer ids, as Parquet types them


@pytest.mark.parametrize(
    "row, message",
    [
        ({"video_id": "v", "query": "q", "split": "train", "t": "soon"}, "t 'soon' is not a number"),
        ({"video_id": "v", "query": "q", "split": "train", "t": 1, "start": 0, "end": 2}, "give one partial label, t or start/end, not both"),
        ({"video_id": "v", "query": "q", "split": "train", "start": 1}, "start is given without end"),
        ({"video_id": "v", "query": "q", "split": "train", "gt_end": 4}, "gt_end is given without gt_start"),
        ({"video_id": "v", "split": "train"}, "the field 'query' is missing"),
        ({"video_id": "v", "query": 7, "split": "train"}, "query must be text"),
        ({"video_id": "v1", "query": "q", "split": "train", "duration": 31}, "video v1 has duration 31 s here but 30 s at"),
        ({"video_id": "v", "query": "q", "split": "train", "gt_start": 1, "gt_end": float("nan")}, "gt_end nan is not a finite number"),
        ({"video_id": "v", "query": "q", "split": "train", "durtion": 3}, "unknown column(s) ['durtion']"),
        ({"video_id": 2.5, "query": "q", "split": "train"}, "video_id must be text or an integer, got 2.5"),
    ],
)
def test_a_row_that_cannot_be_read_is_named_by_file_and_line(tmp_path, capsys, row, message):
    path = tmp_path / "ann.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(AnnotationError, match=re.escape(f"{path}:3: {message}")):
        read_corpus(path)
    # and the CLI says so in one line, exit status 2
    assert main(["prepare", "corpus", "--annotations", str(path), "--simulate", "--out", str(tmp_path / "store"), "--quiet"]) == 2
    assert f"{path}:3: {message}" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_a_table_without_a_required_column_or_of_another_format_is_refused(tmp_path):
    path = tmp_path / "ann.csv"
    path.write_text("video_id,split\nv,train\n")
    with pytest.raises(AnnotationError, match=re.escape(f"{path}:1: the header lacks the column(s) ['query']")):
        read_corpus(path)
    with pytest.raises(AnnotationError, match="expected a .jsonl, .csv or .parquet table"):
        read_corpus(tmp_path / "ann.json")
    header = _write(tmp_path / "extra.csv", [{"video_id": "v", "query": "q", "split": "train", "note": "x"}])
    with pytest.raises(AnnotationError, match=re.escape(f"{header}:1: unknown column(s) ['note']")):
        read_corpus(header)
    durations = _write(tmp_path / "durations.csv", [{"video_id": "a", "duration": 3}, {"video_id": "a", "duration": 4}])
    with pytest.raises(AnnotationError, match=re.escape(f"{durations}:3: video a has duration 4 s here but 3 s at {durations}:2")):
        read_durations(durations)


def test_parquet_features_are_read_a_row_group_at_a_time(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"v{i}": rng.normal(size=(5 + i, 3)).astype(np.float32) for i in range(4)}
    table = pa.Table.from_pylist([{"video_id": v, "features": a.tolist()} for v, a in arrays.items()])
    pq.write_table(table, tmp_path / "features.parquet", row_group_size=2)
    features = open_features(tmp_path / "features.parquet", max_steps=6)
    assert isinstance(features, ParquetFeatures) and features.get("nope") is None
    np.testing.assert_allclose(features.get("v1"), arrays["v1"], rtol=1e-6)
    assert features.get("v3").shape == (6, 3)  # 8 steps average-pooled to T = 6
    ragged = pa.Table.from_pylist([{"video_id": "r", "features": [[1.0, 2.0], [3.0]]}])
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    twice = pa.Table.from_pylist([{"video_id": 1, "features": [[1.0]]}, {"video_id": 1, "features": [[2.0]]}])
    pq.write_table(twice, tmp_path / "twice.parquet")
    with pytest.raises(ValueError, match="video 1 appears twice"):
        open_features(tmp_path / "twice.parquet", 6)
    with pytest.raises(ValueError, match="ragged.parquet:r: feature steps have different widths"):
        open_features(tmp_path / "ragged.parquet", 6).get("r")


def test_the_readme_example_prepares_as_the_readme_says(tmp_path, capsys):
    text = README.read_text()
    example = re.search(r"### Your own corpus.*?```jsonl\n(.*?)```", text, re.S).group(1)
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text(example)
    for video in ("kitchen-01", "kitchen-02", "garage-01", "garage-02"):
        (tmp_path / "features").mkdir(exist_ok=True)
        np.save(tmp_path / "features" / f"{video}.npy", np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32))
    command = re.search(r"^cu-scale prepare corpus (.*?)\s+#", text, re.M).group(1).split()
    paths = {"annotations.jsonl": str(annotations), "features/": str(tmp_path / "features"), "stores/mine": str(tmp_path / "store")}
    assert main(["prepare", "corpus", *(paths.get(a, a) for a in command), "--quiet"]) == 0
    store = FeatureStore(tmp_path / "store")
    splits = store.manifest["counts"]["splits"]
    assert splits["train"]["label_kinds"] == {"single-frame": 1, "clip": 1, "full": 1, "none": 1}
    assert splits["test"]["samples"] == 1
    assert [(r["source"].rpartition(":")[2], r["code"]) for r in store.rejects()] == [("6", "start_after_end"), ("7", "missing_video")]
    assert "no duration for video garage-02" in store.rejects()[1]["reason"]
    assert "label kinds: single-frame 1, clip 1, full 1, none 1" in capsys.readouterr().out


def test_a_mix_turns_a_seeded_fraction_full_or_unlabelled_and_leaves_the_rest_as_they_were():
    samples = [Sample(f"s{i}", "v", "q", "train", "x", gt=(i, i + 2.0), partial=(i + 1.0, i + 1.0), partial_kind="single-frame") for i in range(100)]
    samples.append(Sample("no-gt", "v", "q", "train", "x", partial=(1.0, 1.0), partial_kind="single-frame"))
    samples += [Sample(f"t{i}", "v", "q", "test", "x", gt=(0.0, 2.0), partial=(1.0, 1.0), partial_kind="single-frame") for i in range(50)]
    mixed = mix_label_kinds(samples, LabelMix(full=0.1, unlabelled=0.2, seed=3))
    kinds = [s.partial_kind for s in mixed]
    assert kinds.count("full") == 10 and kinds.count("none") == 20 and mixed[100:] == samples[100:]  # test split and no-gt: as they were
    assert all(m.partial == m.gt for m in mixed if m.partial_kind == "full")
    assert all(m == s for m, s in zip(mixed, samples) if m.partial_kind == "single-frame")
    assert mix_label_kinds(samples, LabelMix(full=0.1, unlabelled=0.2, seed=3)) == mixed
    assert mix_label_kinds(samples, LabelMix(full=0.1, unlabelled=0.2, seed=4)) != mixed
    # the full 10 % of a 10 % mix are the first 10 % of a larger full mix with the same seed: the runs nest
    more = mix_label_kinds(samples, LabelMix(full=0.3, seed=3))
    assert {s.sample_id for s in mix_label_kinds(samples, LabelMix(full=0.1, seed=3)) if s.partial_kind == "full"} <= {s.sample_id for s in more if s.partial_kind == "full"}
    with pytest.raises(ValueError, match="sum to at most 1"):
        LabelMix(full=0.7, unlabelled=0.4)


def test_the_mixed_source_reads_full_moments_where_the_kind_is_full_and_pseudo_labels_elsewhere(tmp_path):
    from cu_scale.data.store import LabelPolicy, StoreWriter
    from cu_scale.stages.streams import StoreLayout, Window, explicit_labels, explicit_targets, labelled_mask

    samples = [
        Sample("a", "v", "q", "train", "x:1", gt=(2.0, 8.0), partial=(2.0, 8.0), partial_kind="full"),
        Sample("b", "v", "q", "train", "x:2", gt=(10.0, 16.0), partial=(12.0, 12.0), partial_kind="single-frame"),
        Sample("c", "v", "q", "train", "x:3", gt=(1.0, 3.0)),  # unlabelled: trains nothing
    ]
    with StoreWriter(tmp_path / "store", 4, 8, policy=LabelPolicy()) as writer:
        writer.add_video("v", 20.0, np.ones((8, 4), np.float32), samples, source="x")
    store = FeatureStore(tmp_path / "store")
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    pq.write_table(pa.table({"sample_id": ["a", "b"], "pseudo_start": [0.0, 9.0], "pseudo_end": [10.0, 17.0]}), pseudo / "part-00000.parquet")
    layout = StoreLayout.of(store, {"dim": 4, "max_tokens": 4})
    window = Window(layout, [0], "train", keep=labelled_mask("mixed"), extra=explicit_labels(layout, "mixed", str(pseudo)), features=False)
    assert list(window.columns["sample_id"]) == ["a", "b"]
    np.testing.assert_allclose(window.columns["target_start"], [2.0, 9.0])  # a: its full moment, not the pseudo-label 0-10
    np.testing.assert_allclose(window.columns["target_end"], [8.0, 17.0])
    targets = explicit_targets(window.columns, "mixed", attend_to_partial=True)
    np.testing.assert_allclose(targets["inside_start"], [0.1, 0.6])  # attention held to the label: the moment, the frame
    pseudo_only = Window(layout, [0], "train", keep=labelled_mask("pseudo"), extra=explicit_labels(layout, "pseudo", str(pseudo)), features=False)
    np.testing.assert_allclose(pseudo_only.columns["target_start"], [0.0, 9.0])
