"""An explicit model on one label source in a plain PyTorch loop, scored on held-out training videos.

No Ray, no DeepSpeed: the labels and targets are the stage's own (`cu_scale.stages.streams.explicit_labels`,
`explicit_targets`), the model and its loss are the config's, the optimiser is the one the stage
configures (AdamW, gradient clipping 1.0, 5 % linear warm-up then a cosine to 0). One video in five of
the training split (by a hash of its id) is held out and never trained on; after every epoch the model
answers its queries and is scored against their ground truth. No test split is read: this is for
choosing how the explicit stage learns from partial labels, and a choice is then measured with the stage.

Needs a prepared and encoded store, and the run's pseudo-labels for `--source pseudo`. It holds the chosen
shards' training samples in memory (unlike the stage, which streams them): give `--shards N` on a large store.

    .venv/bin/python benchmarks/explicit_plain_loop.py configs/demo-long.yaml --source pseudo
    .venv/bin/python benchmarks/explicit_plain_loop.py configs/demo-long.yaml --source pseudo --set explicit.attend_to_partial=false
    .venv/bin/python benchmarks/explicit_plain_loop.py configs/activitynet-captions.yaml --source partial --shards 8
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time
import zlib

import numpy as np
import torch
from implicit_plain_loop import cosine_schedule

from cu_scale.cli import parse_overrides
from cu_scale.config import load_config
from cu_scale.stages.encode import check_encoder
from cu_scale.stages.explicit import model_class
from cu_scale.evaluation.metrics import grounding_metrics, temporal_iou
from cu_scale.stages.pseudo_labels import PSEUDO_LABELS_DIR
from cu_scale.data.store import FeatureStore
from cu_scale.stages.streams import StoreLayout, Window, explicit_labels, explicit_targets, labelled_mask


def held_out(video_ids: np.ndarray) -> np.ndarray:
    """One video in five, the same on every run and for every label source."""
    return np.array([zlib.crc32(str(video).encode()) % 5 == 0 for video in video_ids])


@torch.inference_mode()
def score(model, window: Window, positions: np.ndarray) -> tuple[dict, float]:
    """R@0.3/0.5/0.7 and mIoU of the model's answers at `positions` against ground truth, and their median length (s)."""
    model.eval()
    c = window.columns
    starts, ends = [], []
    for part in np.array_split(positions, max(1, len(positions) // 256)):
        batch = {name: torch.as_tensor(value) for name, value in window.gather(part).items()}
        out = model(batch["features"].float(), batch["mask"], batch["words"].float(), batch["words_valid"])
        starts.append(out.start.double().numpy() * c["duration"][part])
        ends.append(out.end.double().numpy() * c["duration"][part])
    model.train()
    start, end = np.concatenate(starts), np.concatenate(ends)
    return grounding_metrics(temporal_iou(start, end, c["gt_start"][positions], c["gt_end"][positions])), float(np.median(end - start))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--source", choices=("pseudo", "partial", "gt"), default="pseudo")
    parser.add_argument("--model", default=None, help="module:Class (default: the config's first explicit model)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. explicit.epochs=10")
    parser.add_argument("--shards", type=int, default=0, help="the first N shards only (0: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = load_config(args.config, parse_overrides(args.set))
    settings = config.explicit
    store = FeatureStore(config.store)
    layout = StoreLayout.of(store, check_encoder(store, config.encode))
    shards = range(args.shards or len(layout.shards))
    labels = explicit_labels(layout, args.source, str(pathlib.Path(config.run_dir) / PSEUDO_LABELS_DIR))
    window = Window(layout, shards, "train", keep=labelled_mask(args.source), extra=labels)
    targets = {name: torch.as_tensor(values) for name, values in explicit_targets(window.columns, args.source, settings.attend_to_partial).items()}
    outside = held_out(window.columns["video_id"])
    fit, held = np.flatnonzero(~outside), np.flatnonzero(outside & ~np.isnan(window.columns["gt_start"]))
    batch_size = settings.batch_size
    steps_per_epoch = math.ceil(len(fit) / batch_size)
    model_path = args.model or settings.models[0]
    print(f"{config.source}: {model_path} on {args.source} labels, {len(fit)} samples to train on, {len(held)} held out;"
          f" {settings.epochs} epochs of {steps_per_epoch} steps; overrides {args.set or 'none'}", flush=True)

    torch.manual_seed(settings.seed)
    model = model_class(model_path)(layout.feature_dim, layout.word_dim, **settings.model_options())
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    total_steps = settings.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, cosine_schedule(total_steps) if settings.lr_schedule == "cosine" else (lambda step: 1.0))
    rng = np.random.default_rng(settings.seed)
    started = time.time()
    for epoch in range(settings.epochs):
        order, sums = fit[rng.permutation(len(fit))], {}
        for first in range(0, len(order), batch_size):
            positions = np.sort(order[first:first + batch_size])
            batch = {name: torch.as_tensor(value) for name, value in window.gather(positions).items()}
            out = model(batch["features"].float(), batch["mask"], batch["words"].float(), batch["words_valid"])
            total, terms = model.loss(out, *(targets[name][positions] for name in ("target_start", "target_end", "inside_start", "inside_end")))
            optimiser.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
        metrics, median = score(model, window, held)
        losses = "  ".join(f"{name} {value / steps_per_epoch:.3f}" for name, value in sums.items())
        recalls = "  ".join(f"{name} {value:6.2f}" for name, value in metrics.items())
        print(f"epoch {epoch}: {time.time() - started:.0f} s  {losses}  held out: {recalls}  median answer {median:.1f} s", flush=True)


if __name__ == "__main__":
    main()
