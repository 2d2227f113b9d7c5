"""A user's own corpus: one annotation table, one row per query, in JSON Lines, CSV or Parquet.

Columns (JSON keys; a CSV header; Parquet columns):

    video_id    required  the video the query is about (names its features: VIDEO.npy, an .h5 key, a Parquet row);
                          text, or an integer read as its digits
    query       required  the sentence
    split       required  the stages train on ``train``; the run config's ``explicit.test_split`` is evaluated
    duration    optional  the video's length in seconds (else from a durations table)
    sample_id   optional  a unique id (default SPLIT-ROW, ROW the row's position from 1, blank lines and a CSV
                          header not counted)
    t           optional  a single-frame label: one instant in the moment, in seconds
    start, end  optional  a clip label: a stretch of seconds inside the moment
    gt_start, gt_end  optional  the full moment

What a sample trains from is its partial label when it has one (``t``: kind single-frame, ``start``/``end``:
kind clip), else its full moment (kind full: the moment is the label), else nothing (kind none, an
unlabelled sample). A full moment beside a partial label is ground truth: it scores the pseudo-labels and
the test split, and trains only the ``gt`` label source. A missing value is an absent key, null, an empty
CSV cell or a Parquet null.

A column not listed above is refused (a misspelt ``durtion`` would otherwise be dropped without a word).
A row that cannot be read (a missing column, a number that is not one, ``t`` beside ``start``, a start
without its end, two durations for one video) raises `AnnotationError` naming the file and the line (JSON
Lines, CSV) or row (Parquet). Rows that read but make no sense (an empty query, a label that starts after it
ends or lies outside the video) become samples all the same: the store writer rejects them with their source
and a reason, so that nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib
from typing import Iterator

from cu_scale.data.annotations import AnnotationError, parse_number, read_text, text_lines
from cu_scale.data.records import Sample, Video
from cu_scale.storage import json_objects

FORMATS = {".jsonl": "JSON Lines", ".csv": "CSV", ".parquet": "Parquet"}
REQUIRED = ("video_id", "query", "split")
NUMBERS = ("duration", "t", "start", "end", "gt_start", "gt_end")
COLUMNS = REQUIRED + ("sample_id",) + NUMBERS


def _unknown(names, columns: tuple[str, ...], where: str, only_known: bool) -> None:
    unknown = [name for name in names if name not in columns]
    if only_known and unknown:
        raise AnnotationError(f"{where}: unknown column(s) {unknown}; the format has {', '.join(columns)}")


def _rows(path: pathlib.Path, required: tuple[str, ...], columns: tuple[str, ...], only_known: bool) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row of the table: where is ``path:line`` (JSON Lines, CSV) or ``path:row N``.
    A CSV header or Parquet schema without the `required` columns is refused, and with `only_known` one with
    a column not in `columns`; otherwise the other columns are not read."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise AnnotationError(f"{path}: expected a .jsonl, .csv or .parquet table, got the suffix {path.suffix or 'none'!r}")
    if not path.is_file():
        raise FileNotFoundError(f"table {path} does not exist")
    if suffix == ".jsonl":
        for where, row in json_objects(text_lines(path), path, AnnotationError):
            _unknown(row, columns, where, only_known)
            yield where, row
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        try:
            missing = set(required) - set(reader.fieldnames or ())
            if missing:
                raise AnnotationError(f"{path}:1: the header lacks the column(s) {sorted(missing)}")
            _unknown(reader.fieldnames, columns, f"{path}:1", only_known)
            for row in reader:
                if None in row:
                    raise AnnotationError(f"{path}:{reader.line_num}: more cells than the header has columns")
                yield f"{path}:{reader.line_num}", {key: (value if value != "" else None) for key, value in row.items()}
        except csv.Error as error:
            raise AnnotationError(f"{path}:{reader.line_num}: not readable CSV ({error})") from None
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
            names = table.schema_arrow.names
        except (pa.ArrowException, OSError) as error:
            raise AnnotationError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None
        missing = set(required) - set(names)
        if missing:
            raise AnnotationError(f"{path}: the table lacks the column(s) {sorted(missing)}")
        _unknown(names, columns, str(path), only_known)
        number = 0
        batches = table.iter_batches(columns=[c for c in columns if c in names])
        while True:
            try:
                rows = next(batches).to_pylist()
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as error:
                raise AnnotationError(f"{path}:row {number + 1}: cannot be read ({str(error).splitlines()[0]})") from None
            for row in rows:
                number += 1
                yield f"{path}:row {number}", row


def _number(row: dict, field: str, where: str) -> float | None:
    value = row.get(field)
    return None if value is None else parse_number(value, where, field)


def _text(row: dict, field: str, where: str, integer: bool = False) -> str:
    """A text field; with `integer`, an integer too, read as its digits (an id column Parquet typed as int)."""
    value = row.get(field)
    if value is None:
        raise AnnotationError(f"{where}: the field {field!r} is missing")
    if integer and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise AnnotationError(f"{where}: {field} must be text{' or an integer' if integer else ''}, got {value!r}")
    return value


def _add_duration(durations: dict[str, float], sources: dict[str, str], video_id: str, duration: float, where: str) -> None:
    """Record a video's duration; a second, different one for the same video is an error naming both places."""
    if video_id in durations and abs(durations[video_id] - duration) > 1e-6:
        raise AnnotationError(f"{where}: video {video_id} has duration {duration:g} s here but {durations[video_id]:g} s at {sources[video_id]}")
    durations.setdefault(video_id, duration)
    sources.setdefault(video_id, where)


