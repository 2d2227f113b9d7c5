"""Predictions from a trained run: the Python API (`Grounder`) and `cu-scale predict`.

What a run knows is read from its stage markers: the store it trained on (T, the feature steps the models
were trained with, and Dv) and the query encoder. Two ways in:

- `Grounder.from_run(RUN_DIR)` loads one explicit model and the encoder in this process (no Ray) and answers
  queries about videos whose features you hold::

      grounder = Grounder.from_run("runs/demo")
      spans = grounder.predict(features, duration=30.2, queries=["person opens the door"], top_k=5)
      spans[0][0].start, spans[0][0].end, spans[0][0].score     # the best span of the first query

  Features are resampled to T the way the store was written (`cu_scale.data.features.resample`), and the
  models' normalised spans are scaled by the duration. `cu-scale predict --features` is this, for one query.
- `predict_store` runs every trained model of a run over a whole store split with Ray Data batch inference
  (GPU actors when the cluster has GPUs) and writes Parquet and JSON Lines: `cu-scale predict --store`.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from cu_scale.ops.pipeline import EXPLICIT_DIR, finished_marker
from cu_scale.stages.training import checkpoints, latest_checkpoint
from cu_scale.storage import Location, locate

STORE_PREDICTIONS_DIR = "store_predictions"  # RUN_DIR/store_predictions/<store>-<split>: `cu-scale predict --store`


def trained_models(run_dir: Location) -> list[Location]:
    """The directories of the run's trained explicit models (RUN_DIR/explicit/<Model>-<source>)."""
    trained = [p for p in (run_dir / EXPLICIT_DIR).glob("*") if checkpoints(p)]
    if not trained:
        raise FileNotFoundError(f"{run_dir / EXPLICIT_DIR} holds no trained model: run the explicit stage first")
    return trained


def choose_model(run_dir: Location, name: str | None) -> Location:
    """The directory of the named explicit model, or of the first one trained on pseudo-labels (else the first)."""
    trained = trained_models(run_dir)
    if name is None:
        return next((p for p in trained if p.name.endswith("-pseudo")), trained[0])
    for path in trained:
        if path.name == name:
            return path
    raise ValueError(f"model {name!r} is not in {run_dir / EXPLICIT_DIR}; trained: {', '.join(p.name for p in trained)}")


@dataclasses.dataclass(frozen=True)
class Span:
    start: float  # seconds
    end: float
    score: float  # the model's confidence, higher is likelier (1 for a model that gives one span)


class Grounder:
    """One trained explicit model of a run and its query encoder, for grounding queries in your own code."""

    def __init__(self, model, encoder, feature_dim: int, max_steps: int, name: str):
        self.model, self.encoder = model, encoder
        self.feature_dim, self.max_steps, self.name = feature_dim, max_steps, name

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, model: str | None = None) -> "Grounder":
        """The run's explicit model `model` (a directory name under RUN_DIR/explicit, e.g. ``SpanDETR-pseudo``;
        default: the first trained on pseudo-labels), on the CPU, ready to `predict`."""
        from cu_scale.data.store import FeatureStore
        from cu_scale.method.text_encoder import QueryEncoder
        from cu_scale.stages.explicit import load_explicit_model

        run_dir = locate(run_dir)
        store = FeatureStore(finished_marker(run_dir, "prepare")["summary"]["store"])
        encode = finished_marker(run_dir, "encode")
        chosen = choose_model(run_dir, model)
        grounding_model = load_explicit_model(latest_checkpoint(chosen))  # first: a damaged checkpoint stops here, at once
        encoder = QueryEncoder(encode["summary"]["model"], max_tokens=encode["settings"]["encode"]["max_tokens"])
        return cls(grounding_model, encoder, store.feature_dim, store.max_steps, chosen.name)

    def predict(self, features: np.ndarray, duration: float, queries: list[str] | str, top_k: int = 1) -> list[list[Span]]:
        """The `top_k` best spans (best first) of each query on one video: `features` (steps, Dv) as the
        run's store holds them, `duration` in seconds. One list per query, in the order given."""
        import torch

        from cu_scale.data.features import pad_with_mask, resample
        from cu_scale.method.grounding_models import ranked_spans

        queries = [queries] if isinstance(queries, str) else list(queries)
        if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
            raise ValueError(f"queries must be non-empty sentences, got {queries!r}")
        if not (np.isfinite(duration) and duration > 0):
            raise ValueError(f"duration must be > 0 seconds, got {duration}")
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.feature_dim or features.shape[0] == 0:
            raise ValueError(f"features must be (steps, {self.feature_dim}) like the run's store, got {features.shape}")
        if not np.isfinite(features).all():
            raise ValueError("features hold NaN or infinite values")
        padded, mask = pad_with_mask(resample(features.astype(np.float32), self.max_steps), self.max_steps)
        words, words_valid = self.encoder.encode_words(queries)
        n = len(queries)
        with torch.inference_mode():
            out = self.model(
                torch.as_tensor(padded[None]).expand(n, -1, -1).float(), torch.as_tensor(mask[None]).expand(n, -1),
                torch.as_tensor(words).float(), torch.as_tensor(words_valid),
            )
            start, end, score = (x.double().numpy() for x in ranked_spans(out, top_k))
        return [[Span(float(s) * duration, float(e) * duration, float(c)) for s, e, c in zip(*row)] for row in zip(start, end, score)]


