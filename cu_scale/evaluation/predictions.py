"""Predictions files and their evaluation: `cu-scale evaluate PREDICTIONS`.

A predictions file is JSON Lines, one query per line:

    {"sample_id": "test-3MSZA-0", "video_id": "3MSZA", "query": "person turns on the light.",
     "pred": [2.4, 8.1], "gt": [0.0, 6.9], "duration": 30.2}

``pred`` and ``gt`` are [start, end] in seconds; ``gt`` is null or absent when unknown; ``duration``
is optional. Metrics (`cu_scale.evaluation.metrics`) are computed over the lines with ground truth, and the ground
truth is clipped to [0, duration] first when the duration is known (Charades-STA has moments that
overshoot the recorded video).
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np

from cu_scale.evaluation.metrics import grounding_metrics, temporal_iou


class PredictionsError(ValueError):
    """A predictions file that cannot be read; the message names the file and the line."""


def _span(value) -> list[float] | None:
    if value is None:
        return None
    start, end = (float(v) for v in value)
    return None if math.isnan(start) or math.isnan(end) else [start, end]


def prediction_record(sample_id, video_id, query, pred, gt, duration) -> dict:
    """One line of a predictions file, from numpy or Python values (NaN ground truth becomes null)."""
    return {
        "sample_id": str(sample_id),
        "video_id": str(video_id),
        "query": str(query),
        "pred": _span(pred),
        "gt": _span(gt),
        "duration": float(duration),
    }


class PredictionsWriter:
    """Writes a predictions file a record at a time, into PATH.partial, renamed to PATH by `close`:
    a reader never sees half a file."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.out = open(self.partial, "w")

    def write(self, record: dict) -> None:
        self.out.write(json.dumps(record) + "\n")

    def close(self) -> pathlib.Path:
        self.out.close()
        self.partial.replace(self.path)
        return self.path


def write_predictions(records: list[dict], path: str | os.PathLike) -> pathlib.Path:
    writer = PredictionsWriter(path)
    for record in records:
        writer.write(record)
    return writer.close()


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """Every record of a predictions file, checked; a bad line raises `PredictionsError` naming it."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: no such predictions file")
    records = []
    with open(path) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PredictionsError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise PredictionsError(f"{where}: expected a JSON object, got {type(record).__name__}")
            for field in ("sample_id", "pred"):
                if field not in record:
                    raise PredictionsError(f"{where}: the field {field!r} is missing")
            for field in ("pred", "gt"):
                value = record.get(field)
                if field == "gt" and value is None:
                    continue
                if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                    raise PredictionsError(f"{where}: {field} must be [start, end] in seconds, got {value!r}")
                if value[1] < value[0]:
                    raise PredictionsError(f"{where}: {field} ends before it starts: {value}")
            duration = record.get("duration")
            if duration is not None and (not isinstance(duration, (int, float)) or duration <= 0):
                raise PredictionsError(f"{where}: duration must be a positive number of seconds, got {duration!r}")
            records.append(record)
    if not records:
        raise PredictionsError(f"{path}: no predictions in the file")
    return records


def prediction_ious(records: list[dict]) -> np.ndarray:
    """Temporal IoU of each record with ground truth (ground truth clipped to the duration when known)."""
    scored = [r for r in records if r.get("gt") is not None]
    pred = np.array([r["pred"] for r in scored], float).reshape(-1, 2)
    gt = np.array([r["gt"] for r in scored], float).reshape(-1, 2)
    duration = np.array([r.get("duration") or np.inf for r in scored], float)
    gt = np.stack([np.clip(gt[:, 0], 0, duration), np.clip(gt[:, 1], 0, duration)], axis=1)
    return temporal_iou(pred[:, 0], pred[:, 1], gt[:, 0], gt[:, 1])


def evaluate_predictions(records: list[dict]) -> dict:
    """R@0.3/0.5/0.7 and mIoU in percent over the records with ground truth, and the counts."""
    ious = prediction_ious(records)
    if not len(ious):
        raise PredictionsError("no prediction has ground truth to score against")
    return {**grounding_metrics(ious), "scored": int(len(ious)), "predictions": len(records)}
