"""The `explicit` stage: fully-supervised grounding models trained on the run's labels, then evaluated.

Same layers as the implicit stage (`cu_scale.stages.training`): `train_explicit` (driver) plans the epochs of the
training stream and builds a Ray Train `TorchTrainer` per (model, label source) under
RUN_DIR/explicit/<Model>-<source>/; `worker_loop` is plain PyTorch in a DeepSpeed engine, fed with shuffled
batches that Ray Data builds from windows of the store (`cu_scale.stages.streams.explicit_stream`); the models know
nothing of either (`cu_scale.method.grounding_models`). `predict_split` runs the trained models over a split with
Ray Data batch inference and writes the predictions files (`cu_scale.evaluation.predictions`).

Label sources (`explicit.label_sources`): ``pseudo`` reads RUN_DIR/pseudo_labels/, ``gt`` the store's
ground truth, ``partial`` the raw partial labels (zero-length for single-frame labels), ``mixed`` a sample's
full moment where its label kind is full and its pseudo-label elsewhere. Training samples without the
chosen label are left out (an unlabelled sample has no pseudo-label either), and the count is reported. Targets are normalised by the video's
duration and clipped to [0, 1].
"""

from __future__ import annotations

import dataclasses
import importlib
import os

import numpy as np

from cu_scale.config import BatchConfig, EncodeConfig, ExplicitConfig
from cu_scale.storage import Location, locate


# Where the built-in models lived before the package had subpackages: configs and checkpoints written
# then name this module, and keep working.
FORMER_MODULES = {"cu_scale.grounding_models": "cu_scale.method.grounding_models"}