def _pair(row: dict, first: str, second: str, where: str) -> tuple[float, float] | None:
    a, b = _number(row, first, where), _number(row, second, where)
    if (a is None) != (b is None):
        given, missing = (first, second) if b is None else (second, first)
        raise AnnotationError(f"{where}: {given} is given without {missing}")
    return None if a is None else (a, b)


def read_corpus(path: str | os.PathLike) -> tuple[list[Sample], dict[str, float], dict[str, str]]:
    """The samples of an annotation table, the durations it gives (video id → seconds) and where each came from."""
    path = pathlib.Path(path)
    samples, durations, duration_sources = [], {}, {}
    for number, (where, row) in enumerate(_rows(path, REQUIRED, COLUMNS, only_known=True), start=1):
        video_id, query, split = _text(row, "video_id", where, integer=True), _text(row, "query", where), _text(row, "split", where)
        if not video_id.strip() or not split.strip():
            raise AnnotationError(f"{where}: video_id and split must not be empty")
        sample_id = row.get("sample_id")
        sample_id = f"{split}-{number:06d}" if sample_id is None else _text(row, "sample_id", where, integer=True)
        instant, clip, gt = _number(row, "t", where), _pair(row, "start", "end", where), _pair(row, "gt_start", "gt_end", where)
        if instant is not None and clip is not None:
            raise AnnotationError(f"{where}: give one partial label, t or start/end, not both")
        if instant is not None:
            partial, kind = (instant, instant), "single-frame"
        elif clip is not None:
            partial, kind = clip, "clip"
        elif gt is not None:
            partial, kind = gt, "full"
        else:
            partial, kind = None, "none"
        duration = _number(row, "duration", where)
        if duration is not None:
            _add_duration(durations, duration_sources, video_id, duration, where)
        samples.append(Sample(sample_id, video_id, query.strip(), split, where, gt=gt, partial=partial, partial_kind=kind))
    if not samples:
        raise AnnotationError(f"{path}: the annotation table has no rows")
    return samples, durations, duration_sources


def read_durations(path: str | os.PathLike) -> tuple[dict[str, float], dict[str, str]]:
    """A durations table (JSON Lines, CSV or Parquet with ``video_id`` and ``duration``; other columns, a tool's
    own, are not read): seconds and source per video."""
    path = pathlib.Path(path)
    durations, sources = {}, {}
    for where, row in _rows(path, ("video_id", "duration"), ("video_id", "duration"), only_known=False):
        duration = _number(row, "duration", where)
        if duration is None:
            raise AnnotationError(f"{where}: the field 'duration' is missing")
        _add_duration(durations, sources, _text(row, "video_id", where, integer=True), duration, where)
    return durations, sources


def corpus_videos(samples: list[Sample], durations: dict[str, float], sources: dict[str, str]) -> dict[str, Video]:
    """One `Video` per video id that has a duration; a sample whose video has none is rejected by `build_store`."""
    return {video_id: Video(video_id, durations[video_id], source=sources[video_id]) for video_id in dict.fromkeys(s.video_id for s in samples) if video_id in durations}
