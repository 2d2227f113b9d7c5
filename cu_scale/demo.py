"""A small self-contained world for the embedded demo and the tests: no files needed.

Videos are 15–45 s long and hold 2–4 actions, each a verb applied to an object ("open the door"),
placed at random times (they may overlap). Each video gets one to three templated sentences about some
of its actions, with the ground-truth moment of that action. Features are rendered by the same
simulator as the real datasets, from concepts ``verb:V`` and ``object:O`` (so "open the door" and
"open the box" share the *open* pattern), and the scene. Everything is fixed by the seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cu_scale.config import BatchConfig, ClusterConfig, EncodeConfig, ExplicitConfig, ImplicitConfig, PrepareConfig, RunConfig, build_config
from cu_scale.records import Event, Sample, Video


def demo_config(run_dir: str = "runs/demo", videos: int = 2000, seed: int = 0, overrides: dict | None = None) -> RunConfig:
    """The settings `cu-scale demo` runs with (`overrides` as `--set` gives them); configs/demo.yaml holds
    the same values (a test checks).

    *Choices*, for a demo under 10 minutes on two cores that still shows the method: 2,000 videos (2,803
    training queries: enough that pseudo-labels beat the widened partial label clearly, 66.7 against 58.1
    mIoU), 10 implicit epochs, and one explicit model, the boundary regressor, trained for 20 epochs on the
    pseudo-labels and on ground truth (at 10 epochs its training loss was still falling; SpanDETR, which
    needs longer, is in the Charades-STA configs). Measured: 431 s here from a fresh clone (explicit test mIoU 41.0 on pseudo-labels, 45.3 on ground truth)."""
    config = RunConfig(
        store=f"{run_dir}/store",
        run_dir=run_dir,
        prepare=PrepareConfig(dataset="demo", feature_dim=256, steps=32, videos=videos, seed=seed),
        implicit=ImplicitConfig(epochs=10, hidden_dim=64, workers=1),
        encode=EncodeConfig(actors=1, batch_size=256),
        cluster=ClusterConfig(k=16, memberships=2),
        batches=BatchConfig(batch_size=32, clusters_per_batch=4),
        explicit=ExplicitConfig(
            models=("cu_scale.grounding_models:BoundaryRegressor",),
            label_sources=("pseudo", "gt"),
            epochs=20,
            checkpoint_every=5,
            batch_size=32,
            hidden_dim=64,
        ),
        source="cu_scale.demo.demo_config",
    )
    if not overrides:
        return config
    return build_config(dataclasses.asdict(config), config.source, overrides)


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


def generate_demo_corpus(num_videos: int = 240, seed: int = 0, test_fraction: float = 0.25) -> tuple[dict[str, Video], list[Sample]]:
    """Videos and samples of the demo world; the last `test_fraction` of videos form the test split.

    Samples carry ground truth only; partial labels are sampled afterwards like for any dataset.
    """
    if num_videos < 2:
        raise ValueError(f"the demo needs at least 2 videos, got {num_videos}")
    rng = np.random.default_rng(seed)
    verbs = list(VERBS)
    num_test = max(1, round(num_videos * test_fraction))
    videos, samples = {}, []
    for v in range(num_videos):
        video_id = f"demo{v:05d}"
        split = "test" if v >= num_videos - num_test else "train"
        duration = float(np.round(rng.uniform(15, 45), 2))
        scene = str(rng.choice(SCENES))
        actions = []
        for _ in range(int(rng.integers(2, 5))):
            verb, obj = verbs[rng.integers(len(verbs))], OBJECTS[rng.integers(len(OBJECTS))]
            length = float(rng.uniform(3, 12))
            start = float(rng.uniform(0, max(duration - length, 0.0)))
            actions.append((verb, obj, round(start, 2), round(min(start + length, duration), 2)))
        videos[video_id] = Video(
            video_id,
            duration,
            source=f"demo:{video_id}",
            events=tuple(Event((f"verb:{verb}", f"object:{obj}"), s, e) for verb, obj, s, e in actions),
            scene=scene,
        )
        described = rng.permutation(len(actions))[: int(rng.integers(1, 4))]
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
