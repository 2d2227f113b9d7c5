"""The implicit stage's model, batches and losses in a plain PyTorch loop, on some of a store's shards.

No Ray, no DeepSpeed: the batches are the stage's own (`cu_scale.stages.streams.implicit_batches`, the same
windows and cluster-aware plan), the step is the stage's own (`cu_scale.method.implicit_step.implicit_step`),
the optimiser is the one the stage configures (AdamW, gradient clipping 1.0, 5 % linear warm-up then a
cosine to 0). After training, the detector labels every training sample of those shards at its own
anchor, and its pseudo-labels are scored against ground truth beside the partial label widened to the
scored samples' mean moment length, with the events' lengths and centres beside the moments'.

It is for trying the implicit settings quickly (a few shards of ActivityNet Captions train in minutes
where the stage takes an hour); what a setting gives is then measured with the stage itself.

    .venv/bin/python benchmarks/implicit_plain_loop.py configs/demo-long.yaml
    .venv/bin/python benchmarks/implicit_plain_loop.py configs/activitynet-captions.yaml --shards 8 --set implicit.epochs=4
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from cu_scale.cli import parse_overrides
from cu_scale.stages.clustering import clusters_dir, trainable_counts
from cu_scale.config import load_config
from cu_scale.stages.encode import check_encoder
from cu_scale.method.implicit_model import ImplicitModel
from cu_scale.method.implicit_step import epoch_losses, implicit_step
from cu_scale.evaluation.metrics import grounding_metrics, temporal_iou
from cu_scale.data.store import FeatureStore
from cu_scale.stages.streams import StoreLayout, Window, has_partial_label, implicit_batches, implicit_plan, window_shards


def cosine_schedule(total_steps: int):
    """DeepSpeed's WarmupCosineLR as the stage sets it: linear warm-up over 5 % of the steps, then a cosine to 0."""
    warmup = max(2, total_steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return factor


@torch.inference_mode()
def score(model, layout: StoreLayout, shards) -> dict:
    """The detector at every training sample's own anchor, shard by shard, against ground truth."""
    model.eval()
    columns = {name: [] for name in ("start", "end", "duration", "partial_start", "partial_end", "gt_start", "gt_end")}
    for shard in shards:
        window = Window(layout, [shard], "train", keep=has_partial_label)
        c = window.columns
        for positions in np.array_split(np.arange(window.size), max(1, window.size // 256)):
            batch = {name: torch.as_tensor(value) for name, value in window.gather(positions).items()}
            duration = c["duration"][positions]
            anchor = torch.as_tensor((c["partial_start"][positions] + c["partial_end"][positions]) / 2 / duration).float()
            out = model(batch["features"].float(), batch["mask"], batch["words"].float(), batch["words_valid"], anchor)
            columns["start"].append(out.start.double().numpy() * duration)
            columns["end"].append(out.end.double().numpy() * duration)
            for name in ("duration", "partial_start", "partial_end", "gt_start", "gt_end"):
                columns[name].append(c[name][positions].astype(float))
    model.train()
    c = {name: np.concatenate(parts) for name, parts in columns.items()}
    known = ~np.isnan(c["gt_start"])
    c = {name: values[known] for name, values in c.items()}
    anchor = (c["partial_start"] + c["partial_end"]) / 2
    true_length = c["gt_end"] - c["gt_start"]
    mean_length = float(true_length.mean())
    widened = np.clip(anchor - mean_length / 2, 0, c["duration"]), np.clip(anchor + mean_length / 2, 0, c["duration"])
    centre, true_centre = (c["start"] + c["end"]) / 2, (c["gt_start"] + c["gt_end"]) / 2
    length = c["end"] - c["start"]
    return {
        "samples": int(known.sum()),
        "pseudo": grounding_metrics(temporal_iou(c["start"], c["end"], c["gt_start"], c["gt_end"])),
        "widened": grounding_metrics(temporal_iou(*widened, c["gt_start"], c["gt_end"])),
        "mean_length": mean_length,
        "median_length": float(np.median(length)), "median_true_length": float(np.median(true_length)),
        "length_correlation": float(np.corrcoef(np.log(length + 1e-3), np.log(true_length + 1e-3))[0, 1]),
        "centre_from_anchor": float(np.abs(centre - anchor).mean()), "true_centre_from_anchor": float(np.abs(true_centre - anchor).mean()),
        "centre_error": float(np.abs(centre - true_centre).mean()),
    }


def describe(result: dict) -> str:
    p, w = result["pseudo"], result["widened"]
    return (
        f"pseudo-labels   R@0.3 {p['R@0.3']:6.2f}  R@0.5 {p['R@0.5']:6.2f}  R@0.7 {p['R@0.7']:6.2f}  mIoU {p['mIoU']:6.2f}\n"
        f"widened {result['mean_length']:5.1f} s R@0.3 {w['R@0.3']:6.2f}  R@0.5 {w['R@0.5']:6.2f}  R@0.7 {w['R@0.7']:6.2f}  mIoU {w['mIoU']:6.2f}\n"
        f"median event {result['median_length']:.1f} s against {result['median_true_length']:.1f} s ({result['median_length'] / result['median_true_length']:.2f}x),"
        f" log-length correlation {result['length_correlation']:.2f}; centres {result['centre_from_anchor']:.1f} s from the anchor"
        f" (true {result['true_centre_from_anchor']:.1f} s), {result['centre_error']:.1f} s from the true centre"
    )


def train(config, shard_limit: int = 0, score_every: int = 0, say=print):
    """Train the implicit model of `config` in the plain loop on its store's first `shard_limit` shards with
    training samples (0: all); returns (model, layout, shards) for `score`."""
    settings, batches = config.implicit, config.batches
    store = FeatureStore(config.store)
    layout = StoreLayout.of(store, check_encoder(store, config.encode))
    counts = trainable_counts(store, config.cluster)
    shards = np.flatnonzero(counts.sum(1))
    if shard_limit:
        shards = shards[:shard_limit]
        counts = np.where(np.isin(np.arange(len(counts)), shards)[:, None], counts, 0)
    per_worker = batches.per_worker(1)
    size = window_shards(counts.sum(1), batches, config.cluster.k)
    plans = [implicit_plan(counts, per_worker, 1, size, epoch) for epoch in range(settings.epochs)]
    total_steps = sum(plan.steps for plan in plans)
    say(f"{config.source}: {int(counts.sum())} training samples in {len(shards)} shards, {settings.epochs} epochs of {plans[0].steps} steps")

    torch.manual_seed(settings.seed)
    model = ImplicitModel(settings.model(layout.feature_dim, layout.word_dim))
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, cosine_schedule(total_steps) if settings.lr_schedule == "cosine" else (lambda step: 1.0))
    losses = settings.losses()
    directory = str(clusters_dir(store, config.cluster))
    started = time.time()
    for epoch, plan in enumerate(plans):
        sums, steps = {}, 0
        step_losses = epoch_losses(losses, epoch, settings.raun_warmup_epochs)
        for index, window in enumerate(plan.windows):
            for batch in implicit_batches(layout, directory, config.cluster.memberships, per_worker, window, plan.batches[index], [plan.epoch, index]):
                batch = {name: torch.as_tensor(value) for name, value in batch.items() if name != "sample_key"}
                total, terms = implicit_step(model, batch, step_losses)
                optimiser.zero_grad()
                total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimiser.step()
                schedule.step()
                steps += 1
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value
        means = "  ".join(f"{name} {value / steps:.3f}" for name, value in sums.items())
        say(f"epoch {epoch}: {steps} steps, {time.time() - started:.0f} s  {means}")
        if score_every and (epoch + 1) % score_every == 0 and epoch + 1 < len(plans):
            say(describe(score(model, layout, shards)))
    return model, layout, shards


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. implicit.beta=0.3")
    parser.add_argument("--shards", type=int, default=0, help="train and score on the first N shards with training samples (0: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--score-every", type=int, default=0, help="also score after every N epochs (0: at the end only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config, parse_overrides(args.set))
    print(f"overrides {args.set or 'none'}", flush=True)
    model, layout, shards = train(config, args.shards, args.score_every, say=lambda line: print(line, flush=True))
    print(describe(score(model, layout, shards)), flush=True)


if __name__ == "__main__":
    main()