def predict_store(
    run_dir: str | os.PathLike, store_path: str | os.PathLike, split: str, out_dir: str | os.PathLike | None, top_k: int,
    models: list[str] | None = None,
) -> dict:
    """Every trained explicit model of the run (or those named) over the `split` samples of a store, with Ray
    Data batch inference: OUT_DIR/<model>.parquet and .jsonl. The default OUT_DIR is
    RUN_DIR/store_predictions/<store>-<split>, apart from the evaluate stage's RUN_DIR/predictions, which a
    rerun of that stage clears.

    The store's queries are encoded first with the run's encoder where they are not yet (resumable, written
    into the store as the encode stage does). Returns {"files": {model: jsonl}, "seconds", "rows", "out"}."""
    from cu_scale.config import EncodeConfig
    from cu_scale.data.store import FeatureStore
    from cu_scale.ops.pipeline import start_ray
    from cu_scale.stages.encode import encode_store
    from cu_scale.stages.explicit import predict_split

    run_dir = locate(run_dir)
    trained = {p.name: latest_checkpoint(p) for p in trained_models(run_dir)} if not models else {n: latest_checkpoint(choose_model(run_dir, n)) for n in models}
    run_store = FeatureStore(finished_marker(run_dir, "prepare")["summary"]["store"])
    store = FeatureStore(store_path)
    if (store.feature_dim, store.max_steps) != (run_store.feature_dim, run_store.max_steps):
        raise ValueError(
            f"{store.path}: features of Dv {store.feature_dim} in at most T {store.max_steps} steps; the run {run_dir} was trained on"
            f" Dv {run_store.feature_dim}, T {run_store.max_steps} ({run_store.path}): prepare the store with --steps {run_store.max_steps}"
        )
    if not store.manifest["counts"]["splits"].get(split):
        raise ValueError(f"{store.path}: no sample of split {split!r}; the store has {', '.join(store.manifest['counts']['splits'])}")
    encode = EncodeConfig(**finished_marker(run_dir, "encode")["settings"]["encode"])
    out = locate(out_dir) if out_dir else run_dir / STORE_PREDICTIONS_DIR / f"{store.path.name}-{split}"
    start_ray()
    started = time.perf_counter()
    encode_store(store.path, encode, progress=False)
    files = predict_split(store.path, trained, split, encode, out, top_k=top_k, parquet=True)
    return {"files": files, "seconds": time.perf_counter() - started, "rows": store.manifest["counts"]["splits"][split]["samples"], "out": out}
