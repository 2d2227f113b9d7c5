"""The tiny demo run the Ray tests share: the demo's own config made small with --set, as a user would.

`tiny_run` (a session fixture in conftest.py) runs it once through every stage with `cu-scale demo`; the
tests that need a prepared, encoded, clustered store or a trained run read it instead of building their
own, and tests that change a run do so in a run directory of their own, or, where changing it is the
point (tests/test_pipeline.py), after the tests that only read it.
"""

import dataclasses
import json
import pathlib

VIDEOS = 40
SETTINGS = [
    "prepare.steps=16", "prepare.feature_dim=64",
    "cluster.k=4", "batches.batch_size=16", "batches.clusters_per_batch=2",
    # epochs enough for the cluster test to kill a driver and lose a node mid-stage (tests/test_jobs.py)
    "implicit.epochs=6", "implicit.hidden_dim=32", "implicit.heads=2",
    # one model on the method's labels (tests/test_corpus_run.py trains SpanDETR; the streams tests cover the gt and partial targets)
    "explicit.models=[cu_scale.method.grounding_models:BoundaryRegressor]", "explicit.label_sources=[pseudo]", "explicit.epochs=3",
    "explicit.batch_size=16", "explicit.hidden_dim=32", "explicit.heads=2", "explicit.layers=1",
]


def set_arguments(settings: list[str] = SETTINGS) -> list[str]:
    return [arg for item in settings for arg in ("--set", item)]


@dataclasses.dataclass(frozen=True)
class TinyRun:
    root: pathlib.Path  # the run directory; the store is root/store
    config: pathlib.Path  # a config file of exactly the settings it ran with (`cu-scale run` on it skips every stage)
    printed: str  # what `cu-scale demo` printed

    @property
    def store(self) -> pathlib.Path:
        return self.root / "store"


def write_config(root: pathlib.Path) -> pathlib.Path:
    """The run's settings as a config file, from the same builder `cu-scale demo` used."""
    import yaml

    from cu_scale.cli import parse_overrides
    from cu_scale.config import demo_config

    config = demo_config(str(root), videos=VIDEOS, overrides=parse_overrides(SETTINGS))
    plain = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as lists
    plain.pop("source")
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(plain, sort_keys=False))
    return path
