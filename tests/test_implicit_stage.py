"""The implicit stage end to end on the shared tiny run's store through a real local Ray: Ray Train +
DeepSpeed training on one and two workers, checkpoints and resume, pseudo-labels, the loss ablation. (A
worker group restarted from its checkpoint after a lost node, and a killed driver's run resumed, are in
tests/test_jobs.py.)"""

import json
import pathlib
import shutil
import time

import pyarrow.parquet as pq
import pytest
import torch

from cu_scale.cli import main
from cu_scale.config import load_config
from cu_scale.stages.implicit import load_implicit_model
from cu_scale.stages.training import CHECKPOINT_META, checkpoint_meta, latest_checkpoint
from cu_scale.data.store import FeatureStore


@pytest.fixture(scope="module")
def tiny(tiny_run, tmp_path_factory):
    """A run of its own on the shared tiny run's store (prepared, encoded, clustered with K 4, m 2)."""
    root = tmp_path_factory.mktemp("implicit")
    config = root / "run.yaml"
    config.write_text(
        f"store: {tiny_run.store}\nrun_dir: {root / 'run'}\ncluster: {{k: 4, memberships: 2}}\n"
        "batches: {batch_size: 16, clusters_per_batch: 2}\nimplicit: {epochs: 2, hidden_dim: 32, heads: 2}\n"
    )
    return root, config


def _epoch_of(checkpoint: pathlib.Path) -> int:
    return json.loads((checkpoint / CHECKPOINT_META).read_text())["epoch"]


def test_train_report_checkpoint_resume_and_pseudo_label(tiny, capsys):
    root, config_path = tiny
    started = time.perf_counter()
    warmup = ["--set", "implicit.raun_warmup_epochs=1"]  # L_raun joins in the second epoch
    assert main(["implicit", str(config_path), *warmup]) == 0
    out = capsys.readouterr().out
    assert "implicit     2 epoch(s) on 1 worker(s)" in out
    for term in ("raml", "raun", "erml", "erun", "cont", "grnd", "total"):
        assert f" {term} " in out
    assert _epoch_of(latest_checkpoint(root / "run" / "implicit")) == 1
    history = checkpoint_meta(latest_checkpoint(root / "run" / "implicit"))["history"]
    assert history[0]["loss_raun"] == 0 and history[1]["loss_raun"] > 0 and history[0]["loss_raml"] > 0

    # Restarted with more epochs, the same run resumes from its latest checkpoint: only epoch 2 is trained.
    assert main(["implicit", str(config_path), "--set", "implicit.epochs=3", *warmup]) == 0
    assert "implicit     3 epoch(s)" in capsys.readouterr().out
    assert json.loads((latest_checkpoint(root / "run" / "implicit") / CHECKPOINT_META).read_text())["epoch"] == 2
    assert _epoch_of(latest_checkpoint(root / "run" / "implicit")) == 2

    # One store shard and as many inference actors as CPUs: the actors are sized so that the shard's read
    # task still gets a CPU (it used to wait forever); the watchdog would stop a stall within a minute.
    assert main(["pseudo-label", str(config_path), "--set", "encode.actors=2", "--set", "watchdog_seconds=60"]) == 0
    out = capsys.readouterr().out
    table = pq.read_table(root / "run" / "pseudo_labels").to_pydict()  # one file per store shard
    store = FeatureStore(load_config(config_path).store)
    assert len(table["sample_id"]) == store.manifest["counts"]["splits"]["train"]["samples"]
    assert all(0 <= s <= e <= d + 1e-4 for s, e, d in zip(table["pseudo_start"], table["pseudo_end"], table["duration"]))
    assert "pseudo-labels" in out and "partial label as is" in out and "partial widened to mean length" in out
    assert time.perf_counter() - started < 240

    # A checkpoint from another version, with a model setting this one does not know, is refused by name.
    foreign = root / "foreign-checkpoint"
    shutil.copytree(latest_checkpoint(root / "run" / "implicit"), foreign)
    meta = json.loads((foreign / CHECKPOINT_META).read_text())
    meta["model"]["detector"] = "boundary"
    (foreign / CHECKPOINT_META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"cu_scale_epoch\.json: model settings detector are unknown"):
        load_implicit_model(foreign)
    assert isinstance(load_implicit_model(latest_checkpoint(root / "run" / "implicit")), torch.nn.Module)


def test_ablate_prints_table_ii_rows_and_reuses_finished_rows(tiny, capsys):
    from cu_scale.ops.ablation import ROWS, format_table

    root, config_path = tiny
    assert main(["ablate", str(config_path), "--rows", "A5", "--set", "implicit.epochs=1"]) == 0
    out = capsys.readouterr().out
    a5 = next(line for line in out.splitlines() if line.startswith("A5 "))
    assert a5.count("✓") == 2
    # Each row is a run of its own, its stages recorded like every run's.
    row = root / "run" / "ablation" / "A5"
    metrics = json.loads((row / "stages" / "pseudo-label.json").read_text())["summary"]["metrics"]["pseudo-labels"]
    assert set(metrics) == {"R@0.3", "R@0.5", "R@0.7", "mIoU"}
    assert f"{metrics['mIoU']:.2f}" in a5
    implicit = json.loads((row / "stages" / "implicit.json").read_text())["settings"]["implicit"]
    assert (implicit["use_raml"], implicit["use_raun"], implicit["use_erml"], implicit["use_erun"]) == (True, False, False, True)

    # A finished row is read back, not trained again: no new checkpoint appears.
    before = sorted((row / "implicit").glob("checkpoint_2*"))
    assert main(["ablate", str(config_path), "--rows", "A5", "--set", "implicit.epochs=1"]) == 0
    assert "✓ implicit" in capsys.readouterr().out
    assert sorted((row / "implicit").glob("checkpoint_2*")) == before
    # (A row whose settings changed is redone: `redo_changed`, tests/test_pipeline.py.)
    assert main(["ablate", str(config_path), "--rows", "A9"]) == 2
    assert "unknown ablation row 'A9'" in capsys.readouterr().err
    # The layout of paper Table II: one ✓ per loss a row keeps.
    table = format_table({"A1": metrics, "A6": metrics}).splitlines()
    assert table[1].count("✓") == len(ROWS["A1"]) == 1 and table[2].count("✓") == len(ROWS["A6"]) == 4


def test_two_workers_run_the_same_loop_and_contrast_across_their_batches(tiny, tmp_path, capsys):
    root, config_path = tiny
    overrides = ["--set", "implicit.workers=2", "--set", "implicit.epochs=1", "--set", f"run_dir={tmp_path}"]
    assert main(["implicit", str(config_path), "--quiet", *overrides]) == 0
    assert "implicit     1 epoch(s) on 2 worker(s)" in capsys.readouterr().out
    assert _epoch_of(latest_checkpoint(tmp_path / "implicit")) == 0
