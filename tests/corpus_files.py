"""A user's corpus written by hand in the corpus format (cu_scale.data.corpus), not by the demo generator.

Each video is a sequence of noise steps, one a second; each of its moments adds the directions of the
query's verb and object to the steps it covers, so a query can be grounded from the features. Training
rows cycle through the four label kinds; test rows carry only their moment.
"""

import json
import pathlib

import numpy as np

VERBS = ("opens", "closes", "holds", "throws", "washes", "lifts")
OBJECTS = ("door", "box", "cup", "book", "towel", "phone")
KINDS = ("full", "clip", "single-frame", "none")


def write_corpus(root: pathlib.Path, videos: int = 30, dim: int = 32, seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    """ROOT/annotations.jsonl and ROOT/features/VIDEO.npy; every fifth video is in the test split."""
    rng = np.random.default_rng(seed)
    directions = {word: rng.normal(size=dim) for word in VERBS + OBJECTS}
    features_dir = root / "features"
    features_dir.mkdir(parents=True)
    rows = []
    for v in range(videos):
        duration = float(rng.uniform(20, 40))
        steps = rng.normal(scale=0.5, size=(int(duration), dim))
        split = "test" if v % 5 == 4 else "train"
        for _ in range(2):
            verb, obj = rng.choice(VERBS), rng.choice(OBJECTS)
            length = float(rng.uniform(4, 10))
            start = float(rng.uniform(0, duration - length))
            end = start + length
            steps[int(start) : int(np.ceil(end))] += directions[verb] + directions[obj]
            row = {"video_id": f"video-{v:03d}", "query": f"a person {verb} the {obj}", "split": split, "duration": round(duration, 2)}
            kind = KINDS[len(rows) % len(KINDS)] if split == "train" else "full"
            if kind != "none":
                row.update(gt_start=round(start, 2), gt_end=round(end, 2))
            if kind == "clip":
                clip = float(rng.uniform(start, end - 2))
                row.update(start=round(clip, 2), end=round(clip + 2, 2))
            elif kind == "single-frame":
                row["t"] = round(float(rng.uniform(start, end)), 2)
            rows.append(row)
        np.save(features_dir / f"video-{v:03d}.npy", steps.astype(np.float32))
    annotations = root / "annotations.jsonl"
    annotations.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return annotations, features_dir
