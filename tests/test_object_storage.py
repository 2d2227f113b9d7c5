"""Stores, predictions and checkpoints in object storage: a real S3-compatible server on 127.0.0.1 (SeaweedFS,
the `s3_server` fixture), reached through pyarrow's filesystems with the standard AWS environment variables."""

import json

import numpy as np
import pyarrow.fs
import pytest

from cu_scale.cli import main
from cu_scale.data.store import FeatureStore, StoreError
from cu_scale.evaluation.predictions import PredictionsWriter, evaluate_predictions, iter_predictions, prediction_record
from cu_scale.stages.training import CheckpointError, read_checkpoint, record_files, verify_checkpoint
from cu_scale.storage import StorageError, locate


def _objects(uri: str) -> dict[str, bytes]:
    """Every object under an s3:// prefix, read back: name → content."""
    where = locate(uri)
    return {name: (where / name).read_bytes() for name in where.walk_files()}


def test_a_store_prepared_into_s3_reads_verifies_and_names_a_damaged_shard(s3_bucket, tmp_path, capsys):
    from test_store import _write_small_store  # the store writer, five videos in three shards

    _write_small_store(f"{s3_bucket}/store")
    _write_small_store(tmp_path / "local")
    remote, local = FeatureStore(f"{s3_bucket}/store"), FeatureStore(tmp_path / "local")
    assert not remote.path.is_local and len(remote.shards) == 3
    # The same bytes as on local disk (the manifests differ only in their time of creation).
    assert [s["samples_sha256"] for s in remote.shards] == [s["samples_sha256"] for s in local.shards]
    assert remote.samples_table().equals(local.samples_table()) and remote.verify() == []
    remote.require_intact()
    assert np.array_equal(remote.video_features("v3")[0], local.video_features("v3")[0])
    # Nothing is staged beside it: in object storage the manifest, written last, is what makes a store.
    assert sorted(name.split("/")[0] for name in _objects(s3_bucket)) == ["store"] * len(_objects(s3_bucket))

    assert main(["store", "info", f"{s3_bucket}/store", "--verify"]) == 0
    assert "all shard checksums match" in capsys.readouterr().out
    shard = remote.path / remote.shards[1]["videos_file"]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(StoreError, match=rf"{shard}: \d+ bytes where the manifest has"):
        remote.require_intact()
    assert main(["store", "info", f"{s3_bucket}/store", "--verify"]) == 1
    assert capsys.readouterr().err.strip() == f"cu-scale: {shard}: checksum differs from manifest.json"
    # Overwriting needs --overwrite there as here; a second store beside it is its own prefix.
    with pytest.raises(FileExistsError, match=f"{s3_bucket}/store already exists"):
        _write_small_store(f"{s3_bucket}/store")


def test_predictions_and_checkpoints_are_read_and_checked_in_s3(s3_bucket, tmp_path, capsys):
    import torch

    records = [prediction_record(f"s{i}", "v", "q", (1.0, 3.0 + i), (1.0, 4.0), 10.0, spans=([1.0, 0.0], [3.0 + i, 2.0], [0.9, 0.1])) for i in range(3)]
    for name, parquet in (("p.parquet", True), ("p.jsonl", False)):
        writer = PredictionsWriter(f"{s3_bucket}/predictions/{name}", parquet=parquet)
        for record in records:
            writer.write(record)
        assert str(writer.close()) == f"{s3_bucket}/predictions/{name}"
    assert sorted(_objects(f"{s3_bucket}/predictions")) == ["p.jsonl", "p.parquet"]  # no partial file left behind
    metrics = evaluate_predictions(iter_predictions(f"{s3_bucket}/predictions/p.parquet"))
    assert metrics == evaluate_predictions(iter_predictions(f"{s3_bucket}/predictions/p.jsonl")) and metrics["R@0.5"] == pytest.approx(100.0)
    assert main(["evaluate", f"{s3_bucket}/predictions/p.parquet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["R@0.5"] == pytest.approx(100.0)

    # A checkpoint as Ray Train persists it: written on a worker's disk with its file list, then uploaded.
    local = tmp_path / "checkpoint"
    (local / "global_step2").mkdir(parents=True)
    (local / "latest").write_text("global_step2")
    (local / "cu_scale_epoch.json").write_text(json.dumps({"epoch": 1, "model": {}}))
    torch.save({"module": {"weight": torch.arange(4.0)}}, local / "global_step2" / "mp_rank_00_model_states.pt")
    record_files(local, rank=0)
    remote = locate(f"{s3_bucket}/run/implicit/checkpoint_2026-12-06_00-00-00.000000")
    for path in local.rglob("*"):
        if path.is_file():
            (remote / str(path.relative_to(local))).write_bytes(path.read_bytes())
    meta, states = read_checkpoint(remote)
    assert meta["epoch"] == 1 and torch.equal(states["weight"], torch.arange(4.0))
    weights = remote / "global_step2" / "mp_rank_00_model_states.pt"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=rf"{weights}: 50 bytes where \d+ were written"):
        verify_checkpoint(remote)


def test_credentials_never_travel_in_a_uri_or_into_what_is_written(s3_bucket, s3_server):
    with pytest.raises(StorageError, match="may not carry credentials") as refused:
        locate(f"s3://AKIAEXAMPLE:{s3_server['secret']}@bucket/store")
    assert s3_server["secret"] not in str(refused.value) and "AKIAEXAMPLE" not in str(refused.value)
    with pytest.raises(StorageError, match="not a location cu-scale can open"):
        locate("nosuchscheme://bucket/store")
    # pyarrow reads the keys from the environment: no file of ours names them.
    from test_store import _write_small_store

    _write_small_store(f"{s3_bucket}/store")
    assert all(s3_server["secret"].encode() not in data and s3_server["env"]["AWS_ACCESS_KEY_ID"].encode() not in data for data in _objects(s3_bucket).values())
    assert isinstance(locate(s3_bucket).fs, pyarrow.fs.S3FileSystem)
