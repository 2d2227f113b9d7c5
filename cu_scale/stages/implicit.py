"""The `implicit` stage: Ray Train workers, each running the model in a DeepSpeed engine (paper §II-D).

Three layers, as Ray's own docs lay them out:
- `train_implicit` (driver) plans every epoch of the training stream from small per-shard counts (which
  shards form each window, how many batches each makes: `cu_scale.stages.streams.implicit_plan`) and builds the
  `TorchTrainer`: a plain-dict config, the scaling (workers, GPU or CPU) and a RunConfig whose storage path
  is the run directory, so that a restarted run resumes from its latest checkpoint;
- `worker_loop` (per worker) is plain PyTorch + DeepSpeed: every epoch it takes its share of that epoch's
  stream of cluster-aware batches (built by Ray Data from the store's windows, `cu_scale.stages.streams`), trains,
  reports every loss term and saves a DeepSpeed checkpoint;
- the model and the losses know nothing of either (`cu_scale.method.implicit_model`, `cu_scale.method.losses`; the whole
  method step is `cu_scale.method.implicit_step`).

*Choices*: word features are the frozen MiniLM token states the encode stage stored (`cu_scale.stages.encode`).
The learning rate warms up linearly over the first 5% of the steps and then follows a cosine to zero
(`lr_schedule: cosine`, DeepSpeed's WarmupCosineLR): with a constant rate the pseudo-label mIoU of successive
epochs swung by ±2 points on simulated Charades-STA, and no epoch can be picked by its pseudo-label quality
without ground truth. The schedule's total is exact: every epoch's step count is planned before training.

*Mixed supervision* (a store whose samples carry different label kinds, `cu_scale.data.records.PARTIAL_KINDS`):
the stage trains on every sample that has a label, of whatever kind. A full label is the tightest partial
label: it is the sample's partial label (the store writes the moment there), so Eq. 8 holds the event to
cover the whole moment, and with `implicit.full_label_grounding: match` (the default) also to stay inside
it (`cu_scale.method.losses`); the event detector starts from the moment's centre as it does from a clip's.
An unlabelled sample is left out of the batches: the event detector needs an anchor inside the moment,
and every one of Eq. 4-8 compares or places that sample's event, so none is defined for it. Its query
still shapes the query clusters (`cu-scale cluster` clusters every training query), and so which samples
are positives and negatives of each other in Eq. 6-7; it gets no pseudo-label, and the explicit stage
leaves it out.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from cu_scale.config import BatchConfig, ClusterConfig, EncodeConfig, ImplicitConfig
from cu_scale.storage import locate

VALIDATION_COLUMNS = ("features", "mask", "words", "words_valid", "duration", "partial_start", "partial_end", "gt_start", "gt_end")


def score_validation(model, device, split, world_size: int, monitor) -> dict[str, float]:
    """Pseudo-label quality on the validation samples (this worker's share of their stream): the detector
    at each sample's own anchor, as the pseudo-label stage runs it, against ground truth (R@0.5, R@0.7,
    mIoU in percent, over the samples of every worker).

    *Choice*: the validation samples are trained on like every other (their partial labels only): the
    pseudo-labels being scored are those of the training set, which the method labels transductively.
    """
    import torch
    import torch.distributed as dist

    from cu_scale.evaluation.metrics import temporal_iou
    from cu_scale.stages.training import iterate

    model.eval()
    ious = []
    with torch.inference_mode():
        for batch in iterate(split, device, batch_size=256):
            duration = batch["duration"].double()
            anchor = ((batch["partial_start"] + batch["partial_end"]) / 2 / duration).float()
            out = model(batch["features"].float(), batch["mask"], batch["words"].float(), batch["words_valid"], anchor)
            d = duration.cpu().numpy()
            monitor.alive()
            ious.append(temporal_iou(out.start.float().cpu().numpy() * d, out.end.float().cpu().numpy() * d, batch["gt_start"].cpu().numpy(), batch["gt_end"].cpu().numpy()))
    iou = np.concatenate(ious) if ious else np.zeros(0)
    sums = torch.tensor([len(iou), iou.sum(), (iou >= 0.5).sum(), (iou >= 0.7).sum()], dtype=torch.float64, device=device)
    if world_size > 1:
        dist.all_reduce(sums)
    count = max(float(sums[0]), 1.0)
    model.train()
    return {"val_samples": int(sums[0]), "val_pseudo_mIoU": 100 * float(sums[1]) / count, "val_pseudo_R@0.5": 100 * float(sums[2]) / count, "val_pseudo_R@0.7": 100 * float(sums[3]) / count}


def worker_loop(config: dict):
    """Runs on every Ray Train worker; `config` is a plain dict (see `train_implicit`)."""
    from cu_scale.method.implicit_model import ImplicitModel
    from cu_scale.method.implicit_step import epoch_losses, implicit_step
    from cu_scale.stages.monitoring import TrainingMonitor
    from cu_scale.stages.streams import EpochPlan, StoreLayout, implicit_stream, inference_dataset
    from cu_scale.stages.training import StepClock, deepspeed_engine, epoch_batches, resume, save_and_report, split_stream, train_epoch, worker_setup

    settings = ImplicitConfig(**config["implicit"])
    per_worker = BatchConfig(**config["batches"])
    layout = StoreLayout(**config["layout"])
    plans = [EpochPlan(**plan) for plan in config["plans"]]
    rank, world_size, device = worker_setup(config, settings.seed)
    clock = StepClock(config["started_at"])
    model = ImplicitModel(settings.model(layout.feature_dim, layout.word_dim))
    engine = deepspeed_engine(
        model, batch_size=per_worker.batch_size, learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        zero_stage=settings.zero_stage, lr_schedule=settings.lr_schedule, total_steps=sum(plan.steps for plan in plans), bf16=device.type == "cuda",
    )
    losses = settings.losses()

    first_epoch, history = resume(engine)
    clock.mark("engine")
    monitor = TrainingMonitor(**config["monitor"], rank=rank)
    max_steps = config.get("max_steps")
    validation = config.get("validation")
    if validation:  # its own small stream, split once and read again every epoch
        validation_split = split_stream(
            lambda: inference_dataset(layout, "train", partial_only=True, validation=validation, columns=VALIDATION_COLUMNS), rank, world_size, equal=False
        )

    def stream(epoch: int):
        return epoch_batches(lambda: implicit_stream(layout, config["clusters_dir"], config["memberships"], per_worker, plans[epoch]), rank, world_size, device, plans[epoch].steps)

    upcoming = stream(first_epoch) if first_epoch < settings.epochs else None
    for epoch in range(first_epoch, settings.epochs):
        epoch_settings = epoch_losses(losses, epoch, settings.raun_warmup_epochs)

        def loss_of(batch):
            total, terms = implicit_step(engine, batch, epoch_settings, rank, world_size)
            return total, terms, len(batch["anchor"])

        means, steps = train_epoch(
            engine, upcoming, loss_of, model=model, clock=clock, monitor=monitor, epoch=epoch, rank=rank, planned_steps=plans[epoch].steps, max_steps=max_steps
        )
        metrics = {(name if name == "event_width" else f"loss_{name}"): value for name, value in means.items()}
        metrics.update(
            epoch=epoch, steps=steps, learning_rate=float(engine.get_lr()[0]), steepness=float(model.steepness.detach()),
            resumed_from_epoch=first_epoch,  # > 0 when this worker group started from a checkpoint
            **clock.metrics(),
        )
        metrics["samples_per_second"] = monitor.epoch(epoch, metrics)
        if validation:
            metrics.update(score_validation(model, device, validation_split, world_size, monitor))
        history.append(metrics)
        # The next epoch's stream starts while this one's checkpoint is written (after the validation
        # stream: both ask for read tasks, and a window task waits for its consumer).
        upcoming = stream(epoch + 1) if max_steps is None and epoch + 1 < settings.epochs else None
        save_and_report(engine, rank, epoch, dataclasses.asdict(model.config), metrics, history, checkpoint=max_steps is None)
        if max_steps is not None:
            break
    monitor.close()


def train_implicit(
    store_path: str, settings: ImplicitConfig, batches: BatchConfig, cluster: ClusterConfig, encode: EncodeConfig, run_dir: str,
    progress: bool = False, validation: dict | None = None, callbacks: tuple = (), max_steps: int | None = None, heartbeat=None,
):
    """Train the implicit stage into RUN_DIR/implicit; returns Ray Train's Result (last epoch's metrics, latest checkpoint).

    `validation` ({"fraction": f, "seed": s}) scores the pseudo-labels of that part of the training videos
    after every epoch (`score_validation`; the metrics `val_pseudo_*`), for searches; `callbacks` go to
    Ray Train's RunConfig (a search passes Tune's report callback). `max_steps` ends the stage after that
    many steps of its first epoch, without a checkpoint (benchmarks and smoke tests). `heartbeat`: the
    stage's `cu_scale.stages.watchdog.Heartbeat`, told of the workers' progress.
    """
    from cu_scale.stages.clustering import clusters_dir, trainable_counts
    from cu_scale.stages.encode import check_encoder
    from cu_scale.stages.monitoring import training_monitor_settings
    from cu_scale.data.store import FeatureStore
    from cu_scale.stages.streams import StoreLayout, check_window_fits, implicit_plan, window_shards
    from cu_scale.stages.training import fit

    store = FeatureStore(store_path)
    layout = StoreLayout.of(store, check_encoder(store, encode))
    directory = clusters_dir(store, cluster)
    if not (directory / "summary.json").exists():
        raise FileNotFoundError(f"{directory} is missing: run the cluster stage first (`cu-scale cluster CONFIG`)")
    counts = trainable_counts(store, cluster)
    per_worker = batches.per_worker(settings.workers)
    size = window_shards(counts.sum(1), batches, cluster.k)
    plans = [implicit_plan(counts, per_worker, settings.workers, size, epoch) for epoch in range(settings.epochs)]
    check_window_fits(layout.task_memory(plans[0].windows))
    loop_config = {
        "monitor": training_monitor_settings(run_dir, "implicit", heartbeat),
        "implicit": dataclasses.asdict(settings),
        "batches": dataclasses.asdict(per_worker),
        "layout": dataclasses.asdict(layout),
        "plans": [dataclasses.asdict(plan) for plan in plans],
        "clusters_dir": directory.uri,
        "memberships": cluster.memberships,
        "validation": validation,
        "max_steps": max_steps,
    }
    return fit(
        worker_loop, loop_config, name="implicit", run_dir=run_dir, workers=settings.workers, max_failures=settings.max_failures,
        epochs=settings.epochs, progress=progress, callbacks=callbacks, placement=settings.placement,
    )


def load_implicit_model(checkpoint_dir: str | os.PathLike):
    """The trained `ImplicitModel` from a DeepSpeed checkpoint directory written by `worker_loop`.

    A checkpoint whose model settings this version does not know (written by another version of
    cu_scale) is refused with the settings and the file named, before any weights are read."""
    from cu_scale.method.implicit_model import ImplicitModel, ImplicitModelConfig
    from cu_scale.stages.training import CHECKPOINT_META, checkpoint_meta, read_checkpoint

    unknown = sorted(set(checkpoint_meta(checkpoint_dir)["model"]) - {f.name for f in dataclasses.fields(ImplicitModelConfig)})
    if unknown:
        raise ValueError(
            f"{locate(checkpoint_dir) / CHECKPOINT_META}: model settings {', '.join(unknown)} are unknown to this version of "
            "cu_scale (the checkpoint was written by another one); train the implicit stage again or use the version that wrote it"
        )
    meta, states = read_checkpoint(checkpoint_dir)
    model = ImplicitModel(ImplicitModelConfig(**meta["model"]))
    model.load_state_dict(states)
    return model.eval()
