"""Hostile input, fuzzed (hypothesis): every reader a user feeds either loads what it is given or refuses it with
an error of its own that names the file, and the line, row, key or field; none lets another exception out.
For the annotation formats, every row that loads goes into the store or into its rejects: rows in = rows
stored + rows rejected. The CLI turns every such error into one line and exit status 2.

Examples are drawn from a fixed seed (`derandomize`), so a run is reproducible; nothing is kept between runs.
The counts per reader are in FUZZ_EXAMPLES."""

import io
import json
import re

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cu_scale.cli import main
from cu_scale.config import ConfigError, load_config
from cu_scale.data.annotations import AnnotationError, read_activitynet, read_charades_sta
from cu_scale.data.corpus import read_corpus
from cu_scale.data.features import FeatureError, H5Features, NpyDirectoryFeatures
from cu_scale.data.store import FeatureStore, StoreWriter
from cu_scale.evaluation.predictions import PredictionsError, evaluate_predictions, iter_predictions

FUZZ_EXAMPLES = 150  # per reader; the CLI properties run a tenth of that (each builds a parser and a store)
FUZZ = settings(max_examples=FUZZ_EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ_CLI = settings(FUZZ, max_examples=FUZZ_EXAMPLES // 10)

# -- values a hostile file holds ----------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-10**12, 10**12), st.sampled_from([0, 0.0, -0.0, 1e308, -1e-308, 5, 30.5])
)
NUMBER_TEXT = st.one_of(NUMBERS.map(str), st.sampled_from(["", " ", "nan", "inf", "-inf", "1e999", "0x10", "1,5", "٣", "１２", "5.", ".5", "+3", "--1"]), st.text(max_size=6))
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
TEXT = st.text(max_size=40)  # any unicode, control characters and line separators included


def _written(tmp_path_factory, name: str, data: bytes | str):
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return path


def _names_the_file(error: Exception, path) -> None:
    """The error's text starts with the file it is about (and, after a colon, the line, row, key or field)."""
    assert str(error).startswith(f"{path}"), f"{type(error).__name__} does not name {path}: {error}"
    assert "\n" not in str(error).strip(), f"not one line: {error!r}"


def _one_line_exit_2(capsys, argv: list[str], path) -> None:
    """The CLI on the same input: success (0), or one line that names the file and exit status 2."""
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status in (0, 2), (status, err)
    if status == 2:
        assert len(err.splitlines()) == 1 and str(path) in err, err


# -- Charades-STA and its glance variant ----------------------------------------------------------------------

def _charades_line(glance: bool):
    valid_head = st.tuples(st.from_regex(r"[A-Z0-9]{5}", fullmatch=True), NUMBER_TEXT, NUMBER_TEXT).map(" ".join)
    head = st.one_of(valid_head, TEXT)
    parts = [head, NUMBER_TEXT, TEXT] if glance else [head, TEXT]
    return st.one_of(st.tuples(*parts).map("##".join), TEXT, st.lists(TEXT, max_size=4).map("##".join))


def _charades_file(glance: bool):
    lines = st.lists(_charades_line(glance), min_size=0, max_size=8).map("\n".join)
    return st.one_of(lines, lines.map(lambda text: text.encode("utf-8", "surrogatepass")), st.binary(max_size=64))


def _lines_of(data) -> list[str]:
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return [line for line in io.StringIO(text, newline=None) if line.rstrip("\r\n").strip()]


def _store_everything(tmp_path_factory, samples, durations: dict[str, float]) -> None:
    """Rows in = rows stored + rows rejected, through the store writer (features of 4 steps for every video)."""
    out = tmp_path_factory.mktemp("store") / "store"
    by_video = {}
    for sample in samples:
        by_video.setdefault(sample.video_id, []).append(sample)
    with StoreWriter(out, 8, 16) as writer:
        for video_id, group in by_video.items():
            if video_id in durations:
                writer.add_video(video_id, durations[video_id], np.ones((4, 8), np.float32), group, source=video_id)
            else:
                writer.reject_samples(group, "missing_video", "no duration")
    store = FeatureStore(out)
    rejected = [r for r in store.rejects() if r["kind"] == "sample"]  # a rejected video's samples are rejected one by one too
    assert store.manifest["counts"]["samples"] + len(rejected) == len(samples)
    assert len(store.rejects()) == store.manifest["rejects"]["count"]


@pytest.mark.parametrize("glance", [False, True], ids=["charades-sta", "glance"])
def test_charades_sta_lines_load_or_are_refused_by_file_and_line(glance, tmp_path_factory):
    @FUZZ
    @given(data=_charades_file(glance), duration=st.one_of(NUMBERS, st.just(30.0)))
    def check(data, duration):
        path = _written(tmp_path_factory, "charades_sta_train.txt", data)
        try:
            samples = read_charades_sta(path, "train", glance=glance)
        except AnnotationError as error:
            _names_the_file(error, path)
            if not re.match(rf"{re.escape(str(path))}: not UTF-8", str(error)):
                line = int(re.match(rf"{re.escape(str(path))}:(\d+):", str(error)).group(1))
                assert 1 <= line <= len(data.splitlines() if isinstance(data, str) else data.split(b"\n")) + 1
            return
        assert len(samples) == len(_lines_of(data))
        _store_everything(tmp_path_factory, samples, {s.video_id: duration for s in samples})

    check()


# -- ActivityNet Captions JSON -----------------------------------------------------------------------------

ACTIVITYNET_ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "duration": st.one_of(NUMBERS, NUMBER_TEXT, JUNK),
        "timestamps": st.one_of(st.lists(st.one_of(st.lists(NUMBERS, max_size=3), JUNK), max_size=4), JUNK),
        "sentences": st.one_of(st.lists(st.one_of(TEXT, JUNK), max_size=4), JUNK),
        "glance": st.one_of(st.lists(st.one_of(NUMBERS, NUMBER_TEXT, JUNK), max_size=4), JUNK),
    },
)


