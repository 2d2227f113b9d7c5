"""Readers for the annotation files of Charades-STA, Charades v1 and ActivityNet Captions.

Each reader turns one file into `Sample` or `Video` records and nothing else. A line or entry that
cannot be parsed raises `AnnotationError` naming the file and the line (or JSON key); rows that parse
but make no sense (an empty sentence, a start after its end) are passed through unchanged, so that
the store writer can reject them with their source and a reason, and nothing is dropped silently.

Formats:
- Charades-STA: ``VIDEO START END##SENTENCE`` one moment a line (Gao et al. 2017).
- Charades-STA glance (ViGA release): ``VIDEO START END##GLANCE##SENTENCE``; GLANCE is one timestamp
  inside the moment, the single-frame label.
- Charades v1 CSV: one video a row; ``actions`` is ``CLASS START END`` items joined by ``;``,
  ``length`` the duration in seconds.
- ActivityNet Captions JSON: ``{video: {duration, timestamps: [[s, e], ...], sentences: [...]}}``;
  the glance variant adds ``glance: [t, ...]`` aligned with ``sentences``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib

from cu_scale.data.records import Event, Sample, Video


class AnnotationError(ValueError):
    """An annotation file that cannot be parsed; the message starts with ``file:line`` or ``file:key``."""


def shown(text: str) -> str:
    """`text` as an error message shows it: as it is when printable, else quoted with its escapes (one line)."""
    return text if text.isprintable() else repr(text)


def parse_number(text, where: str, field: str) -> float:
    """`text` (a string or a number, never a bool) as a finite float, or an `AnnotationError` naming where and which field."""
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise AnnotationError(f"{where}: {field} {text!r} is not a number")
    try:
        value = float(text)
    except (ValueError, OverflowError):
        raise AnnotationError(f"{where}: {field} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise AnnotationError(f"{where}: {field} {text!r} is not a finite number")
    return value


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file's content; bytes that are not UTF-8 are an AnnotationError naming the file and line."""
    data = pathlib.Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise AnnotationError(f"{path}: not UTF-8 text (line {line}, byte {error.start})") from None


