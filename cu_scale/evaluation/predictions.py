"""Predictions files and their evaluation: `cu-scale evaluate PREDICTIONS`.

A predictions file is JSON Lines, one query per line:

    {"sample_id": "test-3MSZA-0", "video_id": "3MSZA", "query": "person turns on the light.",
     "pred": [2.4, 8.1], "gt": [0.0, 6.9], "duration": 30.2,
     "spans": [[2.4, 8.1, 0.91], [0.0, 7.5, 0.40], ...], "label_kind": "single-frame"}

``pred`` and ``gt`` are [start, end] in seconds; ``gt`` is null or absent when unknown; ``duration``
is optional. ``spans`` (optional) are the model's ranked spans, best first, [start, end, score] each; when
given, ``pred`` is the first. ``label_kind`` (optional) is the kind of label the sample had in its store.
Metrics (`cu_scale.evaluation.metrics`) are computed over the lines with ground truth, and the ground
truth is clipped to [0, duration] first when the duration is known (Charades-STA has moments that
overshoot the recorded video). A file with several spans for some query also gets R@5 at IoU 0.5 and
0.7; a file with several label kinds also gets the metrics of each kind.

The same records go to Parquet for large corpora (`PredictionsWriter(parquet=True)`), with spans as three
list columns (spans_start, spans_end, spans_score); `read_predictions` reads either.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cu_scale.evaluation.metrics import TOP_K, TOP_K_THRESHOLDS, IoUTally, recall_at_k, temporal_iou
from cu_scale.storage import Location, json_objects, locate


class PredictionsError(ValueError):
    """A predictions file that cannot be read; the message names the file and the line."""


def _span(value) -> list[float] | None:
    if value is None:
        return None
    start, end = (float(v) for v in value)
    return None if math.isnan(start) or math.isnan(end) else [start, end]


def prediction_record(sample_id, video_id, query, pred, gt, duration, spans=None, label_kind=None) -> dict:
    """One line of a predictions file, from numpy or Python values (NaN ground truth becomes null).
    `spans`: (starts, ends, scores) of the ranked spans, best first."""
    record = {
        "sample_id": str(sample_id),
        "video_id": str(video_id),
        "query": str(query),
        "pred": _span(pred),
        "gt": _span(gt),
        "duration": float(duration),
    }
    if spans is not None:
        record["spans"] = [[float(s), float(e), float(c)] for s, e, c in zip(*spans)]
    if label_kind is not None:
        record["label_kind"] = str(label_kind)
    return record


PARQUET_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("video_id", pa.string()), ("query", pa.string()),
    ("pred_start", pa.float64()), ("pred_end", pa.float64()), ("gt_start", pa.float64()), ("gt_end", pa.float64()),
    ("duration", pa.float64()), ("spans_start", pa.list_(pa.float64())), ("spans_end", pa.list_(pa.float64())),
    ("spans_score", pa.list_(pa.float64())), ("label_kind", pa.string()),
])
PARQUET_ROWS = 8192  # records per row group


class PredictionsWriter:
    """Writes a predictions file a record at a time, which appears at PATH only when `close` is called: a
    reader never sees half a file (`cu_scale.storage.Location.replaced`). JSON Lines, or with `parquet` a
    Parquet file (PARQUET_SCHEMA) a row group at a time. PATH may be a local path or an object-store URI."""

    def __init__(self, path: "str | os.PathLike | Location", parquet: bool = False):
        self.path = locate(path)
        self._replacing = self.path.replaced()
        partial = self._replacing.__enter__()
        self.parquet = pq.ParquetWriter(partial.path, PARQUET_SCHEMA, filesystem=partial.fs) if parquet else None
        self.out = None if parquet else partial.fs.open_output_stream(partial.path)
        self.rows: list[dict] = []

    def write(self, record: dict) -> None:
        if self.parquet is None:
            self.out.write((json.dumps(record) + "\n").encode("utf-8"))
            return
        spans = record.get("spans") or []
        gt = record.get("gt") or (None, None)
        self.rows.append({
            "sample_id": record["sample_id"], "video_id": record.get("video_id"), "query": record.get("query"),
            "pred_start": record["pred"][0], "pred_end": record["pred"][1], "gt_start": gt[0], "gt_end": gt[1],
            "duration": record.get("duration"), "spans_start": [s[0] for s in spans], "spans_end": [s[1] for s in spans],
            "spans_score": [s[2] for s in spans], "label_kind": record.get("label_kind"),
        })
        if len(self.rows) >= PARQUET_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.parquet.write_table(pa.Table.from_pylist(self.rows, schema=PARQUET_SCHEMA))
            self.rows = []

    def close(self) -> Location:
        if self.parquet is None:
            self.out.close()
        else:
            self._flush()
            self.parquet.close()
        self._replacing.__exit__(None, None, None)
        return self.path


def write_predictions(records: list[dict], path: "str | os.PathLike | Location") -> Location:
    writer = PredictionsWriter(path)
    for record in records:
        writer.write(record)
    return writer.close()


def _parquet_records(path: Location):
    """(where, record) of a Parquet predictions file, a row group at a time."""
    try:
        table = pq.ParquetFile(path.open_input())
    except (OSError, pa.ArrowException) as error:
        raise PredictionsError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None
    missing = {"sample_id", "pred_start", "pred_end"} - set(table.schema_arrow.names)
    if missing:
        raise PredictionsError(f"{path}: the column(s) {sorted(missing)} are missing")
    number = 0
    for rows in _read_or_name(path, (batch.to_pylist() for batch in table.iter_batches(batch_size=PARQUET_ROWS))):
        for row in rows:
            number += 1
            record = {key: row.get(key) for key in ("sample_id", "video_id", "query", "duration", "label_kind") if row.get(key) is not None}
            record["pred"] = [row["pred_start"], row["pred_end"]]
            record["gt"] = None if row.get("gt_start") is None else [row["gt_start"], row.get("gt_end")]
            if row.get("spans_start"):
                sides = [row.get(f"spans_{side}") or [] for side in ("start", "end", "score")]
                if not all(isinstance(side, list) for side in sides):
                    raise PredictionsError(f"{path}:row {number}: spans_start, spans_end and spans_score must be lists of numbers")
                if len({len(side) for side in sides}) > 1:
                    raise PredictionsError(f"{path}:row {number}: spans_start, spans_end and spans_score differ in length ({', '.join(str(len(s)) for s in sides)})")
                record["spans"] = [list(span) for span in zip(*sides)]
            yield f"{path}:row {number}", record


def _read_or_name(path: Location, items):
    """`items` as they are read; a file that breaks off or is not what it says is a PredictionsError naming it."""
    try:
        yield from items
    except (UnicodeDecodeError, OSError, pa.ArrowException) as error:
        raise PredictionsError(f"{path}: cannot be read to its end ({str(error).splitlines()[0]})") from None


def _json_records(path: Location):
    with path.open_text() as text:
        yield from json_objects(_read_or_name(path, text), path, PredictionsError)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def iter_predictions(path: str | os.PathLike):
    """The records of a predictions file (JSON Lines, or Parquet by its .parquet suffix), checked, one at a
    time; a bad line raises `PredictionsError` naming it."""
    path = locate(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: no such predictions file")
    count = 0
    for where, record in (_parquet_records(path) if path.name.lower().endswith(".parquet") else _json_records(path)):
        for field in ("sample_id", "pred"):
            if field not in record:
                raise PredictionsError(f"{where}: the field {field!r} is missing")
        for field in ("pred", "gt"):
            value = record.get(field)
            if field == "gt" and value is None:
                continue
            if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
                raise PredictionsError(f"{where}: {field} must be [start, end] in seconds, got {value!r}")
            if value[1] < value[0]:
                raise PredictionsError(f"{where}: {field} ends before it starts: {value}")
        spans = record.get("spans")
        if spans is not None:
            if not isinstance(spans, list) or not spans:
                raise PredictionsError(f"{where}: spans must be a non-empty list of [start, end, score], got {spans!r}")
            for k, span in enumerate(spans):
                if not (isinstance(span, list) and len(span) == 3 and all(_is_number(v) for v in span) and span[0] <= span[1]):
                    raise PredictionsError(f"{where}: spans[{k}] must be [start, end, score] with start ≤ end, got {span!r}")
        if not isinstance(record["sample_id"], (str, int)) or isinstance(record["sample_id"], bool):
            raise PredictionsError(f"{where}: sample_id must be text or an integer, got {record['sample_id']!r}")
        if "label_kind" in record and not isinstance(record["label_kind"], str):
            raise PredictionsError(f"{where}: label_kind must be text, got {record['label_kind']!r}")
        duration = record.get("duration")
        if duration is not None and (not _is_number(duration) or duration <= 0):
            raise PredictionsError(f"{where}: duration must be a positive number of seconds, got {duration!r}")
        count += 1
        yield record
    if not count:
        raise PredictionsError(f"{path}: no predictions in the file")


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """Every record of a predictions file, checked (`iter_predictions`)."""
    return list(iter_predictions(path))


def _clipped_gt(records: list[dict]) -> np.ndarray:
    gt = np.array([r["gt"] for r in records], float).reshape(-1, 2)
    duration = np.array([r.get("duration") or np.inf for r in records], float)
    return np.stack([np.clip(gt[:, 0], 0, duration), np.clip(gt[:, 1], 0, duration)], axis=1)


def prediction_ious(records: list[dict]) -> np.ndarray:
    """Temporal IoU of each record with ground truth (ground truth clipped to the duration when known)."""
    scored = [r for r in records if r.get("gt") is not None]
    pred = np.array([r["pred"] for r in scored], float).reshape(-1, 2)
    gt = _clipped_gt(scored)
    return temporal_iou(pred[:, 0], pred[:, 1], gt[:, 0], gt[:, 1])


def ranked_ious(records: list[dict], k: int = TOP_K) -> np.ndarray:
    """(n, k) IoUs of the first k ranked spans of each record with ground truth (its pred alone when it has
    no spans), NaN where it has fewer."""
    scored = [r for r in records if r.get("gt") is not None]
    gt = _clipped_gt(scored)
    out = np.full((len(scored), k), np.nan)
    for i, record in enumerate(scored):
        spans = np.array([s[:2] for s in record.get("spans") or [record["pred"]]], float)[:k]
        out[i, : len(spans)] = temporal_iou(spans[:, 0], spans[:, 1], gt[i, 0], gt[i, 1])
    return out


EVALUATION_CHUNK = 65536  # records scored at a time: memory stays at a chunk whatever the file's size


def evaluate_predictions(records) -> dict:
    """R@0.3/0.5/0.7 and mIoU in percent over the records with ground truth, and the counts; with several
    spans for some query, R@5 at IoU 0.5 and 0.7 (``R@5,0.5``, ``R@5,0.7``); with several label kinds, the
    R@1 metrics of each under ``by_label_kind``. `records` may be any iterable (`iter_predictions`): they are
    scored a chunk at a time."""
    tally, top_k, kinds = IoUTally(), {f"R@{TOP_K},{m}": 0 for m in TOP_K_THRESHOLDS}, {}
    total, ranked = 0, False
    chunk: list[dict] = []

    def score(chunk: list[dict]) -> None:
        nonlocal ranked
        scored = [r for r in chunk if r.get("gt") is not None]
        if not scored:
            return
        ious = prediction_ious(scored)
        tally.add(ious)
        ranked = ranked or any(len(r.get("spans") or ()) > 1 for r in scored)
        for name, value in recall_at_k(ranked_ious(scored)).items():
            top_k[name] += value * len(scored) / 100
        labels = np.array([r.get("label_kind") or "" for r in scored])
        for kind in np.unique(labels):
            kinds.setdefault(str(kind), IoUTally()).add(ious[labels == kind])

    for record in records:
        total += 1
        chunk.append(record)
        if len(chunk) >= EVALUATION_CHUNK:
            score(chunk)
            chunk = []
    score(chunk)
    if not tally.count:
        raise PredictionsError("no prediction has ground truth to score against")
    metrics = {**tally.metrics(), "scored": tally.count, "predictions": total}
    if ranked:
        metrics.update({name: 100 * hits / tally.count for name, hits in top_k.items()})
    named = {kind: t for kind, t in kinds.items() if kind}
    if len(named) > 1:
        metrics["by_label_kind"] = {kind: {**t.metrics(), "scored": t.count} for kind, t in sorted(named.items())}
    return metrics
