"""`cu-scale run` end to end on the shared tiny run (a real local Ray): every stage, the artifacts it leaves,
skipping finished stages, --from, a changed setting, `cu-scale predict` and `evaluate`; the stage table."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from cu_scale.cli import main
from cu_scale.config import ConfigError, load_config
from cu_scale.stages.explicit import model_class
from cu_scale.ops.pipeline import STAGE_NAMES, STAGES, Pipeline
from cu_scale.data.store import FeatureStore


def _checkpoints(directory):
    return sorted(p.name for p in directory.glob("checkpoint_2*"))


def test_run_writes_every_artifact_then_skips_resumes_and_redoes(tiny_run, capsys):
    # The shared tiny run ran every stage (`cu-scale demo`); this test changes it, so it runs after the
    # tests that only read it (pytest runs the files in order of their names).
    root, config, run = tiny_run.root, tiny_run.config, tiny_run.root
    out = tiny_run.printed
    for stage in STAGE_NAMES:
        assert json.loads((run / "stages" / f"{stage}.json").read_text())["stage"] == stage
    assert (run / "pseudo_labels" / "part-00000.parquet").is_file()  # one file per store shard
    predictions = run / "predictions" / "BoundaryRegressor-pseudo.jsonl"
    test_samples = FeatureStore(tiny_run.store).manifest["counts"]["splits"]["test"]["samples"]
    assert len(predictions.read_text().splitlines()) == test_samples
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["pseudo_labels"]) >= {"pseudo-labels", "partial label as is"}
    result = metrics["explicit"]["BoundaryRegressor-pseudo"]
    assert result["label_source"] == "pseudo" and result["split"] == "test" and result["scored"] == test_samples
    report = (run / "report.md").read_text()
    for plot in ("timeline.png", "iou_histogram.png", "training_curves.png"):
        assert f"plots/{plot}" in report
        assert (run / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "BoundaryRegressor-pseudo" in out and "report.md" in out

    # The standalone evaluator recomputes the run's numbers from the predictions file.
    assert main(["evaluate", str(predictions), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mIoU"] == pytest.approx(result["mIoU"])

    # A rerun skips every finished stage and trains nothing.
    implicit_before, explicit_before = _checkpoints(run / "implicit"), _checkpoints(run / "explicit" / "BoundaryRegressor-pseudo")
    assert main(["run", str(config), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert all(f"✓ {stage}" in out for stage in STAGE_NAMES)
    assert _checkpoints(run / "implicit") == implicit_before
    # How many actors a stage uses does not change its results: a finished stage stays finished.
    assert main(["run", str(config), "--quiet", "--set", "encode.actors=2"]) == 0
    out = capsys.readouterr().out
    assert all(f"✓ {stage}" in out for stage in STAGE_NAMES)

    # --from evaluate redoes the evaluation (its files removed first) and the report, and leaves the trained
    # models alone (which stage's artifacts are cleared is the stage table's, tested below for every stage).
    predictions.write_text("")
    assert main(["run", str(config), "--quiet", "--from", "evaluate"]) == 0
    out = capsys.readouterr().out
    assert "✓ explicit" in out and "✓ evaluate" not in out and "✓ report" not in out
    assert len(predictions.read_text().splitlines()) == test_samples
    assert _checkpoints(run / "implicit") == implicit_before and _checkpoints(run / "explicit" / "BoundaryRegressor-pseudo") == explicit_before

    # A changed setting of a finished stage stops the run and names what changed.
    assert main(["run", str(config), "--quiet", "--set", "implicit.epochs=8"]) == 2
    err = capsys.readouterr().err
    assert "stage implicit" in err and "implicit.epochs: 6 → 8" in err and "--from implicit" in err

    # `cu-scale predict` answers one query on one video's features with the trained model.
    examples = FeatureStore(tiny_run.store).examples(["test-demo00039-0"])
    steps = int(examples["mask"][0].sum())
    features = root / "video.npy"
    np.save(features, examples["features"][0][:steps].astype(np.float32))
    query, duration = str(examples["query"][0]), float(examples["duration"][0])
    assert main(["predict", "--run", str(run), "--features", str(features), "--query", query, "--duration", str(duration)]) == 0
    start, end = (float(v) for v in capsys.readouterr().out.split()[:2])
    assert 0 <= start <= end <= duration
    line = next(json.loads(l) for l in predictions.read_text().splitlines() if json.loads(l)["sample_id"] == "test-demo00039-0")
    assert [start, end] == pytest.approx(line["pred"], abs=0.05)  # the same model, the same features
    np.save(features, np.zeros((5, 7), np.float32))
    assert main(["predict", "--run", str(run), "--features", str(features), "--query", query, "--duration", "9"]) == 2
    assert "features must be (steps, 64)" in capsys.readouterr().err


def test_a_model_class_is_named_in_the_config():
    from cu_scale.method.grounding_models import SpanDETR

    assert model_class("cu_scale.method.grounding_models:SpanDETR") is SpanDETR
    assert model_class("cu_scale.grounding_models:SpanDETR") is SpanDETR  # the path configs and checkpoints used before
    with pytest.raises(ValueError, match="explicit.models: cannot import 'no_such_package'"):
        model_class("no_such_package:Model")
    with pytest.raises(ValueError, match="explicit.models: cu_scale.method.grounding_models has no class 'Nope'"):
        model_class("cu_scale.method.grounding_models:Nope")


def test_each_stage_is_one_entry_whose_artifacts_are_cleared_before_it_runs_again(tmp_path):
    config = load_config(pathlib.Path(__file__).parents[1] / "configs" / "demo.yaml", {"store": str(tmp_path / "store"), "run_dir": str(tmp_path / "run")})
    pipeline = Pipeline(config, progress=False, say=lambda line: None)
    assert STAGE_NAMES == ("prepare", "encode", "cluster", "implicit", "pseudo-label", "explicit", "evaluate", "report")
    for stage in STAGES:
        json.dumps(stage.settings(config))  # a marker records them as JSON
        assert callable(stage.run) and (stage.name in ("prepare", "cluster", "report") or stage.hint)
        paths = stage.artifacts(config)
        assert all(path.path.startswith(f"{tmp_path}/") for path in paths), (stage.name, paths)
        for path in paths:  # what the stage would have written, and its marker
            (path / "part-00000.parquet").write_text("") if "." not in path.name else path.write_text("{}")
        pipeline.marker(stage.name).write_text("{}")
        pipeline.clear(stage.name)
        assert not pipeline.marker(stage.name).exists() and not any(path.exists() for path in paths), stage.name
    # What the stages write into a store this run built; a store it only names keeps them.
    assert {p.name for s in STAGES for p in s.artifacts(config)} >= {"embeddings", "words", "implicit", "pseudo_labels", "explicit", "predictions", "metrics.json"}
    unprepared = dataclasses.replace(config, prepare=None)
    assert [p for s in STAGES for p in s.artifacts(unprepared) if p.path.startswith(f"{tmp_path / 'store'}/")] == []


def test_a_stage_that_ran_with_other_settings_stops_the_run_or_is_redone(tmp_path):
    config = load_config(pathlib.Path(__file__).parents[1] / "configs" / "demo.yaml", {"store": str(tmp_path / "store"), "run_dir": str(tmp_path / "run"), "prepare.videos": 4})
    pipeline = Pipeline(config, progress=False, say=lambda line: None)
    assert pipeline.run(stages=("prepare",)) == {"prepare": "ran"}
    assert pipeline.run(stages=("prepare",)) == {"prepare": "skipped"}
    changed = Pipeline(dataclasses.replace(config, prepare=dataclasses.replace(config.prepare, videos=6)), progress=False, say=lambda line: None)
    with pytest.raises(ConfigError, match=r"stage prepare of .* ran with other settings \(prepare.videos: 4 → 6\)"):
        changed.run(stages=("prepare",))
    assert changed.run(stages=("prepare",), redo_changed=True) == {"prepare": "ran"}  # what an ablation row does
    assert FeatureStore(config.store).manifest["counts"]["videos"] == 6

    # A marker written before a setting existed: the stage ran as the default does, so only another value is a change.
    marker = json.loads(pipeline.marker("prepare").read_text())
    del marker["settings"]["prepare"]["full_fraction"]
    pipeline.marker("prepare").write_text(json.dumps(marker))
    assert changed.run(stages=("prepare",)) == {"prepare": "skipped"}
    mixed = Pipeline(dataclasses.replace(changed.config, prepare=dataclasses.replace(changed.config.prepare, full_fraction=0.1)), progress=False, say=lambda line: None)
    with pytest.raises(ConfigError, match=r"prepare.full_fraction: None → 0.1"):
        mixed.run(stages=("prepare",))