@pytest.mark.parametrize("glance", [False, True], ids=["activitynet", "glance"])
def test_activitynet_json_loads_or_is_refused_by_file_and_video(glance, tmp_path_factory):
    @FUZZ
    @given(
        content=st.one_of(
            st.dictionaries(st.text(max_size=10), st.one_of(ACTIVITYNET_ENTRY, JUNK), max_size=4).map(json.dumps),
            JUNK.map(json.dumps),
            st.text(max_size=60),
            st.binary(max_size=60),
        )
    )
    def check(content):
        path = _written(tmp_path_factory, "train.json", content)
        try:
            samples, videos = read_activitynet(path, "train", glance=glance)
        except AnnotationError as error:
            _names_the_file(error, path)
            return
        assert all(sample.video_id in videos for sample in samples)
        _store_everything(tmp_path_factory, samples, {v.video_id: v.duration for v in videos.values()})

    check()


# -- the corpus format (JSON Lines, CSV, Parquet) ------------------------------------------------------------

CORPUS_FIELD_VALUES = {
    "video_id": st.one_of(st.from_regex(r"v[0-9]", fullmatch=True), st.integers(0, 3), TEXT, JUNK),
    "query": st.one_of(st.just("a person opens the door"), TEXT, JUNK),
    "split": st.one_of(st.sampled_from(["train", "test"]), TEXT, JUNK),
    "duration": st.one_of(NUMBERS, NUMBER_TEXT, JUNK),
    "t": st.one_of(NUMBERS, NUMBER_TEXT), "start": NUMBERS, "end": NUMBERS, "gt_start": NUMBERS, "gt_end": st.one_of(NUMBERS, NUMBER_TEXT),
    "sample_id": st.one_of(st.text(max_size=6), st.integers(0, 5)),
    "durtion": NUMBERS,  # a misspelt column
}
CORPUS_ROW = st.fixed_dictionaries({}, optional=CORPUS_FIELD_VALUES)


def _corpus_table(rows: list[dict], suffix: str) -> bytes | str:
    if suffix == ".jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    if suffix == ".csv":
        def cell(value):
            return "" if value is None else '"' + str(value).replace('"', '""') + '"'
        return ",".join(columns) + "\n" + "".join(",".join(cell(row.get(c)) for c in columns) + "\n" for row in rows)
    try:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]), sink)
    except (pa.ArrowException, OverflowError):  # values Arrow cannot type together, or Parquet cannot hold: as text
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([{c: None if row.get(c) is None else json.dumps(row.get(c)) for c in columns} for row in rows]), sink)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_corpus_tables_load_or_are_refused_by_file_and_line_and_every_row_is_stored_or_rejected(suffix, tmp_path_factory):
    @FUZZ
    @given(rows=st.lists(CORPUS_ROW, min_size=0, max_size=6), raw=st.one_of(st.none(), st.binary(max_size=40)))
    def check(rows, raw):
        path = _written(tmp_path_factory, f"corpus{suffix}", raw if raw is not None else _corpus_table(rows, suffix))
        try:
            samples, durations, _ = read_corpus(path)
        except AnnotationError as error:
            _names_the_file(error, path)
            return
        assert raw is not None or len(samples) == len(rows)
        _store_everything(tmp_path_factory, samples, durations)

    check()


