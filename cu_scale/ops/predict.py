"""`cu-scale predict`: one query on one video's features, answered by a trained run's explicit model.

What the run knows is read from its stage markers: the store (for T, the feature steps the model was
trained with, and Dv) and the query encoder. The features are resampled to T the way the store was
written (`cu_scale.data.features.resample`), and the model's normalised span is scaled by the duration.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from cu_scale.ops.pipeline import finished_marker
from cu_scale.stages.training import checkpoints, latest_checkpoint


def choose_model(run_dir: pathlib.Path, name: str | None) -> pathlib.Path:
    """The directory of the named explicit model, or of the first one trained on pseudo-labels (else the first)."""
    trained = sorted(p for p in (run_dir / "explicit").glob("*") if checkpoints(p))
    if not trained:
        raise FileNotFoundError(f"{run_dir / 'explicit'} holds no trained model: run the explicit stage first")
    if name is None:
        return next((p for p in trained if p.name.endswith("-pseudo")), trained[0])
    for path in trained:
        if path.name == name:
            return path
    raise ValueError(f"--model {name}: not in {run_dir / 'explicit'}; trained: {', '.join(p.name for p in trained)}")


def predict_one(run_dir: str | os.PathLike, features_file: str | os.PathLike, query: str, duration: float, model_name: str | None = None) -> tuple[float, float]:
    """(start, end) in seconds for `query` on the video whose features are in `features_file`."""
    import torch

    from cu_scale.stages.explicit import load_explicit_model
    from cu_scale.data.features import pad_with_mask, resample
    from cu_scale.data.store import FeatureStore
    from cu_scale.method.text_encoder import QueryEncoder
    run_dir = pathlib.Path(run_dir)
    if duration <= 0:
        raise ValueError(f"--duration must be > 0 seconds, got {duration}")
    store = FeatureStore(finished_marker(run_dir, "prepare")["summary"]["store"])
    encode = finished_marker(run_dir, "encode")
    try:
        features = np.load(features_file)
    except (OSError, ValueError) as error:
        raise ValueError(f"{features_file}: not a readable .npy array ({error})") from None
    if features.ndim != 2 or features.shape[1] != store.feature_dim:
        raise ValueError(f"{features_file}: features must be (steps, {store.feature_dim}) like the store {store.path}, got {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{features_file}: features hold NaN or infinite values")
    padded, mask = pad_with_mask(resample(features.astype(np.float32), store.max_steps), store.max_steps)
    model = load_explicit_model(latest_checkpoint(choose_model(run_dir, model_name)))
    words, words_valid = QueryEncoder(encode["summary"]["model"], max_tokens=encode["settings"]["encode"]["max_tokens"]).encode_words([query])
    with torch.inference_mode():
        out = model(torch.as_tensor(padded[None]).float(), torch.as_tensor(mask[None]), torch.as_tensor(words), torch.as_tensor(words_valid))
    return float(out.start[0]) * duration, float(out.end[0]) * duration