def model_class(path: str):
    """The class named by ``"package.module:ClassName"``, with an error that names the config field."""
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(FORMER_MODULES.get(module_name, module_name))
    except ImportError as error:
        raise ValueError(f"explicit.models: cannot import {module_name!r} for {path!r}: {error}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"explicit.models: {module_name} has no class {class_name!r}")
    return cls


def stage_name(model: str, source: str) -> str:
    """The directory (under RUN_DIR/explicit) of one model trained on one label source: ``SpanDETR-pseudo``."""
    return f"{model.partition(':')[2]}-{source}"


def worker_loop(config: dict):
    """Runs on every Ray Train worker; `config` is a plain dict (see `train_explicit`)."""
    from cu_scale.stages.monitoring import TrainingMonitor
    from cu_scale.stages.streams import EpochPlan, StoreLayout, explicit_stream
    from cu_scale.stages.training import StepClock, deepspeed_engine, epoch_batches, resume, save_and_report, train_epoch, worker_setup

    settings = ExplicitConfig(**config["explicit"])
    layout = StoreLayout(**config["layout"])
    plans = [EpochPlan(**plan) for plan in config["plans"]]
    rank, world_size, device = worker_setup(config, settings.seed)
    clock = StepClock(config["started_at"])
    model_options = {**settings.model_options(), **config["model_options"]}
    model = model_class(config["model"])(layout.feature_dim, layout.word_dim, **model_options)
    batch_size = settings.batch_size // world_size
    engine = deepspeed_engine(
        model, batch_size=batch_size, learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        zero_stage=settings.zero_stage, lr_schedule=settings.lr_schedule, total_steps=sum(plan.steps for plan in plans), bf16=device.type == "cuda",
    )
    first_epoch, history = resume(engine)
    clock.mark("engine")
    monitor = TrainingMonitor(**config["monitor"], rank=rank)
    meta = {"class": config["model"], "video_dim": layout.feature_dim, "word_dim": layout.word_dim, "options": model_options, "source": config["source"]}

    def stream(epoch: int):
        return epoch_batches(lambda: explicit_stream(layout, config["source"], config["pseudo_labels"], batch_size, settings.seed, plans[epoch], settings.attend_to_partial), rank, world_size, device, plans[epoch].steps)

    def loss_of(batch):
        out = engine(batch["features"].float(), batch["mask"], batch["words"].float(), batch["words_valid"])
        total, terms = model.loss(out, batch["target_start"], batch["target_end"], batch["inside_start"], batch["inside_end"])
        return total, terms, len(batch["target_start"])

    upcoming = stream(first_epoch) if first_epoch < settings.epochs else None
    for epoch in range(first_epoch, settings.epochs):
        means, steps = train_epoch(engine, upcoming, loss_of, model=model, clock=clock, monitor=monitor, epoch=epoch, rank=rank, planned_steps=plans[epoch].steps)
        metrics = {f"loss_{name}": value for name, value in means.items()}
        metrics.update(
            epoch=epoch, steps=steps, learning_rate=float(engine.get_lr()[0]), samples=config["samples"], unlabelled=config["unlabelled"],
            resumed_from_epoch=first_epoch, **clock.metrics(),
        )
        metrics["samples_per_second"] = monitor.epoch(epoch, metrics)
        history.append(metrics)
        last = epoch + 1 == settings.epochs
        upcoming = None if last else stream(epoch + 1)  # starts while this epoch's checkpoint is written
        save_and_report(engine, rank, epoch, meta, metrics, history, checkpoint=last or (epoch + 1) % settings.checkpoint_every == 0)
    monitor.close()


def train_explicit(
    store_path: str, settings: ExplicitConfig, model: str, source: str, run_dir: str, encode: EncodeConfig, batches: BatchConfig, k: int,
    progress: bool = False, model_options: dict | None = None, heartbeat=None,
):
    """Train `model` on `source` labels into RUN_DIR/explicit/<Model>-<source>; returns Ray Train's Result.

    The stream's windows are those of the implicit stage (`batches.window_shards`, derived from K = `k`)."""
    from cu_scale.stages.encode import check_encoder
    from cu_scale.stages.monitoring import training_monitor_settings
    from cu_scale.stages.pseudo_labels import PSEUDO_LABELS_DIR
    from cu_scale.data.store import FeatureStore
    from cu_scale.stages.streams import StoreLayout, check_window_fits, explicit_plan, labelled_counts, window_shards
    from cu_scale.stages.training import fit

    model_class(model)  # fail here, not in a worker, on a wrong class path
    pseudo_labels = locate(run_dir) / PSEUDO_LABELS_DIR
    if source in ("pseudo", "mixed") and not pseudo_labels.is_dir():
        raise FileNotFoundError(f"{pseudo_labels} is missing: run the pseudo-label stage first (or choose explicit.label_sources: [gt] or [partial])")
    store = FeatureStore(store_path)
    layout = StoreLayout.of(store, check_encoder(store, encode))
    labelled = labelled_counts(store, source)
    train = np.array([shard["splits"].get("train", 0) for shard in store.shards])
    batch_size = settings.batch_size // settings.workers
    size = window_shards(train, batches, k)
    plans = [explicit_plan(labelled, batch_size, settings.workers, size, settings.seed, epoch) for epoch in range(settings.epochs)]
    if not plans[0].steps:
        raise ValueError(f"{store.path}: no training sample has a {source} label")
    check_window_fits(layout.task_memory(plans[0].windows))
    loop_config = {
        "explicit": dataclasses.asdict(settings),
        "model": model,
        "model_options": model_options or {},
        "source": source,
        "pseudo_labels": pseudo_labels.uri,
        "layout": dataclasses.asdict(layout),
        "plans": [dataclasses.asdict(plan) for plan in plans],
        "samples": int(labelled.sum()),
        "unlabelled": int(train.sum() - labelled.sum()),
        "monitor": training_monitor_settings(run_dir, f"explicit/{stage_name(model, source)}", heartbeat),
    }
    return fit(
        worker_loop, loop_config, name=stage_name(model, source), run_dir=locate(run_dir) / "explicit", workers=settings.workers,
        max_failures=settings.max_failures, epochs=settings.epochs, progress=progress, placement=settings.placement,
    )


def load_explicit_model(checkpoint_dir: str | os.PathLike):
    """The trained grounding model from a checkpoint directory written by `worker_loop`."""
    from cu_scale.stages.training import read_checkpoint

    meta, states = read_checkpoint(checkpoint_dir)
    model = model_class(meta["model"]["class"])(meta["model"]["video_dim"], meta["model"]["word_dim"], **meta["model"]["options"])
    model.load_state_dict(states)
    return model.eval()


class GroundingActor:
    """A Ray Data actor: trained grounding models; one batch of inference rows in, each model's ranked spans
    (up to `top_k`, best first, in seconds) out."""

    def __init__(self, checkpoints: dict[str, str], threads: int, top_k: int):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.models = {name: load_explicit_model(path).to(self.device) for name, path in checkpoints.items()}
        self.top_k = top_k

    def __call__(self, batch: dict) -> dict:
        from cu_scale.method.grounding_models import ranked_spans

        torch = self.torch
        duration = batch["duration"][:, None]
        out = {key: batch[key] for key in ("sample_id", "video_id", "query", "partial_kind", "gt_start", "gt_end", "duration")}
        with torch.inference_mode():
            inputs = (
                torch.as_tensor(batch["features"], device=self.device).float(),
                torch.as_tensor(batch["mask"], device=self.device),
                torch.as_tensor(batch["words"], device=self.device).float(),
                torch.as_tensor(batch["words_valid"], device=self.device),
            )
            for index, model in enumerate(self.models.values()):
                output = model(*inputs)
                start, end, score = (x.double().cpu().numpy() for x in ranked_spans(output, self.top_k))
                out[f"pred_start_{index}"] = output.start.double().cpu().numpy() * duration[:, 0]
                out[f"pred_end_{index}"] = output.end.double().cpu().numpy() * duration[:, 0]
                out[f"spans_start_{index}"], out[f"spans_end_{index}"], out[f"spans_score_{index}"] = start * duration, end * duration, score
        return out


def predict_split(
    store_path: str, checkpoints: dict[str, str | os.PathLike], split: str, encode: EncodeConfig, out_dir: str | os.PathLike,
    heartbeat=None, top_k: int = 1, parquet: bool = False,
) -> dict[str, Location]:
    """Ground every sample of `split` with each trained model, in one pass over the split, and write each
    model's predictions OUT_DIR/<name>.jsonl (and with `parquet` OUT_DIR/<name>.parquet) as the batches arrive,
    in store order: {name: JSON Lines file}. Each record holds the model's answer and its `top_k` best spans."""
    import ray

    from cu_scale.stages.encode import check_encoder
    from cu_scale.evaluation.predictions import PredictionsWriter, prediction_record
    from cu_scale.stages.resources import READ_TASK_CPUS, actor_pool
    from cu_scale.data.store import FeatureStore
    from cu_scale.stages.streams import INFERENCE_ROWS, StoreLayout, inference_dataset

    store = FeatureStore(store_path)
    layout = StoreLayout.of(store, check_encoder(store, encode))
    pool = actor_pool(encode.actors, gpu=encode.device, readers=READ_TASK_CPUS)
    names = list(checkpoints)
    predictions = inference_dataset(layout, split).map_batches(
        GroundingActor,
        fn_constructor_kwargs={"checkpoints": {name: locate(path).uri for name, path in checkpoints.items()}, "threads": pool.threads, "top_k": top_k},
        batch_size=INFERENCE_ROWS,
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_gpus=pool.gpus_per_actor,
        num_cpus=pool.cpus_per_actor,
    )
    predictions.context.execution_options.preserve_order = True
    out_dir = locate(out_dir)
    writers = {name: [PredictionsWriter(out_dir / f"{name}.jsonl")] + ([PredictionsWriter(out_dir / f"{name}.parquet", parquet=True)] if parquet else []) for name in names}
    for batch in predictions.iter_batches(batch_size=None, batch_format="numpy"):
        if heartbeat is not None:
            heartbeat.beat.remote(len(batch["sample_id"]))
        for i in range(len(batch["sample_id"])):
            for index, name in enumerate(names):
                record = prediction_record(
                    batch["sample_id"][i], batch["video_id"][i], batch["query"][i], (batch[f"pred_start_{index}"][i], batch[f"pred_end_{index}"][i]),
                    (batch["gt_start"][i], batch["gt_end"][i]), batch["duration"][i],
                    spans=(batch[f"spans_start_{index}"][i], batch[f"spans_end_{index}"][i], batch[f"spans_score_{index}"][i]),
                    label_kind=batch["partial_kind"][i],
                )
                for writer in writers[name]:
                    writer.write(record)
    return {name: [writer.close() for writer in files][0] for name, files in writers.items()}