def test_the_cli_prepares_a_fuzzed_corpus_or_says_why_in_one_line(tmp_path_factory, capsys):
    @FUZZ_CLI
    @given(rows=st.lists(CORPUS_ROW, min_size=1, max_size=4))
    def check(rows):
        path = _written(tmp_path_factory, "corpus.jsonl", _corpus_table(rows, ".jsonl"))
        out = path.parent / "store"
        _one_line_exit_2(capsys, ["prepare", "corpus", "--annotations", str(path), "--simulate", "--out", str(out), "--quiet", "--steps", "8", "--dv", "8"], path)
        if out.exists():
            store = FeatureStore(out)
            assert store.manifest["counts"]["samples"] + sum(r["kind"] == "sample" for r in store.rejects()) == len(rows)

    check()


# -- features: .npy files and .h5 datasets --------------------------------------------------------------------

ARRAYS = st.one_of(
    st.tuples(st.sampled_from(["<f2", "<f4", ">f8", "<i8", "|b1", "<c8", "<U3", "|u1"]), st.lists(st.integers(0, 5), min_size=0, max_size=3)).map(
        lambda spec: np.zeros(spec[1], dtype=spec[0]) if np.dtype(spec[0]).kind in "Ub" else np.full(spec[1], 1.5).astype(spec[0])
    ),
    st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=8, max_size=8), min_size=1, max_size=5).map(lambda rows: np.array(rows, np.float32)),
)


def _stored_or_rejected(features, path) -> None:
    """The store writer takes what a features reader gives: a video stored or rejected with a reason, nothing else."""
    out = path.parent / "store"
    with StoreWriter(out, 8, 16, overwrite=True) as writer:
        writer.add_video("v", 10.0, features, [], source=str(path))
    assert FeatureStore(out).manifest["counts"]["videos"] + FeatureStore(out).manifest["rejects"]["count"] == 1


def test_npy_features_load_or_are_refused_by_file(tmp_path_factory):
    @FUZZ
    @given(array=st.one_of(ARRAYS, st.none()), raw=st.binary(max_size=80), pickled=st.booleans())
    def check(array, raw, pickled):
        directory = tmp_path_factory.mktemp("npy")
        path = directory / "v.npy"
        if array is None:
            path.write_bytes(raw)
        elif pickled:
            np.save(path, np.array([array, "x"], dtype=object), allow_pickle=True)
        else:
            np.save(path, array)
        try:
            features = NpyDirectoryFeatures(directory, 16).get("v")
        except FeatureError as error:
            _names_the_file(error, path)
            return
        _stored_or_rejected(features, path)

    check()


def test_h5_features_load_or_are_refused_by_file_and_key(tmp_path_factory):
    @FUZZ
    @given(array=ARRAYS, as_group=st.booleans(), raw=st.one_of(st.none(), st.binary(max_size=80)))
    def check(array, as_group, raw):
        path = tmp_path_factory.mktemp("h5") / "features.h5"
        if raw is not None:
            path.write_bytes(raw)
        else:
            with h5py.File(path, "w") as h5:
                if as_group:
                    h5.create_group("v").create_dataset("inner", data=np.zeros((2, 8)))
                elif array.dtype.kind == "U":
                    h5.create_dataset("v", data=array.astype("S3"))
                else:
                    h5.create_dataset("v", data=array)
        try:
            features = H5Features(path, 16).get("v")
        except FeatureError as error:
            _names_the_file(error, path)
            return
        _stored_or_rejected(features, path)

    check()


# -- predictions files (JSON Lines and Parquet) ---------------------------------------------------------------

SPAN = st.one_of(st.lists(NUMBERS, min_size=2, max_size=2), st.lists(NUMBERS, max_size=4), JUNK)
PREDICTION = st.fixed_dictionaries(
    {},
    optional={
        "sample_id": st.one_of(st.text(max_size=6), JUNK), "pred": SPAN, "gt": st.one_of(SPAN, st.none()), "duration": st.one_of(NUMBERS, JUNK),
        "spans": st.one_of(st.lists(st.one_of(st.lists(NUMBERS, min_size=3, max_size=3), JUNK), max_size=6), JUNK), "label_kind": st.one_of(TEXT, JUNK),
    },
)


