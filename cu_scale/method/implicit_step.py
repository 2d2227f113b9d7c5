"""The implicit stage's method step: one batch of its training stream in, the objective and its terms out.

This is everything the method does to a batch short of the backward pass: the model's forward pass (the
event detector and Eq. 2), the partial clip's feature when Table V asks for it, and Eq. 3–8. It runs
without Ray or DeepSpeed: the stage's worker loop moves batches and calls it inside a DeepSpeed engine,
the benchmarks' plain loop calls it on the bare model, and the tests call it on a hand-made batch.
"""

from __future__ import annotations

import dataclasses

import torch

from cu_scale.method.implicit_model import pool_clip
from cu_scale.method.losses import LossConfig, implicit_loss

# What a batch holds (`cu_scale.stages.streams.implicit_stream` builds them): features (B, T, Dv), mask (B, T)
# of valid steps, words (B, L, Dq), words_valid (B, L), anchor (B,), partial_start and partial_end (B,) in
# normalised time, clusters (B, m), full (B,): whether the label is a full moment (mixed supervision).
BATCH_FIELDS = ("features", "mask", "words", "words_valid", "anchor", "partial_start", "partial_end", "clusters", "full")


def epoch_losses(losses: LossConfig, epoch: int, raun_warmup_epochs: int) -> LossConfig:
    """The losses of one epoch: L_raun joins after `raun_warmup_epochs` epochs (`implicit.raun_warmup_epochs`)."""
    return losses if epoch >= raun_warmup_epochs else dataclasses.replace(losses, use_raun=False)


def implicit_step(model, batch: dict[str, torch.Tensor], losses: LossConfig, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, dict[str, float]]:
    """(objective, terms) of one batch (`BATCH_FIELDS`). `model` is the `ImplicitModel` or the engine that
    wraps it. Beside the loss terms, `event_width` is the batch's mean event length ê − ŝ (a fraction of the
    video): what balloons when L_raun goes wrong."""
    out = model(batch["features"].float(), batch["mask"], batch["words"].float(), batch["words_valid"], batch["anchor"].float())
    start, end = batch["partial_start"].float(), batch["partial_end"].float()
    v_clip = pool_clip(out.video, out.centres, out.valid, start, end).float() if losses.representation == "clip" else None
    total, terms = implicit_loss(
        losses, out.v_ev.float(), out.v_bg.float(), out.v_vd.float(), out.q.float(), v_clip, batch["clusters"],
        out.start.float(), out.end.float(), start, end, rank, world_size,
        steps=(out.video.float(), out.mask.float(), out.context.float(), out.valid), full=batch.get("full"),
    )
    return total, {**terms, "event_width": float((out.end - out.start).detach().float().mean())}
