"""The two records every reader produces and every writer consumes: a video and a sample.

A *sample* is one query about one video: its sentence, the ground-truth moment when it is known,
and the partial label the method trains from. A *video* is what the feature simulator or an
importer needs to produce features: its duration and, where the dataset has them, the action
intervals that happen in it.

Times are seconds from the start of the video. Nothing here validates content (an empty query,
a start after its end): the store writer does that, so that every bad row lands in the rejects
file with its source instead of stopping a reader half-way.
"""

from __future__ import annotations

import dataclasses

# The kinds of partial label a sample can carry (paper §II-A):
#   single-frame: one timestamp, stored as t_s == t_e (the "glance" label, r = 0),
#   clip: a short clip (t_s, t_e) inside the moment (r > 0),
#   full: the whole moment is known (the partial label *is* the ground truth),
#   none: no label at all (test split of a dataset without glance labels, say).
PARTIAL_KINDS = ("single-frame", "clip", "full", "none")


@dataclasses.dataclass(frozen=True)
class Sample:
    sample_id: str
    video_id: str
    query: str
    split: str
    source: str  # where the row came from ("path:line" or "path:key"), for errors and rejects
    gt: tuple[float, float] | None = None
    partial: tuple[float, float] | None = None
    partial_kind: str = "none"

    def __post_init__(self):
        if self.partial_kind not in PARTIAL_KINDS:
            raise ValueError(f"{self.source}: partial_kind {self.partial_kind!r} is not one of {PARTIAL_KINDS}")
        if (self.partial is None) != (self.partial_kind == "none"):
            raise ValueError(f"{self.source}: partial label {self.partial} does not match kind {self.partial_kind!r}")


@dataclasses.dataclass(frozen=True)
class Event:
    """Something that happens in a video during [start, end].

    `concepts` name what happens, as keys of the simulator's latent vocabulary: a Charades action
    class ("c092"), a demo verb and object ("verb:open", "object:door"), or the content words of an
    ActivityNet sentence. The simulator renders the sum of the concepts' latent vectors.
    """

    concepts: tuple[str, ...]
    start: float
    end: float


@dataclasses.dataclass(frozen=True)
class Video:
    video_id: str
    duration: float
    source: str
    events: tuple[Event, ...] = ()
    scene: str | None = None
