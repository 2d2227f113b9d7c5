"""A user's own corpus through `cu-scale run`, predictions for a whole store with `cu-scale predict --store`,
and the README's Python API example. A real local Ray, the real encoder, real DeepSpeed engines."""

import json
import pathlib
import re

import pyarrow.parquet as pq
import pytest
from corpus_files import write_corpus
from tiny_run import set_arguments

from cu_scale.cli import main
from cu_scale.data.store import FeatureStore

ROOT = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = [
    "prepare.steps=16", "cluster.k=4", "batches.batch_size=16", "batches.clusters_per_batch=2",
    "implicit.epochs=1", "implicit.hidden_dim=32", "implicit.heads=2",
    "explicit.models=[cu_scale.method.grounding_models:SpanDETR]", "explicit.epochs=1",
    "explicit.batch_size=16", "explicit.hidden_dim=32", "explicit.heads=2", "explicit.layers=1",
]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, local_ray):
    """The shipped corpus config on a corpus written here, with every label kind and one row to reject."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("corpus")
    annotations, features = write_corpus(root)
    with open(annotations, "a") as rows:
        rows.write(json.dumps({"video_id": "video-000", "query": "a person opens the box", "split": "train", "gt_start": 9.0, "gt_end": 2.0}) + "\n")
    paths = [f"store={root / 'store'}", f"run_dir={root / 'run'}", f"prepare.annotations={annotations}", f"prepare.features={features}"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["run", str(ROOT / "configs" / "corpus.yaml"), "--quiet", *set_arguments(paths + SETTINGS)]) == 0
    return root, annotations, printed.getvalue()


def test_a_users_corpus_with_every_label_kind_runs_end_to_end(corpus_run):
    root, annotations, out = corpus_run
    store = FeatureStore(root / "store")
    kinds = store.manifest["counts"]["splits"]["train"]["label_kinds"]
    assert set(kinds) == {"full", "clip", "single-frame", "none"} and min(kinds.values()) >= 10
    rows = len(annotations.read_text().splitlines())
    assert store.manifest["counts"]["samples"] + store.manifest["rejects"]["count"] == rows  # nothing dropped silently
    (reject,) = store.rejects()
    assert reject["source"] == f"{annotations}:{rows}" and reject["code"] == "start_after_end"
    labelled = sum(kinds.values()) - kinds["none"]
    assert f"pseudo-label {labelled} training samples" in out  # every labelled kind, the unlabelled ones not
    assert f"SpanDETR-mixed: 1 epoch(s) on {labelled} samples ({kinds['none']} without a mixed label)" in out
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert {"  of clip labels", "  of full labels", "  of single-frame labels"} == {re.sub(r" \(.*", "", k) for k in metrics["pseudo_labels"] if k.startswith("  of")}
    result = metrics["explicit"]["SpanDETR-mixed"]
    assert result["scored"] == store.manifest["counts"]["splits"]["test"]["samples"] and "R@5,0.5" in result


def test_predict_store_writes_the_top_5_spans_through_ray_data_and_evaluate_reports_r_at_5(corpus_run, capsys):
    root, _, _ = corpus_run
    out = root / "predictions"
    assert main(["predict", "--run", str(root / "run"), "--store", str(root / "store"), "--split", "test", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    test = FeatureStore(root / "store").manifest["counts"]["splits"]["test"]["samples"]
    assert f"predicted    {test} test queries" in printed
    table = pq.read_table(out / "SpanDETR-mixed.parquet")
    assert table.num_rows == test and {len(spans) for spans in table.column("spans_score").to_pylist()} == {5}
    assert all(scores == sorted(scores, reverse=True) for scores in table.column("spans_score").to_pylist())
    records = [json.loads(line) for line in (out / "SpanDETR-mixed.jsonl").read_text().splitlines()]
    assert all(r["pred"] == r["spans"][0][:2] for r in records)  # the answer is the best-scored span
    results = []
    for path in (out / "SpanDETR-mixed.parquet", out / "SpanDETR-mixed.jsonl"):
        assert main(["evaluate", str(path), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1]
    metrics = results[0]
    assert metrics["R@5,0.5"] >= metrics["R@0.5"] and metrics["R@5,0.7"] >= metrics["R@0.7"]
    # the run's own evaluation of the same model on the same split
    run_metrics = json.loads((root / "run" / "metrics.json").read_text())["explicit"]["SpanDETR-mixed"]
    assert metrics["mIoU"] == pytest.approx(run_metrics["mIoU"]) and metrics["R@5,0.5"] == pytest.approx(run_metrics["R@5,0.5"])
    assert main(["evaluate", str(out / "SpanDETR-mixed.parquet")]) == 0
    assert "R@5,0.5" in capsys.readouterr().out


def test_the_readme_python_api_example_runs(tiny_run, capsys):
    text = (ROOT / "README.md").read_text()
    example = re.search(r"\*\*Python API\.\*\*.*?```python\n(.*?)```", text, re.S).group(1)
    exec(compile(example.replace('"runs/demo', f'"{tiny_run.root}'), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(re.search(r"s of [\d.]+ s \(score 1\.00\), 1 span\(s\)$", line) for line in lines)  # the regressor gives one span
