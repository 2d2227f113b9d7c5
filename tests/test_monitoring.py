"""The TensorBoard log a training writes, read back from its event file (the Ray metrics are read from a real
head's endpoint in test_jobs.py)."""

import struct

import pytest

from cu_scale.stages.monitoring import TrainingMonitor, training_monitor_settings


def _scalars(event_file) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard event file: TFRecords of Event protos (length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    data = event_file.read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_rank_0_logs_each_epoch_to_tensorboard_and_returns_its_throughput(tmp_path):
    settings = training_monitor_settings(str(tmp_path / "run"), "explicit/SpanDETR-pseudo")
    assert settings == {"stage": "explicit/SpanDETR-pseudo", "run": "run", "tensorboard_dir": str(tmp_path / "run" / "tensorboard" / "explicit" / "SpanDETR-pseudo"), "heartbeat": None}
    monitor = TrainingMonitor(**settings, rank=0)
    for epoch, loss in enumerate((2.5, 1.25)):
        for _ in range(4):
            monitor.step(32)
        speed = monitor.epoch(epoch, {"loss_total": loss, "loss_raml": loss / 5, "learning_rate": 1e-3, "epoch": epoch})
        assert speed > 0
    monitor.close()
    scalars = _scalars(next((tmp_path / "run" / "tensorboard" / "explicit" / "SpanDETR-pseudo").glob("events.out.tfevents.*")))
    assert scalars["loss/total"] == [(1, 2.5), (2, 1.25)]
    assert scalars["loss/raml"] == [(1, pytest.approx(0.5)), (2, pytest.approx(0.25))]
    assert [step for step, _ in scalars["samples_per_second"]] == [1, 2] and scalars["learning_rate"][0][1] == pytest.approx(1e-3)


def test_other_ranks_write_no_tensorboard_log(tmp_path):
    monitor = TrainingMonitor(**training_monitor_settings(str(tmp_path / "run"), "implicit"), rank=1)
    monitor.step(8)
    assert monitor.epoch(0, {"loss_total": 1.0}) > 0
    monitor.close()
    assert not (tmp_path / "run" / "tensorboard").exists()
