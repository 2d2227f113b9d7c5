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
import json
import os
import pathlib
import tempfile
import threading

import numpy as np

from cu_scale.config import ImplicitConfig

CHECKPOINT_META = "cu_scale_epoch.json"


def _collect_shard(shard) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {}
    for batch in shard.iter_batches(batch_size=512, batch_format="numpy"):
        for key in ("sample_id", "query", "duration", "partial_start", "partial_end", "features", "mask"):
            parts.setdefault(key, []).append(batch[key])
    return {key: np.concatenate(value) for key, value in parts.items()}


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
    import deepspeed
    import ray.train
    import torch
    import torch.distributed as dist

    from cu_scale.batching import plan_epoch
    from cu_scale.config import BatchConfig
    from cu_scale.implicit_model import ImplicitModel, ImplicitModelConfig, pool_clip
    from cu_scale.losses import LossConfig, implicit_loss
    from cu_scale.text_encoder import QueryEncoder

    settings = ImplicitConfig(**config["implicit"])
    batches_config = BatchConfig(**config["batches"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(settings.seed + rank)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    data = _collect_shard(ray.train.get_dataset_shard("train"))
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

    def steps_everywhere(local_steps: int) -> int:
        steps = torch.tensor([local_steps])
        if world_size > 1:
            dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        return int(steps)

    total_steps = settings.epochs * steps_everywhere(len(list(plan_epoch(clusters[:, 0], batches_config, 0, rank))))
    schedule = {}
    if settings.lr_schedule == "cosine":
        schedule = {
            "scheduler": {
                "type": "WarmupCosineLR",
                "params": {"total_num_steps": total_steps, "warmup_num_steps": max(2, total_steps // 20), "warmup_type": "linear", "cos_min_ratio": 0.0},
            }
        }
    bf16 = device.type == "cuda"
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=model.parameters(),
        config={
            "train_micro_batch_size_per_gpu": batches_config.batch_size,
            "gradient_accumulation_steps": 1,
            "optimizer": {"type": "AdamW", "params": {"lr": settings.learning_rate, "weight_decay": settings.weight_decay, "torch_adam": True}},
            "zero_optimization": {"stage": settings.zero_stage},
            "bf16": {"enabled": bf16},
            "gradient_clipping": 1.0,
            **schedule,
        },
    )
    # The run config carries the loss settings under the same names as LossConfig's fields.
    losses = LossConfig(**{field.name: getattr(settings, field.name) for field in dataclasses.fields(LossConfig)})

    first_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            engine.load_checkpoint(directory)
            first_epoch = json.loads((pathlib.Path(directory) / CHECKPOINT_META).read_text())["epoch"] + 1

    def tensor(array, dtype=torch.float32):
        return torch.as_tensor(array, device=device).to(dtype)

    for epoch in range(first_epoch, settings.epochs):
        model.train()
        batches = list(plan_epoch(clusters[:, 0], batches_config, epoch, rank))
        steps = steps_everywhere(len(batches))
        extra_round = 1
        while len(batches) < steps:  # same step count on every worker (see the module docstring)
            batches += list(plan_epoch(clusters[:, 0], batches_config, epoch + 10_000 * extra_round, rank))
            extra_round += 1
        sums: dict[str, float] = {}
        for positions in batches[:steps]:
            out = engine(
                tensor(data["features"][positions], torch.bfloat16 if bf16 else torch.float32),
                torch.as_tensor(data["mask"][positions], device=device),
                tensor(words[positions], torch.bfloat16 if bf16 else torch.float32),
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
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
        metrics = {f"loss_{name}": value / max(steps, 1) for name, value in sums.items()}
        metrics.update(
            epoch=epoch, steps=steps, learning_rate=float(engine.get_lr()[0]), samples=len(data["sample_id"]), steepness=float(model.steepness.detach()),
            resumed_from_epoch=first_epoch,  # > 0 when this worker group started from a checkpoint
        )
        with tempfile.TemporaryDirectory() as directory:
            engine.save_checkpoint(directory)
            if rank == 0:
                meta = {"epoch": epoch, "model": dataclasses.asdict(model.config), "metrics": metrics}
                (pathlib.Path(directory) / CHECKPOINT_META).write_text(json.dumps(meta))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _watch_epochs(run_dir: str, epochs: int, stop: threading.Event) -> None:
    """A progress bar over epochs, fed by the checkpoints' metadata as Ray Train persists them.

    The workers' own output stays in their Ray logs; the driver learns of an epoch when its checkpoint
    lands in RUN_DIR/implicit, which is also what a resumed run starts from.
    """
    from tqdm import tqdm

    seen: set[str] = set()

    def new_epochs() -> list[dict]:
        found = []
        for meta in sorted((pathlib.Path(run_dir) / "implicit").glob(f"checkpoint_2*/{CHECKPOINT_META}")):
            if str(meta) not in seen:
                try:
                    found.append(json.loads(meta.read_text()))
                except (json.JSONDecodeError, OSError):
                    continue  # still being copied into place: read it on the next poll
                seen.add(str(meta))
        return found

    done = max((m["epoch"] + 1 for m in new_epochs()), default=0)
    with tqdm(total=epochs, initial=min(done, epochs), desc="implicit epochs", unit="epoch") as bar:
        while not stop.wait(1.0):
            for meta in new_epochs():
                metrics = meta.get("metrics", {})
                bar.update(max(0, meta["epoch"] + 1 - bar.n))
                bar.set_postfix(loss=f"{metrics.get('loss_total', float('nan')):.4f}", grnd=f"{metrics.get('loss_grnd', float('nan')):.4f}")


def train_implicit(store_path: str, clusters_dir: str, settings: ImplicitConfig, batches, run_dir: str, text_model: str | None = None, max_tokens: int = 32, progress: bool = False):
    """Train the implicit stage; returns Ray Train's Result (metrics of the last epoch, latest checkpoint)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from cu_scale.store import FeatureStore
    from cu_scale.text_encoder import default_model_path

    store = FeatureStore(store_path)
    use_gpu = ray.cluster_resources().get("GPU", 0) >= settings.workers
    # Ray Data reads the store while the workers train, and its read tasks need a CPU the workers have not
    # reserved: with as many workers as CPUs (two on this 2-core machine) the readers would never start
    # and training would wait forever. So a worker reserves one CPU, or its share of all CPUs but one.
    cpus_per_worker = min(1.0, max(0.1, (ray.cluster_resources().get("CPU", 1) - 1) / settings.workers))
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "implicit": dataclasses.asdict(settings),
            "batches": dataclasses.asdict(batches.per_worker(settings.workers)),
            "clusters_dir": str(pathlib.Path(clusters_dir).resolve()),
            "text_model": str(text_model or default_model_path()),
            "max_tokens": max_tokens,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name="implicit",
            storage_path=str(pathlib.Path(run_dir).resolve()),
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": store.examples_dataset(split="train")},
    )
    if not progress:
        return trainer.fit()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_epochs, args=(run_dir, settings.epochs, stop), daemon=True)
    watcher.start()
    try:
        return trainer.fit()
    finally:
        stop.set()
        watcher.join()


def latest_checkpoint(run_dir: str | os.PathLike) -> pathlib.Path:
    """The newest checkpoint directory Ray Train wrote under RUN_DIR/implicit."""
    checkpoints = sorted((pathlib.Path(run_dir) / "implicit").glob("checkpoint_2*"))
    if not checkpoints:
        raise FileNotFoundError(f"no implicit-stage checkpoint under {pathlib.Path(run_dir) / 'implicit'}: run `cu-scale implicit` first")
    return checkpoints[-1]


def load_implicit_model(checkpoint_dir: str | os.PathLike):
    """The trained `ImplicitModel` from a DeepSpeed checkpoint directory written by `worker_loop`."""
    import torch

    from cu_scale.implicit_model import ImplicitModel, ImplicitModelConfig

    directory = pathlib.Path(checkpoint_dir)
    meta = json.loads((directory / CHECKPOINT_META).read_text())
    tag = (directory / "latest").read_text().strip()
    states = torch.load(directory / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    model = ImplicitModel(ImplicitModelConfig(**meta["model"]))
    model.load_state_dict(states["module"])
    return model.eval()
