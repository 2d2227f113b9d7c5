"""A small self-contained world for the embedded demo and the tests: no files needed.

Two shapes of video (`DemoWorld`, chosen by name with `world`):
- ``short`` (the demo's): videos of 15–45 s holding 2–4 actions of 3–12 s, one to three sentences each;
  moments cover about a quarter of their video, as in Charades-STA.
- ``long``: videos of 2–7 minutes holding 8–20 actions whose lengths are log-uniform in 3–40 s (median
  11 s, about 4 % of the video), three to eight sentences each: many short moments in minutes of video,
  the shape of most corpora people bring, on which the paper's reading of the method fails (README).
Each action is a verb applied to an object ("open the door") placed at a random time (actions may
overlap). Each sentence is templated from one action, with that action's ground-truth moment. Features are
rendered by the same simulator as the real datasets, from concepts ``verb:V`` and ``object:O`` (so "open
the door" and "open the box" share the *open* pattern), and the scene. Everything is fixed by the seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cu_scale.data.records import Event, Sample, Video


@dataclasses.dataclass(frozen=True)
class DemoWorld:
    """The shape of a demo world's videos (ranges are inclusive; integers are drawn uniformly)."""

    durations: tuple[float, float]  # seconds, uniform
    actions: tuple[int, int]  # per video
    action_seconds: tuple[float, float]  # length of an action: uniform, or log-uniform when log_lengths
    log_lengths: bool
    sentences: tuple[int, int]  # described actions per video (at most its actions)


WORLDS = {
    "short": DemoWorld(durations=(15.0, 45.0), actions=(2, 4), action_seconds=(3.0, 12.0), log_lengths=False, sentences=(1, 3)),
    "long": DemoWorld(durations=(120.0, 420.0), actions=(8, 20), action_seconds=(3.0, 40.0), log_lengths=True, sentences=(3, 8)),
}


# verb: (third person, -ing, past)
VERBS = {
    "open": ("opens", "opening", "opened"),
    "close": ("closes", "closing", "closed"),
    "hold": ("holds", "holding", "held"),
    "throw": ("throws", "throwing", "threw"),
    "wash": ("washes", "washing", "washed"),
    "fold": ("folds", "folding", "folded"),
    "pick up": ("picks up", "picking up", "picked up"),
    "put down": ("puts down", "putting down", "put down"),
}
OBJECTS = ("door", "book", "cup", "towel", "phone", "box", "shoe", "blanket", "laptop", "bag")
SCENES = ("kitchen", "bedroom", "garage", "office")
TEMPLATES = (
    "a person {third} the {obj}.",
    "someone is {ing} a {obj}.",
    "the person {past} the {obj}.",
    "person {third} a {obj} in the {scene}.",
)


def generate_demo_corpus(num_videos: int = 240, seed: int = 0, test_fraction: float = 0.25, world: str = "short") -> tuple[dict[str, Video], list[Sample]]:
    """Videos and samples of the demo world named `world` (`WORLDS`); the last `test_fraction` of videos form the test split.

    Samples carry ground truth only; partial labels are sampled afterwards like for any dataset.
    """
    if num_videos < 2:
        raise ValueError(f"the demo needs at least 2 videos, got {num_videos}")
    if world not in WORLDS:
        raise ValueError(f"world: the demo worlds are {sorted(WORLDS)}, got {world!r}")
    shape = WORLDS[world]
    (low, high), (shortest, longest) = shape.durations, shape.action_seconds
    rng = np.random.default_rng(seed)
    verbs = list(VERBS)
    num_test = max(1, round(num_videos * test_fraction))
    videos, samples = {}, []
    for v in range(num_videos):
        video_id = f"demo{v:05d}"
        split = "test" if v >= num_videos - num_test else "train"
        duration = float(np.round(rng.uniform(low, high), 2))
        scene = str(rng.choice(SCENES))
        actions = []
        for _ in range(int(rng.integers(shape.actions[0], shape.actions[1] + 1))):
            verb, obj = verbs[rng.integers(len(verbs))], OBJECTS[rng.integers(len(OBJECTS))]
            if shape.log_lengths:
                length = float(np.exp(rng.uniform(np.log(shortest), np.log(longest))))
            else:
                length = float(rng.uniform(shortest, longest))
            start = float(rng.uniform(0, max(duration - length, 0.0)))
            actions.append((verb, obj, round(start, 2), round(min(start + length, duration), 2)))
        videos[video_id] = Video(
            video_id,
            duration,
            source=f"demo:{video_id}",
            events=tuple(Event((f"verb:{verb}", f"object:{obj}"), s, e) for verb, obj, s, e in actions),
            scene=scene,
        )
        described = rng.permutation(len(actions))[: int(rng.integers(shape.sentences[0], shape.sentences[1] + 1))]
        for k, a in enumerate(sorted(described)):
            verb, obj, start, end = actions[a]
            third, ing, past = VERBS[verb]
            template = TEMPLATES[rng.integers(len(TEMPLATES))]
            samples.append(
                Sample(
                    sample_id=f"{split}-{video_id}-{k}",
                    video_id=video_id,
                    query=template.format(third=third, ing=ing, past=past, obj=obj, scene=scene),
                    split=split,
                    source=f"demo:{video_id}[{k}]",
                    gt=(start, end),
                )
            )
    return videos, samples