def text_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file (universal newlines: \\n, \\r\\n or \\r end a line)."""
    return io.StringIO(read_text(path), newline=None).readlines()


def read_charades_sta(path: str | os.PathLike, split: str, glance: bool = False) -> list[Sample]:
    """One `Sample` per non-empty line; with ``glance=True`` the partial label is the glance timestamp.

    Sample ids are ``SPLIT-LINE`` (line numbers from 1), stable as long as the file is.
    """
    expected = "'VIDEO START END##GLANCE##SENTENCE'" if glance else "'VIDEO START END##SENTENCE'"
    samples = []
    for number, line in enumerate(text_lines(path), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        where = f"{path}:{number}"
        parts = line.split("##")
        head = parts[0].split()
        if len(parts) != (3 if glance else 2) or len(head) != 3:
            raise AnnotationError(f"{where}: expected {expected}, got {line!r}")
        video_id = head[0]
        moment = (parse_number(head[1], where, "start"), parse_number(head[2], where, "end"))
        partial, kind = None, "none"
        if glance:
            instant = parse_number(parts[1], where, "glance")
            partial, kind = (instant, instant), "single-frame"
        samples.append(
            Sample(
                sample_id=f"{split}-{number:06d}",
                video_id=video_id,
                query=parts[-1].strip(),
                split=split,
                source=where,
                gt=moment,
                partial=partial,
                partial_kind=kind,
            )
        )
    return samples


def read_charades_v1(path: str | os.PathLike) -> dict[str, Video]:
    """Charades v1 ``Charades_v1_{train,test}.csv``: durations, scenes and action intervals per video."""
    videos = {}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle)
        missing = {"id", "scene", "actions", "length"} - set(rows.fieldnames or ())
        if missing:
            raise AnnotationError(f"{path}:1: header lacks column(s) {sorted(missing)}")
        for row in rows:
            where = f"{path}:{rows.line_num}"
            events = []
            for item in filter(None, (row["actions"] or "").split(";")):
                fields = item.split()
                if len(fields) != 3:
                    raise AnnotationError(f"{where}: action {item!r} is not 'CLASS START END'")
                events.append(
                    Event(
                        concepts=(fields[0],),
                        start=parse_number(fields[1], where, "action start"),
                        end=parse_number(fields[2], where, "action end"),
                    )
                )
            videos[row["id"]] = Video(
                video_id=row["id"],
                duration=parse_number(row["length"], where, "length"),
                source=where,
                events=tuple(events),
                scene=row["scene"] or None,
            )
    return videos


def read_charades_classes(path: str | os.PathLike) -> dict[str, str]:
    """``Charades_v1_classes.txt``: class id (``c000``) to its name."""
    classes = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            class_id, _, name = line.strip().partition(" ")
            if not name:
                raise AnnotationError(f"{path}:{number}: expected 'CLASS NAME', got {line.strip()!r}")
            classes[class_id] = name
    return classes


def read_activitynet(path: str | os.PathLike, split: str, glance: bool = False) -> tuple[list[Sample], dict[str, Video]]:
    """ActivityNet Captions JSON (or its glance variant) into samples and videos.

    Sample ids are ``SPLIT-VIDEO-K`` with K the sentence's position in the video's list. Videos carry no
    events: ActivityNet has no action intervals, so the simulator builds them from the sentences.
    """
    try:
        entries = json.loads("".join(text_lines(path)))
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    except RecursionError:
        raise AnnotationError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(entries, dict):
        raise AnnotationError(f"{path}: expected a JSON object keyed by video id, got {type(entries).__name__}")
    samples, videos = [], {}
    for video_id, entry in entries.items():
        where = f"{path}:{shown(video_id)}"
        if not isinstance(entry, dict) or not {"duration", "timestamps", "sentences"} <= set(entry):
            raise AnnotationError(f"{where}: entry needs 'duration', 'timestamps' and 'sentences'")
        timestamps, sentences = entry["timestamps"], entry["sentences"]
        if not isinstance(timestamps, list) or not isinstance(sentences, list):
            raise AnnotationError(f"{where}: 'timestamps' and 'sentences' must be lists, got {type(timestamps).__name__} and {type(sentences).__name__}")
        if len(timestamps) != len(sentences):
            raise AnnotationError(f"{where}: {len(timestamps)} timestamps but {len(sentences)} sentences")
        glances = entry.get("glance") if glance else None
        if glance and (not isinstance(glances, list) or len(glances) != len(sentences)):
            found = len(glances) if isinstance(glances, list) else "none" if glances is None else type(glances).__name__
            raise AnnotationError(f"{where}: glance file needs one 'glance' per sentence ({len(sentences)}), got {found}")
        videos[video_id] = Video(video_id, parse_number(str(entry["duration"]), where, "duration"), source=where)
        for k, (stamp, sentence) in enumerate(zip(timestamps, sentences)):
            if not isinstance(stamp, (list, tuple)) or len(stamp) != 2:
                raise AnnotationError(f"{where}: timestamp {k} is {stamp!r}, expected [start, end]")
            if not isinstance(sentence, str):
                raise AnnotationError(f"{where}: sentence {k} is {sentence!r}, expected text")
            moment = (parse_number(str(stamp[0]), where, "start"), parse_number(str(stamp[1]), where, "end"))
            partial, kind = None, "none"
            if glances is not None:
                instant = parse_number(str(glances[k]), where, f"glance {k}")
                partial, kind = (instant, instant), "single-frame"
            samples.append(
                Sample(
                    sample_id=f"{split}-{video_id}-{k}",
                    video_id=video_id,
                    query=sentence.strip(),
                    split=split,
                    source=f"{where}[{k}]",
                    gt=moment,
                    partial=partial,
                    partial_kind=kind,
                )
            )
    return samples, videos