def test_prediction_files_are_scored_or_refused_by_file_and_line(tmp_path_factory, capsys):
    @FUZZ
    @given(records=st.lists(PREDICTION, max_size=6), raw=st.one_of(st.none(), st.text(max_size=60), st.binary(max_size=60)), parquet=st.booleans())
    def check(records, raw, parquet):
        name = "predictions.parquet" if parquet else "predictions.jsonl"
        if raw is not None:
            content = raw
        elif parquet:
            content = _corpus_table(
                [{"sample_id": r.get("sample_id"), "pred_start": (r.get("pred") or [None])[0] if isinstance(r.get("pred"), list) else r.get("pred"),
                  "pred_end": r.get("duration"), "gt_start": r.get("duration"), "gt_end": r.get("duration")} for r in records] or [{"x": 1}],
                ".parquet",
            )
        else:
            content = "".join(json.dumps(record) + "\n" for record in records)
        path = _written(tmp_path_factory, name, content)
        try:
            metrics = evaluate_predictions(iter_predictions(path))
        except PredictionsError as error:
            _names_the_file(error, path)
            return
        assert all(0 <= metrics[key] <= 100 for key in ("R@0.3", "R@0.5", "R@0.7", "mIoU"))

    check()

    @FUZZ_CLI
    @given(records=st.lists(PREDICTION, min_size=1, max_size=4))
    def check_cli(records):
        path = _written(tmp_path_factory, "p.jsonl", "".join(json.dumps(record) + "\n" for record in records))
        _one_line_exit_2(capsys, ["evaluate", str(path)], path)

    check_cli()


# -- run configs and search files -----------------------------------------------------------------------------

SECTIONS = {
    "prepare": ["dataset", "videos", "steps", "feature_dim", "partial", "clip_seconds", "full_fraction"],
    "encode": ["model", "batch_size", "max_tokens", "actors", "device"],
    "cluster": ["k", "memberships", "iterations", "split"],
    "batches": ["batch_size", "clusters_per_batch"],
    "implicit": ["epochs", "learning_rate", "workers", "lam", "tau", "alpha", "placement", "zero_stage"],
    "explicit": ["models", "label_sources", "epochs", "workers", "top_k", "placement"],
}
SECTION = st.sampled_from(sorted(SECTIONS)).flatmap(
    lambda name: st.tuples(st.just(name), st.one_of(st.dictionaries(st.sampled_from(SECTIONS[name] + ["nonsense"]), JUNK, max_size=3), JUNK))
)
CONFIG = st.fixed_dictionaries(
    {"store": st.one_of(st.just("/tmp/store"), JUNK)},
    optional={"run_dir": st.one_of(st.just("/tmp/run"), JUNK), "watchdog_seconds": JUNK, "stray": JUNK},
).flatmap(lambda base: st.lists(SECTION, max_size=3).map(lambda sections: {**base, **dict(sections)}))


def test_run_configs_load_or_are_refused_by_file_and_field(tmp_path_factory, capsys):
    @FUZZ
    @given(config=st.one_of(CONFIG.map(lambda c: yaml.safe_dump(c, allow_unicode=True)), st.text(max_size=80), st.binary(max_size=60)))
    def check(config):
        path = _written(tmp_path_factory, "run.yaml", config)
        try:
            load_config(path)
        except ConfigError as error:
            _names_the_file(error, path)

    check()

    @FUZZ_CLI
    @given(config=CONFIG.map(lambda c: yaml.safe_dump({**c, "store": "/nonexistent/store"}, allow_unicode=True)))
    def check_cli(config):
        path = _written(tmp_path_factory, "run.yaml", config)
        status = main(["run", str(path), "--quiet"])  # refused before anything runs: no store there
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1, err

    check_cli()


def test_search_files_load_or_are_refused_by_file_and_field(tmp_path_factory):
    from cu_scale.config import build_config
    from cu_scale.ops.search import load_search

    base = build_config({"store": "/tmp/store", "run_dir": "/tmp/run"}, "base.yaml")
    spec = st.one_of(
        st.dictionaries(st.sampled_from(["choice", "grid", "uniform", "loguniform", "randint", "normal"]), st.one_of(st.lists(NUMBERS, max_size=3), JUNK), max_size=2),
        JUNK,
    )
    search = st.fixed_dictionaries(
        {},
        optional={
            "space": st.one_of(st.dictionaries(st.sampled_from(["implicit.lam", "implicit.tau", "cluster.k", "clip_seconds", "nope.key"]), spec, max_size=3), JUNK),
            "trials": JUNK, "max_epochs": JUNK, "validation_fraction": JUNK, "seed": JUNK, "typo": JUNK,
        },
    )

    @FUZZ
    @given(content=st.one_of(search.map(lambda s: yaml.safe_dump(s, allow_unicode=True)), st.text(max_size=60)))
    def check(content):
        path = _written(tmp_path_factory, "search.yaml", content)
        try:
            load_search(path, base)
        except ConfigError as error:
            _names_the_file(error, path)

    check()
