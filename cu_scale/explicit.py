"""The `explicit` stage: fully-supervised grounding models trained on the run's labels, then evaluated.

Same layers as the implicit stage (`cu_scale.training`): `train_explicit` (driver) builds a Ray Train
`TorchTrainer` per (model, label source) under RUN_DIR/explicit/<Model>-<source>/; `worker_loop` is plain
PyTorch in a DeepSpeed engine; the models know nothing of either (`cu_scale.grounding_models`).
`predict_split` runs the trained model over a split with Ray Data batch inference and writes the
predictions file (`cu_scale.evaluation`).

Label sources (`explicit.label_sources`): ``pseudo`` reads RUN_DIR/pseudo_labels.parquet, ``gt`` the
store's ground truth, ``partial`` the raw partial labels (zero-length for single-frame labels). Training
samples without the chosen label are left out, and the count is reported. Targets are normalised by the
video's duration and clipped to [0, 1].
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pathlib

import numpy as np

from cu_scale.config import ExplicitConfig

SHARD_COLUMNS = ("sample_id", "query", "duration", "partial_start", "partial_end", "gt_start", "gt_end", "features", "mask")


def model_class(path: str):
    """The class named by ``"package.module:ClassName"``, with an error that names the config field."""
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"explicit.models: cannot import {module_name!r} for {path!r}: {error}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"explicit.models: {module_name} has no class {class_name!r}")
    return cls


def stage_name(model: str, source: str) -> str:
    """The directory (under RUN_DIR/explicit) of one model trained on one label source: ``SpanDETR-pseudo``."""
    return f"{model.partition(':')[2]}-{source}"


def training_targets(data: dict, source: str, pseudo_labels: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) in seconds for each sample of `data` from `source`; NaN where the label is unknown."""
    if source == "gt":
        return data["gt_start"].astype(float), data["gt_end"].astype(float)
    if source == "partial":
        return data["partial_start"].astype(float), data["partial_end"].astype(float)
    import pyarrow.parquet as pq

    table = pq.read_table(pseudo_labels, columns=["sample_id", "pseudo_start", "pseudo_end"]).to_pydict()
    lookup = dict(zip(table["sample_id"], zip(table["pseudo_start"], table["pseudo_end"])))
    pairs = np.array([lookup.get(s, (np.nan, np.nan)) for s in data["sample_id"]], float).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def worker_loop(config: dict):
    """Runs on every Ray Train worker; `config` is a plain dict (see `train_explicit`)."""
    import torch

    from cu_scale.monitoring import TrainingMonitor
    from cu_scale.text_encoder import QueryEncoder
    from cu_scale.training import agree_on_steps, deepspeed_engine, resume, save_and_report, start_worker

    settings = ExplicitConfig(**config["explicit"])
    rank, world_size, device, data = start_worker(config, settings.seed, SHARD_COLUMNS)
    start, end = training_targets(data, config["source"], config["pseudo_labels"])
    duration = data["duration"].astype(float)
    known = ~(np.isnan(start) | np.isnan(end))
    target_start = np.clip(start / duration, 0, 1).astype(np.float32)
    target_end = np.clip(end / duration, 0, 1).astype(np.float32)
    rows = np.flatnonzero(known)
    words, words_valid = QueryEncoder(config["text_model"], max_tokens=config["max_tokens"]).encode_words(list(data["query"][rows]))
    words = words.astype(np.float16)

    model_options = {**settings.model_options(), **config["model_options"]}
    model = model_class(config["model"])(data["features"].shape[2], words.shape[2], **model_options)
    batch_size = settings.batch_size // world_size
    steps_per_epoch = agree_on_steps(len(rows) // batch_size, world_size, device, minimum=True)
    if steps_per_epoch == 0:
        raise ValueError(f"{config['source']} labels: {len(rows)} training samples on worker {rank} make no batch of {batch_size}")
    bf16 = device.type == "cuda"
    engine = deepspeed_engine(
        model, batch_size=batch_size, learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        zero_stage=settings.zero_stage, lr_schedule=settings.lr_schedule, total_steps=settings.epochs * steps_per_epoch, bf16=bf16,
    )
    first_epoch, history = resume(engine)
    monitor = TrainingMonitor(**config["monitor"], rank=rank)
    meta = {"class": config["model"], "video_dim": int(data["features"].shape[2]), "word_dim": int(words.shape[2]), "options": model_options, "source": config["source"]}

    for epoch in range(first_epoch, settings.epochs):
        model.train()
        order = np.random.default_rng([settings.seed, rank, epoch]).permutation(len(rows))
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            batch = np.sort(order[step * batch_size : (step + 1) * batch_size])  # positions in rows / words
            picked = rows[batch]
            out = engine(
                torch.as_tensor(data["features"][picked], device=device).float(),
                torch.as_tensor(data["mask"][picked], device=device),
                torch.as_tensor(words[batch], device=device).float(),
                torch.as_tensor(words_valid[batch], device=device),
            )
            total, terms = model.loss(out, torch.as_tensor(target_start[picked], device=device), torch.as_tensor(target_end[picked], device=device))
            engine.backward(total)
            engine.step()
            monitor.step(len(batch))
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
        metrics = {f"loss_{name}": value / steps_per_epoch for name, value in sums.items()}
        metrics.update(epoch=epoch, steps=steps_per_epoch, learning_rate=float(engine.get_lr()[0]), samples=int(len(rows)), unlabelled=int((~known).sum()), resumed_from_epoch=first_epoch)
        metrics["samples_per_second"] = monitor.epoch(epoch, metrics)
        history.append(metrics)
        last = epoch + 1 == settings.epochs
        save_and_report(engine, rank, epoch, meta, metrics, history, checkpoint=last or (epoch + 1) % settings.checkpoint_every == 0)
    monitor.close()


def train_explicit(store_path: str, settings: ExplicitConfig, model: str, source: str, run_dir: str, text_model: str | None = None, max_tokens: int = 32, progress: bool = False, model_options: dict | None = None):
    """Train `model` on `source` labels into RUN_DIR/explicit/<Model>-<source>; returns Ray Train's Result."""
    from cu_scale.monitoring import training_monitor_settings
    from cu_scale.pseudo_labels import PSEUDO_LABELS_FILE
    from cu_scale.store import FeatureStore
    from cu_scale.text_encoder import default_model_path
    from cu_scale.training import fit

    model_class(model)  # fail here, not in a worker, on a wrong class path
    pseudo_labels = pathlib.Path(run_dir) / PSEUDO_LABELS_FILE
    if source == "pseudo" and not pseudo_labels.is_file():
        raise FileNotFoundError(f"{pseudo_labels} is missing: run the pseudo-label stage first (or choose explicit.label_sources: [gt] or [partial])")
    loop_config = {
        "explicit": dataclasses.asdict(settings),
        "model": model,
        "model_options": model_options or {},
        "source": source,
        "pseudo_labels": str(pseudo_labels.resolve()),
        "text_model": str(text_model or default_model_path()),
        "max_tokens": max_tokens,
    }
    return fit(
        worker_loop, {**loop_config, "monitor": training_monitor_settings(run_dir, f"explicit/{stage_name(model, source)}")},
        name=stage_name(model, source), run_dir=str(pathlib.Path(run_dir) / "explicit"), workers=settings.workers,
        max_failures=settings.max_failures, datasets={"train": FeatureStore(store_path).examples_dataset(split="train")},
        epochs=settings.epochs, progress=progress,
    )


def load_explicit_model(checkpoint_dir: str | os.PathLike):
    """The trained grounding model from a checkpoint directory written by `worker_loop`."""
    from cu_scale.training import read_checkpoint

    meta, states = read_checkpoint(checkpoint_dir)
    model = model_class(meta["model"]["class"])(meta["model"]["video_dim"], meta["model"]["word_dim"], **meta["model"]["options"])
    model.load_state_dict(states)
    return model.eval()


class Grounder:
    """A Ray Data actor: trained grounding models + the query encoder; one batch of examples in, each
    model's spans out (the words are encoded once for all models)."""

    def __init__(self, checkpoints: dict[str, str], text_model: str, max_tokens: int, threads: int):
        import torch

        from cu_scale.text_encoder import QueryEncoder

        torch.set_num_threads(threads)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.models = {name: load_explicit_model(path).to(self.device) for name, path in checkpoints.items()}
        self.encoder = QueryEncoder(text_model, device=self.device, max_tokens=max_tokens)

    def __call__(self, batch: dict) -> dict:
        torch = self.torch
        words, words_valid = self.encoder.encode_words(list(batch["query"]))
        duration = batch["duration"].astype(np.float64)
        out = {key: batch[key] for key in ("sample_id", "video_id", "query", "gt_start", "gt_end")}
        out["duration"] = duration
        with torch.inference_mode():
            inputs = (
                torch.as_tensor(batch["features"], device=self.device).float(),
                torch.as_tensor(batch["mask"], device=self.device),
                torch.as_tensor(words, device=self.device),
                torch.as_tensor(words_valid, device=self.device),
            )
            for index, model in enumerate(self.models.values()):
                spans = model(*inputs)
                out[f"start_{index}"] = spans.start.float().cpu().numpy() * duration
                out[f"end_{index}"] = spans.end.float().cpu().numpy() * duration
        return out


def predict_split(store_path: str, checkpoints: dict[str, str | os.PathLike], split: str, text_model: str | None = None, max_tokens: int = 32, actors: int = 1) -> dict[str, list[dict]]:
    """Ground every sample of `split` with each trained model, in one pass over the split: {name: prediction records}."""
    import ray

    from cu_scale.evaluation import prediction_record
    from cu_scale.store import FeatureStore
    from cu_scale.text_encoder import default_model_path

    threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // actors)
    use_gpu = ray.cluster_resources().get("GPU", 0) >= actors
    names = list(checkpoints)
    predictions = FeatureStore(store_path).examples_dataset(split=split).map_batches(
        Grounder,
        fn_constructor_kwargs={
            "checkpoints": {name: str(path) for name, path in checkpoints.items()},
            "text_model": str(text_model or default_model_path()),
            "max_tokens": max_tokens,
            "threads": threads,
        },
        batch_size=256,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if use_gpu else 0,
        num_cpus=1,
    )
    records: dict[str, list[dict]] = {name: [] for name in names}
    for batch in predictions.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["sample_id"])):
            for index, name in enumerate(names):
                records[name].append(
                    prediction_record(
                        batch["sample_id"][i], batch["video_id"][i], batch["query"][i], (batch[f"start_{index}"][i], batch[f"end_{index}"][i]),
                        (batch["gt_start"][i], batch["gt_end"][i]), batch["duration"][i],
                    )
                )
    return {name: sorted(rows, key=lambda r: r["sample_id"]) for name, rows in records.items()}
