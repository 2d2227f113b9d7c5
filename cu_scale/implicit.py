"""The `implicit` stage: Ray Train workers, each running the model in a DeepSpeed engine (paper §II-D).

Three layers, as Ray's own docs lay them out:
- `train_implicit` (driver) builds the `TorchTrainer`: the training split of the store as a Ray Dataset,
  a plain-dict config, the scaling (workers, GPU or CPU) and a RunConfig whose storage path is the run
  directory, so that a restarted run resumes from its latest checkpoint;
- `worker_loop` (per worker) is plain PyTorch + DeepSpeed: it reads its shard of the dataset through Ray
  Data, looks up each sample's clusters, plans cluster-aware batches (`cu_scale.batching`), trains, reports
  every loss term per epoch and saves a DeepSpeed checkpoint per epoch;
- the model and the losses know nothing of either (`cu_scale.implicit_model`, `cu_scale.losses`).

*Choices*: word features are the frozen MiniLM token states (`QueryEncoder.encode_words`), computed once
per worker; a worker materialises its shard in memory (features stay float16) because cluster-aware
batches need random access. The learning rate warms up linearly over the first 5% of the steps and then
follows a cosine to zero (`lr_schedule: cosine`, DeepSpeed's WarmupCosineLR): with a constant rate the
pseudo-label mIoU of successive epochs swung by ±2 points on simulated Charades-STA, and no epoch can be
picked by its pseudo-label quality without ground truth. All workers run the same number of steps per
epoch (needed by the gradient all-reduce): a worker with fewer batches continues with batches of its next
shuffle.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from cu_scale.config import ImplicitConfig

SHARD_COLUMNS = ("sample_id", "video_id", "query", "duration", "partial_start", "partial_end", "gt_start", "gt_end", "features", "mask")


def validation_videos(video_ids, fraction: float, seed: int) -> np.ndarray:
    """Which samples belong to the validation part of the training set: whole videos, picked by a seeded
    hash of their id, so every worker and every trial picks the same ones without talking to each other."""
    import hashlib

    def draw(video_id: str) -> float:
        digest = hashlib.blake2b(f"{seed}:{video_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64

    return np.array([draw(str(v)) < fraction for v in video_ids], bool)


def score_validation(model, device, data: dict, words, words_valid, rows: np.ndarray, anchor: np.ndarray, world_size: int) -> dict[str, float]:
    """Pseudo-label quality on the validation samples of every worker: the detector at each sample's own
    anchor, as the pseudo-label stage runs it, against ground truth (R@0.5, R@0.7, mIoU in percent).

    *Choice*: the validation samples are trained on like every other (their partial labels only): the
    pseudo-labels being scored are those of the training set, which the method labels transductively.
    """
    import torch
    import torch.distributed as dist

    from cu_scale.metrics import temporal_iou

    model.eval()
    ious = []
    with torch.inference_mode():
        for start in range(0, len(rows), 256):
            part = rows[start : start + 256]
            out = model(
                torch.as_tensor(data["features"][part], device=device).float(),
                torch.as_tensor(data["mask"][part], device=device),
                torch.as_tensor(words[part], device=device).float(),
                torch.as_tensor(words_valid[part], device=device),
                torch.as_tensor(anchor[part], device=device),
            )
            duration = data["duration"][part]
            ious.append(temporal_iou(out.start.float().cpu().numpy() * duration, out.end.float().cpu().numpy() * duration, data["gt_start"][part], data["gt_end"][part]))
    iou = np.concatenate(ious) if ious else np.zeros(0)
    sums = torch.tensor([len(iou), iou.sum(), (iou >= 0.5).sum(), (iou >= 0.7).sum()], dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(sums)
    count = max(float(sums[0]), 1.0)
    model.train()
    return {"val_samples": int(sums[0]), "val_pseudo_mIoU": 100 * float(sums[1]) / count, "val_pseudo_R@0.5": 100 * float(sums[2]) / count, "val_pseudo_R@0.7": 100 * float(sums[3]) / count}


def _clusters_for(sample_ids: np.ndarray, clusters_dir: str) -> np.ndarray:
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(str(p) for p in pathlib.Path(clusters_dir).glob("part-*.parquet")))
    column = table.column("clusters").combine_chunks()
    lookup = dict(zip(table.column("sample_id").to_pylist(), column.values.to_numpy().reshape(len(table), -1)))
    missing = [s for s in sample_ids if s not in lookup]
    if missing:
        raise ValueError(f"{len(missing)} training samples have no cluster in {clusters_dir} (first: {missing[0]}); rerun `cu-scale cluster`")
    return np.stack([lookup[s] for s in sample_ids])


def worker_loop(config: dict):
    """Runs on every Ray Train worker; `config` is a plain dict (see `train_implicit`)."""
    import torch

    from cu_scale.batching import plan_epoch
    from cu_scale.config import BatchConfig
    from cu_scale.implicit_model import ImplicitModel, ImplicitModelConfig, pool_clip
    from cu_scale.losses import LossConfig, implicit_loss
    from cu_scale.monitoring import TrainingMonitor
    from cu_scale.text_encoder import QueryEncoder
    from cu_scale.training import agree_on_steps, deepspeed_engine, resume, save_and_report, start_worker

    settings = ImplicitConfig(**config["implicit"])
    batches_config = BatchConfig(**config["batches"])
    rank, world_size, device, data = start_worker(config, settings.seed, SHARD_COLUMNS)
    clusters = _clusters_for(data["sample_id"], config["clusters_dir"])
    words, words_valid = QueryEncoder(config["text_model"], max_tokens=config["max_tokens"]).encode_words(list(data["query"]))
    words = words.astype(np.float16)  # frozen features: half the memory, cast back per batch
    duration = data["duration"].astype(np.float32)
    anchor = ((data["partial_start"] + data["partial_end"]) / 2 / duration).astype(np.float32)
    partial_start = (data["partial_start"] / duration).astype(np.float32)
    partial_end = (data["partial_end"] / duration).astype(np.float32)

    model = ImplicitModel(
        ImplicitModelConfig(
            video_dim=data["features"].shape[2], word_dim=words.shape[2], hidden_dim=settings.hidden_dim,
            heads=settings.heads, dropout=settings.dropout, contrast_features=settings.contrast_features,
        )
    )

    steps_per_epoch = agree_on_steps(len(list(plan_epoch(clusters[:, 0], batches_config, 0, rank))), world_size, device)
    bf16 = device.type == "cuda"
    engine = deepspeed_engine(
        model, batch_size=batches_config.batch_size, learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        zero_stage=settings.zero_stage, lr_schedule=settings.lr_schedule, total_steps=settings.epochs * steps_per_epoch, bf16=bf16,
    )
    # The run config carries the loss settings under the same names as LossConfig's fields.
    losses = LossConfig(**{field.name: getattr(settings, field.name) for field in dataclasses.fields(LossConfig)})

    first_epoch, history = resume(engine)
    monitor = TrainingMonitor(**config["monitor"], rank=rank)
    validation = config.get("validation")
    if validation:
        known = ~(np.isnan(data["gt_start"].astype(float)) | np.isnan(data["gt_end"].astype(float)))
        validation_rows = np.flatnonzero(validation_videos(data["video_id"], validation["fraction"], validation["seed"]) & known)

    def tensor(array, dtype=torch.float32):
        return torch.as_tensor(array, device=device).to(dtype)

    for epoch in range(first_epoch, settings.epochs):
        model.train()
        batches = list(plan_epoch(clusters[:, 0], batches_config, epoch, rank))
        steps = agree_on_steps(len(batches), world_size, device)
        extra_round = 1
        while len(batches) < steps:  # same step count on every worker (see the module docstring)
            batches += list(plan_epoch(clusters[:, 0], batches_config, epoch + 10_000 * extra_round, rank))
            extra_round += 1
        sums: dict[str, float] = {}
        for positions in batches[:steps]:
            out = engine(
                tensor(data["features"][positions]),
                torch.as_tensor(data["mask"][positions], device=device),
                tensor(words[positions]),
                torch.as_tensor(words_valid[positions], device=device),
                tensor(anchor[positions]),
            )
            batch_start, batch_end = tensor(partial_start[positions]), tensor(partial_end[positions])
            v_clip = pool_clip(out.video, out.centres, out.valid, batch_start, batch_end).float() if losses.representation == "clip" else None
            total, terms = implicit_loss(
                losses, out.v_ev.float(), out.v_bg.float(), out.v_vd.float(), out.q.float(), v_clip,
                torch.as_tensor(clusters[positions], device=device), out.start.float(), out.end.float(),
                batch_start, batch_end, rank, world_size,
            )
            engine.backward(total)
            engine.step()
            monitor.step(len(positions))
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
        metrics = {f"loss_{name}": value / max(steps, 1) for name, value in sums.items()}
        metrics.update(
            epoch=epoch, steps=steps, learning_rate=float(engine.get_lr()[0]), samples=len(data["sample_id"]), steepness=float(model.steepness.detach()),
            resumed_from_epoch=first_epoch,  # > 0 when this worker group started from a checkpoint
        )
        metrics["samples_per_second"] = monitor.epoch(epoch, metrics)
        if validation:
            metrics.update(score_validation(model, device, data, words, words_valid, validation_rows, anchor, world_size))
        history.append(metrics)
        save_and_report(engine, rank, epoch, dataclasses.asdict(model.config), metrics, history)
    monitor.close()


def train_implicit(
    store_path: str, clusters_dir: str, settings: ImplicitConfig, batches, run_dir: str, text_model: str | None = None, max_tokens: int = 32,
    progress: bool = False, validation: dict | None = None, callbacks: tuple = (),
):
    """Train the implicit stage into RUN_DIR/implicit; returns Ray Train's Result (last epoch's metrics, latest checkpoint).

    `validation` ({"fraction": f, "seed": s}) scores the pseudo-labels of that part of the training videos
    after every epoch (`score_validation`; the metrics `val_pseudo_*`), for searches; `callbacks` go to
    Ray Train's RunConfig (a search passes Tune's report callback).
    """
    from cu_scale.monitoring import training_monitor_settings
    from cu_scale.store import FeatureStore
    from cu_scale.text_encoder import default_model_path
    from cu_scale.training import fit

    loop_config = {
        "monitor": training_monitor_settings(run_dir, "implicit"),
        "implicit": dataclasses.asdict(settings),
        "batches": dataclasses.asdict(batches.per_worker(settings.workers)),
        "clusters_dir": str(pathlib.Path(clusters_dir).resolve()),
        "text_model": str(text_model or default_model_path()),
        "max_tokens": max_tokens,
        "validation": validation,
    }
    return fit(
        worker_loop, loop_config, name="implicit", run_dir=run_dir, workers=settings.workers, max_failures=settings.max_failures,
        datasets={"train": FeatureStore(store_path).examples_dataset(split="train")}, epochs=settings.epochs, progress=progress, callbacks=callbacks,
    )


def load_implicit_model(checkpoint_dir: str | os.PathLike):
    """The trained `ImplicitModel` from a DeepSpeed checkpoint directory written by `worker_loop`."""
    from cu_scale.implicit_model import ImplicitModel, ImplicitModelConfig
    from cu_scale.training import read_checkpoint

    meta, states = read_checkpoint(checkpoint_dir)
    model = ImplicitModel(ImplicitModelConfig(**meta["model"]))
    model.load_state_dict(states)
    return model.eval()
