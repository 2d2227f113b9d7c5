"""Damaged artifacts are named, not loaded: truncated or altered checkpoints (the inference path and the
resume path) and store shards, each stopped with an error that names the file and the check that failed."""

import shutil

import pytest

from cu_scale.cli import main
from cu_scale.stages.training import CheckpointError, checkpoints, read_checkpoint, record_files, verify_checkpoint


def _write_checkpoint(directory, files: dict[str, bytes], rank: int = 0):
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    record_files(directory, rank)


def test_each_rank_lists_its_files_and_any_change_to_one_is_named(tmp_path):
    _write_checkpoint(tmp_path, {"latest": b"global_step4", "global_step4/mp_rank_00_model_states.pt": b"w" * 1000})
    _write_checkpoint(tmp_path, {"global_step4/zero_pp_rank_1_mp_rank_00_optim_states.pt": b"o" * 500}, rank=1)
    verify_checkpoint(tmp_path)  # as written: nothing to say

    weights = tmp_path / "global_step4" / "mp_rank_00_model_states.pt"
    weights.write_bytes(b"w" * 999)
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states.pt: 999 bytes where 1000 were written"):
        verify_checkpoint(tmp_path)
    weights.write_bytes(b"x" + b"w" * 999)  # same size, other bytes
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states.pt: SHA-256 differs"):
        verify_checkpoint(tmp_path)
    weights.write_bytes(b"w" * 1000)
    (tmp_path / "global_step4" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()  # rank 1's file
    with pytest.raises(CheckpointError, match=r"zero_pp_rank_1_mp_rank_00_optim_states.pt: missing"):
        verify_checkpoint(tmp_path)


def test_weights_are_loaded_without_running_code(tmp_path):
    """A model-states file that pickles a callable is refused by torch.load(weights_only=True), by name."""
    import torch

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "cu_scale_epoch.json").write_text('{"epoch": 0, "model": {}}')
    (tmp_path / "latest").write_text("global_step1")
    (tmp_path / "global_step1").mkdir()
    torch.save({"module": {"w": torch.zeros(2)}, "extra": Payload()}, tmp_path / "global_step1" / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states.pt: cannot be loaded as weights"):
        read_checkpoint(tmp_path)
    torch.save({"module": {"w": torch.zeros(2)}, "ds_version": "0.19.8"}, tmp_path / "global_step1" / "mp_rank_00_model_states.pt")
    meta, states = read_checkpoint(tmp_path)
    assert meta["epoch"] == 0 and states["w"].shape == (2,)


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the shared tiny run, free to damage, with a config that points at it."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run.root, copy)
    config = tmp_path / "run.yaml"
    config.write_text(tiny_run.config.read_text().replace(str(tiny_run.root), str(copy)))
    for marker in copy.glob("stages/*.json"):  # the stage markers record the paths they ran with
        marker.write_text(marker.read_text().replace(str(tiny_run.root), str(copy)))
    return copy, config


def _truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_checkpoint_is_named_by_inference_and_by_resume(run_copy, tmp_path, capsys):
    import numpy as np

    run, config = run_copy
    explicit = checkpoints(run / "explicit" / "BoundaryRegressor-pseudo")[-1]
    weights = explicit.glob("global_step*/mp_rank_00_model_states.pt")[0]
    _truncate(weights)
    features = tmp_path / "video.npy"
    np.save(features, np.zeros((16, 64), np.float32))
    assert main(["predict", "--run", str(run), "--features", str(features), "--duration", "30", "--query", "a person opens a door"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"{weights}: " in error and "truncated or altered" in error

    # Resuming the implicit stage from a damaged checkpoint stops before any worker starts, by name.
    implicit = checkpoints(run / "implicit")[-1]
    optimizer = implicit.glob("global_step*/*optim_states.pt")[0]
    _truncate(optimizer, keep=0.9)
    assert main(["implicit", str(config), "--set", "implicit.epochs=8"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"{optimizer}: " in error and "--from" in error


def _alter(path):
    """Flip one byte in the middle: the size stays, the content does not."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_shard_is_named_by_its_readers_and_by_verify_and_the_others_still_read(tmp_path, capsys):
    from test_store import _write_small_store

    from cu_scale.data.store import FeatureStore, StoreError

    _write_small_store(tmp_path / "store")  # 5 videos, 2 a shard: 3 shards
    store = FeatureStore(tmp_path / "store")
    before = [(store.shard_videos(i), store.shard_samples(i)) for i in range(3)]
    truncated = tmp_path / "store" / store.shards[1]["videos_file"]
    altered = tmp_path / "store" / store.shards[2]["samples_file"]
    _truncate(truncated, keep=0.6)
    _alter(altered)

    assert main(["store", "info", str(tmp_path / "store"), "--verify"]) == 1
    captured = capsys.readouterr()
    assert "FAILED: 2 problem(s)" in captured.out
    assert captured.err.splitlines() == [f"cu-scale: {truncated}: checksum differs from manifest.json", f"cu-scale: {altered}: checksum differs from manifest.json"]

    with pytest.raises(StoreError, match=rf"{truncated}: \d+ bytes where the manifest has \d+ \(truncated"):
        store.require_intact()  # what every stage after prepare runs first
    with pytest.raises(StoreError, match=rf"{truncated}: \d+ bytes where the manifest has"):
        store.shard_videos(1)
    with pytest.raises(StoreError, match=rf"{altered}: SHA-256 differs from the manifest's"):
        store.shard_samples(2)
    with pytest.raises(StoreError, match=rf"{altered}: SHA-256 differs"):
        store.examples(["e"])  # sample e lives in shard 2
    # Shard 0 is untouched and reads as before, features included.
    assert store.shard_videos(0).equals(before[0][0]) and store.shard_samples(0).equals(before[0][1])


def test_a_stage_stops_at_a_damaged_shard_by_name(run_copy, capsys):
    from cu_scale.data.store import FeatureStore

    run, config = run_copy
    store = FeatureStore(run / "store")
    videos = run / "store" / store.shards[0]["videos_file"]
    original = videos.read_bytes()
    _truncate(videos, keep=0.7)
    assert main(["run", str(config), "--from", "evaluate"]) == 2  # stopped before the stage starts
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"{videos}: " in error and "truncated or altered after prepare" in error

    videos.write_bytes(original)
    _alter(videos)  # the right size: the read task's checksum catches it
    assert main(["run", str(config), "--from", "evaluate"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"{videos}: SHA-256 differs from the manifest's" in error, error
