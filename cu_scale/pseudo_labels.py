"""The `pseudo-label` stage: the trained event detector, run once over the training set (paper §II-C).

Ray Data batch inference: an actor pool (GPU when present), each actor holding the implicit model from
the checkpoint and the query encoder, streams the training examples of the store and runs the detector
at every sample's own anchor (the centre of its partial label). The result, ``pseudo_labels.parquet``
(sample_id, pseudo_start, pseudo_end in seconds, plus the labels it came from), goes next to the
checkpoint in the run directory.

When ground truth is known, the pseudo-labels are scored (R@0.3/0.5/0.7, mIoU) beside two baselines in
the same table: the partial label as is, and the partial label widened to the training set's mean moment
length around its centre, clipped to the video.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cu_scale.metrics import grounding_metrics, temporal_iou

PSEUDO_LABELS_FILE = "pseudo_labels.parquet"


class PseudoLabeler:
    """A Ray Data actor: implicit model + query encoder; one batch of examples in, their pseudo-labels out."""

    def __init__(self, checkpoint_dir: str, text_model: str, max_tokens: int, threads: int, run: str):
        import torch

        from cu_scale.implicit import load_implicit_model
        from cu_scale.monitoring import PSEUDO_LABELLED_SAMPLES, Progress
        from cu_scale.text_encoder import QueryEncoder

        torch.set_num_threads(threads)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_implicit_model(checkpoint_dir).to(self.device)
        self.encoder = QueryEncoder(text_model, device=self.device, max_tokens=max_tokens)
        self.progress = Progress(PSEUDO_LABELLED_SAMPLES, "training samples pseudo-labelled", run=run)

    def __call__(self, batch: dict) -> dict:
        torch = self.torch
        words, words_valid = self.encoder.encode_words(list(batch["query"]))
        duration = batch["duration"].astype(np.float32)
        anchor = (batch["partial_start"] + batch["partial_end"]) / 2 / duration
        with torch.inference_mode():
            out = self.model(
                torch.as_tensor(batch["features"], device=self.device).float(),
                torch.as_tensor(batch["mask"], device=self.device),
                torch.as_tensor(words, device=self.device),
                torch.as_tensor(words_valid, device=self.device),
                torch.as_tensor(anchor, device=self.device).float(),
            )
        self.progress.add(len(duration))
        return {
            "sample_id": batch["sample_id"],
            "pseudo_start": out.start.cpu().numpy() * duration,
            "pseudo_end": out.end.cpu().numpy() * duration,
            "partial_start": batch["partial_start"],
            "partial_end": batch["partial_end"],
            "gt_start": batch["gt_start"],
            "gt_end": batch["gt_end"],
            "duration": duration,
        }


def pseudo_label(store_path: str | os.PathLike, checkpoint_dir: str, out_dir: str | os.PathLike, text_model: str | None = None, actors: int = 1, max_tokens: int = 32) -> dict:
    """Write ``OUT_DIR/pseudo_labels.parquet``; returns {"rows": n, "metrics": table or None}."""
    import ray

    from cu_scale.store import FeatureStore
    from cu_scale.text_encoder import default_model_path

    store = FeatureStore(store_path)
    out = pathlib.Path(out_dir)
    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // actors)
    use_gpu = ray.cluster_resources().get("GPU", 0) >= actors
    predictions = store.examples_dataset(split="train").map_batches(
        PseudoLabeler,
        fn_constructor_kwargs={"checkpoint_dir": str(checkpoint_dir), "text_model": str(text_model or default_model_path()), "max_tokens": max_tokens, "threads": threads, "run": out.resolve().name},
        batch_size=128,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if use_gpu else 0,
        num_cpus=1,  # reserve one CPU per actor: the upstream shard-loading tasks need CPUs too, or both wait
    )
    parts = [pa.Table.from_pydict(batch) for batch in predictions.iter_batches(batch_size=None, batch_format="numpy")]
    table = pa.concat_tables(parts)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / PSEUDO_LABELS_FILE)
    return {"rows": table.num_rows, "metrics": score_pseudo_labels(table.to_pydict())}


def score_pseudo_labels(columns: dict) -> dict[str, dict[str, float]] | None:
    """Metrics of the pseudo-labels and of the two baselines, on the samples with ground truth."""
    gt_start = np.array([np.nan if v is None else v for v in columns["gt_start"]], float)
    known = ~np.isnan(gt_start)
    if not known.any():
        return None
    col = {key: np.asarray(columns[key], float)[known] for key in ("pseudo_start", "pseudo_end", "partial_start", "partial_end", "gt_end", "duration")}
    gt = (gt_start[known], col["gt_end"])
    mean_length = float(np.mean(gt[1] - gt[0]))
    centre = (col["partial_start"] + col["partial_end"]) / 2
    widened = (np.clip(centre - mean_length / 2, 0, col["duration"]), np.clip(centre + mean_length / 2, 0, col["duration"]))
    return {
        "pseudo-labels": grounding_metrics(temporal_iou(col["pseudo_start"], col["pseudo_end"], *gt)),
        "partial label as is": grounding_metrics(temporal_iou(col["partial_start"], col["partial_end"], *gt)),
        f"partial widened to mean length {mean_length:.1f} s": grounding_metrics(temporal_iou(*widened, *gt)),
    }
