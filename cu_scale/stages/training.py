"""Ray Train + DeepSpeed plumbing shared by the implicit and the explicit stage.

Both stages train the same way: a `TorchTrainer` whose storage path is the run directory (so a rerun
resumes from the stage's latest checkpoint), workers that take their share of a stream of ready batches
(`cu_scale.stages.streams`; `epoch_batches` here), one DeepSpeed engine per worker (ZeRO stage from the config;
bf16 autocast on GPU, fp32 on CPU), one report and one checkpoint per epoch. The checkpoint carries a small
JSON file next to DeepSpeed's own files: the epoch, what is needed to rebuild the model, and the metrics of
every epoch so far (the training curves of the report come from the latest checkpoint alone).

Each epoch's stream is its own Ray Dataset (its window order depends on the epoch), built on rank 0 of the
worker group and split there with `streaming_split(W, equal=True)`; the split iterators travel to the other
ranks over torch.distributed (they are small handles to Ray Data's split coordinator). So a group that
restarts from a checkpoint at epoch k builds epoch k's stream, as an uninterrupted run would have. The
next epoch's stream is started before an epoch's checkpoint is written, so its first window is being read
while the checkpoint is saved (`epoch_batches`). Each epoch records where its start-up time went
(`StepClock`: worker, engine, stream, first step).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import resource
import tempfile
import threading
import time

from cu_scale.storage import Location, locate

CHECKPOINT_META = "cu_scale_epoch.json"
# Each rank lists the files it wrote into a checkpoint, with their sizes and SHA-256, before Ray Train
# persists them: a truncated or altered file is then named before DeepSpeed or torch.load touch it.
CHECKPOINT_FILES = "cu_scale_files_rank{rank}.json"
PREFETCH_BATCHES = 2  # batches a worker holds ready ahead of its step
# Ray Train 2.60's controller takes a worker's report when it polls the group, every 2 s by default, and a
# worker's second report waits for the first to be taken: an epoch shorter than that (a small corpus, a
# search trial) would wait out the poll. Polled 4× a second, an 80-epoch training of 8 steps an epoch took
# 55 s here instead of 188 s. RAY_TRAIN_HEALTH_CHECK_INTERVAL_S set by a user wins.
REPORT_POLL_SECONDS = "0.25"
DIRECT_STEPS = 128  # a group of one iterates an epoch of fewer batches without a split coordinator (`split_stream`)


def worker_setup(config: dict, seed: int):
    """A worker's first steps in both stages: its rank, world size and device, seeded torch with its
    share of the node's CPUs as threads."""
    import ray.train
    import torch

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(seed + rank)
    torch.set_num_threads(config["torch_threads"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return rank, world_size, device


def from_rank_zero(make, rank: int, world_size: int):
    """`make()` on rank 0, its result on every rank (pickled over torch.distributed)."""
    import torch.distributed as dist

    value = [make() if rank == 0 else None]
    if world_size > 1:
        dist.broadcast_object_list(value, src=0)
    return value[0]


def split_stream(make_dataset, rank: int, world_size: int, equal: bool = True, steps: int | None = None):
    """This rank's share of the dataset `make_dataset()` builds on rank 0 (`streaming_split`).

    The split runs Ray Data's executor in a coordinator actor of its own. Iterated directly, the executor
    runs in the training process, and its thread and the iterator's take the GIL from the training step's
    Python: on the 1M benchmark store the median step took 266 ms that way against 183 ms for a plain
    loop over batches in memory, and 191 ms against 186 ms through a split. But a coordinator costs about
    2 s an epoch (an 80-epoch training of 8 steps an epoch took 220 s instead of 55 s). So a group of one
    iterates directly when its epoch has fewer than `DIRECT_STEPS` batches (`steps`; None: directly)."""
    if world_size == 1 and (steps is None or steps < DIRECT_STEPS):
        return make_dataset()
    return from_rank_zero(lambda: make_dataset().streaming_split(world_size, equal=equal), rank, world_size)[rank]


def iterate(split, device, prefetch: int = PREFETCH_BATCHES, batch_size: int = 1):
    """Torch batches from a split; with `batch_size=1` each row is a whole batch, given without its leading axis."""
    for batch in split.iter_torch_batches(batch_size=batch_size, prefetch_batches=prefetch, device=device):
        yield {name: value[0] for name, value in batch.items()} if batch_size == 1 else batch


def private_memory() -> int:
    """This process's resident memory that is its own (RssAnon): RSS also counts the pages of Ray's shared
    object store that the process has read batches from, which are not a copy of its own."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class Prefetched:
    """An iterator whose first item is being fetched in a thread of its own from the moment it is made.

    Each epoch's stream starts with a window read (and, for several workers or a long epoch, a split coordinator): made
    before the last epoch's checkpoint is written, the next stream's first batch is ready when training resumes."""

    def __init__(self, iterator):
        self.iterator, self.first = iterator, {}
        self.thread = threading.Thread(target=self._fetch, daemon=True)
        self.thread.start()

    def _fetch(self):
        try:
            self.first["item"] = next(self.iterator)
        except StopIteration:
            pass
        except BaseException as error:  # raised where the items are consumed
            self.first["error"] = error

    def __iter__(self):
        self.thread.join()
        if "error" in self.first:
            raise self.first["error"]
        if "item" in self.first:
            yield self.first.pop("item")
            yield from self.iterator


def epoch_batches(make_dataset, rank: int, world_size: int, device, steps: int) -> Prefetched:
    """This rank's `steps` batches of the stream `make_dataset()` builds on rank 0, the first already on its way."""
    return Prefetched(iterate(split_stream(make_dataset, rank, world_size, steps=steps), device))


class StepClock:
    """The time to the first step (from `started_at`, the driver's wall clock when the stage started), steps
    per second within each epoch (from its first step to its last, so the stream's start-up is not in it)
    and the worker's peak memory, resident and private (sampled every second): what the training-scale
    benchmark reads from every epoch."""

    def __init__(self, started_at: float):
        self.started_at, self.peak_private, self.sampled = started_at, 0, 0.0
        self.startup = {"worker_seconds": time.time() - started_at}
        self.epoch_started = None
        self.epoch()

    def mark(self, name: str) -> None:
        """Record when a start-up phase ended (seconds since the stage started): the first epoch's metrics carry them."""
        self.startup.setdefault(f"{name}_seconds", time.time() - self.started_at)

    def epoch(self) -> None:
        """A new epoch begins (its wall time runs from the end of the last one's metrics)."""
        self.steps, self.since, self.last = 0, None, None
        self.epoch_started = self.epoch_started or time.time()

    def step(self) -> None:
        now = time.time()
        self.startup.setdefault("first_step_seconds", now - self.started_at)
        if self.since is None:
            self.since = now
        else:
            self.steps += 1
        self.last = now
        if now - self.sampled >= 1.0:
            self.peak_private, self.sampled = max(self.peak_private, private_memory()), now

    def metrics(self) -> dict:
        rate = self.steps / (self.last - self.since) if self.steps else float("nan")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        now = time.time()
        epoch_seconds, self.epoch_started = now - self.epoch_started, now
        return {
            "epoch_seconds": epoch_seconds,
            "first_step_seconds": float("nan"), **self.startup, "steps_per_second": rate,
            "worker_peak_rss_bytes": peak, "worker_peak_private_bytes": max(self.peak_private, private_memory()),
        }


def train_epoch(engine, batches, loss_of, *, model, clock: "StepClock", monitor, epoch: int, rank: int, planned_steps: int, max_steps: int | None = None) -> tuple[dict, int]:
    """One epoch of a stage's worker loop: for each batch, `loss_of(batch)` gives (objective, terms, samples),
    the engine steps, the clock and the monitor count it. Returns each term's mean over the epoch and the
    steps taken; a worker that received other than `planned_steps` batches (with no `max_steps` cut) fails,
    since its data-parallel peers would wait for it."""
    clock.mark("stream")
    model.train()
    clock.epoch()
    sums: dict[str, float] = {}
    steps = 0
    for batch in batches:
        total, terms, samples = loss_of(batch)
        engine.backward(total)
        engine.step()
        clock.step()
        monitor.step(samples)
        steps += 1
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value
        if steps == max_steps:
            break
    if max_steps is None and steps != planned_steps:
        raise RuntimeError(f"epoch {epoch}: worker {rank} received {steps} batches, {planned_steps} were planned")
    return {name: value / max(steps, 1) for name, value in sums.items()}, steps


def deepspeed_engine(model, *, batch_size: int, learning_rate: float, weight_decay: float, zero_stage: int, lr_schedule: str, total_steps: int, bf16: bool):
    """`deepspeed.initialize` with AdamW, gradient clipping 1.0 and, for "cosine", 5% linear warm-up then cosine to 0.

    On GPU the forward runs under DeepSpeed's `torch_autocast` in bf16 (fp32 master weights). Not its `bf16`
    mode: that holds the weights themselves in bf16 while the models take fp32 inputs (features, time codes),
    and the first step fails; nor a `torch.autocast` around the engine, which DeepSpeed switches off inside
    its forward. Both were seen on an H200. On CPU everything is fp32.

    On CPU, DeepSpeed's shared-memory allreduce kernel is left out, and gloo does the allreduce. DeepSpeed
    compiles that kernel with g++ when it first sets up communication, in every worker's first group of a
    new environment and again whenever the environment's path changes: 36 s before the first step of the
    shared tiny run in a fresh clone, for a kernel that only speeds up several CPU workers on one node."""
    import deepspeed
    import torch

    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # DeepSpeed keeps this dict, and reads it then

    schedule = {}
    if lr_schedule == "cosine":
        schedule = {
            "scheduler": {
                "type": "WarmupCosineLR",
                "params": {"total_num_steps": max(total_steps, 1), "warmup_num_steps": max(2, total_steps // 20), "warmup_type": "linear", "cos_min_ratio": 0.0},
            }
        }
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=model.parameters(),
        config={
            "train_micro_batch_size_per_gpu": batch_size,
            "gradient_accumulation_steps": 1,
            "optimizer": {"type": "AdamW", "params": {"lr": learning_rate, "weight_decay": weight_decay, "torch_adam": True}},
            "zero_optimization": {"stage": zero_stage},
            "torch_autocast": {"enabled": bf16, "dtype": "bfloat16"},
            "gradient_clipping": 1.0,
            **schedule,
        },
    )
    return engine


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: a file missing, truncated, altered or unreadable."""


def record_files(directory: str | os.PathLike, rank: int) -> None:
    """Write CHECKPOINT_FILES for `rank`: every file this rank saved under `directory`, its size and SHA-256."""
    root = pathlib.Path(directory)
    files = {
        str(path.relative_to(root)): {"bytes": path.stat().st_size, "sha256": locate(path).sha256()}
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.startswith("cu_scale_files_rank")
    }
    (root / CHECKPOINT_FILES.format(rank=rank)).write_text(json.dumps(files, indent=1))


def verify_checkpoint(checkpoint_dir: "str | os.PathLike | Location", checksums: bool = True) -> None:
    """Check every file the ranks listed (`record_files`) against its size and (with `checksums`) SHA-256.

    Raises CheckpointError naming the first file that is missing, truncated or altered, and what to do.
    A checkpoint written before the lists existed has nothing to check against and passes."""
    root = locate(checkpoint_dir)
    remedy = "train that stage again (`cu-scale run CONFIG --from STAGE`)"
    sizes = root.walk_files()
    for listing in root.glob(CHECKPOINT_FILES.format(rank="*")):
        try:
            files = json.loads(listing.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
            raise CheckpointError(f"{listing}: unreadable file list ({error}); {remedy}") from None
        for name, expected in files.items():
            path = root / name
            if name not in sizes:
                raise CheckpointError(f"{path}: missing from the checkpoint; {remedy}")
            size = sizes[name]
            if size != expected["bytes"]:
                raise CheckpointError(f"{path}: {size} bytes where {expected['bytes']} were written (truncated or altered); {remedy}")
            if checksums and path.sha256() != expected["sha256"]:
                raise CheckpointError(f"{path}: SHA-256 differs from the one written with it (altered); {remedy}")


def resume(engine) -> tuple[int, list[dict]]:
    """Load the checkpoint Ray Train hands this worker group, if any: (first epoch to run, metrics so far)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 0, []
    with checkpoint.as_directory() as directory:
        verify_checkpoint(directory)
        engine.load_checkpoint(directory)
        meta = json.loads((pathlib.Path(directory) / CHECKPOINT_META).read_text())
    return meta["epoch"] + 1, meta.get("history", [])


def save_and_report(engine, rank: int, epoch: int, model_meta: dict, metrics: dict, history: list[dict], checkpoint: bool = True) -> None:
    """Every rank saves its DeepSpeed state; rank 0 adds the metadata; then the report with the checkpoint.
    Without `checkpoint`, only the metrics are reported (a checkpoint costs a save and a copy per epoch)."""
    import ray.train

    if not checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        engine.save_checkpoint(directory)
        if rank == 0:
            meta = {"epoch": epoch, "model": model_meta, "metrics": metrics, "history": history}
            (pathlib.Path(directory) / CHECKPOINT_META).write_text(json.dumps(meta))
        record_files(directory, rank)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def watch_epochs(stage_dir: Location, epochs: int, stop: threading.Event, desc: str) -> None:
    """A progress bar over epochs, fed by the checkpoints' metadata as Ray Train persists them.

    The workers' own output stays in their Ray logs; the driver learns of an epoch when its checkpoint
    lands in the stage directory, which is also what a resumed run starts from.
    """
    from tqdm import tqdm

    seen: set[str] = set()

    def new_epochs() -> list[dict]:
        found = []
        for meta in (checkpoint / CHECKPOINT_META for checkpoint in checkpoints(stage_dir)):
            if meta.is_file() and str(meta) not in seen:
                try:
                    found.append(json.loads(meta.read_text()))
                except (json.JSONDecodeError, OSError):
                    continue  # still being copied into place: read it on the next poll
                seen.add(str(meta))
        return found

    done = max((m["epoch"] + 1 for m in new_epochs()), default=0)
    with tqdm(total=epochs, initial=min(done, epochs), desc=desc, unit="epoch") as bar:
        while not stop.wait(1.0):
            for meta in new_epochs():
                metrics = meta.get("metrics", {})
                bar.update(max(0, meta["epoch"] + 1 - bar.n))
                bar.set_postfix(loss=f"{metrics.get('loss_total', float('nan')):.4f}")


def fit(loop, loop_config: dict, *, name: str, run_dir: str, workers: int, max_failures: int, epochs: int, progress: bool, callbacks: tuple = (), placement: str = "pack"):
    """Build and run the `TorchTrainer` of one stage under RUN_DIR/NAME; returns Ray Train's Result.

    The loop reads its data itself, through the streams its config describes: no Ray Train dataset."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from cu_scale.stages.resources import training_group

    previous = checkpoints(locate(run_dir) / name)
    if previous:
        # The one Ray Train resumes from: a missing or truncated file is named here, from one listing, not after
        # the group's retries; the workers check every byte as they load it (`resume`).
        verify_checkpoint(previous[-1], checksums=False)
    cpus, threads, use_gpu = training_group(workers)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_SECONDS)  # Ray Train passes it to its controller
    trainer = TorchTrainer(
        loop,
        train_loop_config={**loop_config, "torch_threads": threads, "started_at": time.time()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}, placement_strategy=placement.upper()
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=locate(run_dir).uri,  # a URI in object storage: Ray Train opens it from the environment's credentials
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
        ),
    )
    if not progress:
        return trainer.fit()
    stop = threading.Event()
    watcher = threading.Thread(target=watch_epochs, args=(locate(run_dir) / name, epochs, stop, f"{name} epochs"), daemon=True)
    watcher.start()
    try:
        return trainer.fit()
    finally:
        stop.set()
        watcher.join()


def checkpoints(stage_dir: "str | os.PathLike | Location") -> list[Location]:
    """The checkpoint directories Ray Train wrote under a stage directory (RUN_DIR/implicit, ...), oldest
    first: Ray names them checkpoint_<UTC time>, so they sort by name."""
    return locate(stage_dir).glob("checkpoint_2*")


def latest_checkpoint(stage_dir: "str | os.PathLike | Location") -> Location:
    """The newest checkpoint directory Ray Train wrote under a stage directory (RUN_DIR/implicit, ...)."""
    found = checkpoints(stage_dir)
    if not found:
        raise FileNotFoundError(f"no checkpoint under {stage_dir}: train that stage first")
    return found[-1]


def checkpoint_meta(checkpoint_dir: "str | os.PathLike | Location") -> dict:
    """The metadata `save_and_report` wrote: epoch, model, metrics, and every epoch's metrics so far."""
    path = locate(checkpoint_dir) / CHECKPOINT_META
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {checkpoint_dir} is not a complete cu-scale checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({error}); the checkpoint is damaged") from None


def read_checkpoint(checkpoint_dir: "str | os.PathLike | Location") -> tuple[dict, dict]:
    """(metadata, model state dict) of a DeepSpeed checkpoint written by `save_and_report`, for inference.

    The files are checked first (`verify_checkpoint`), and the weights are read with
    ``torch.load(weights_only=True)``: tensors and plain containers only, so a checkpoint file cannot run
    code when it is loaded (DeepSpeed's model-states file holds nothing else)."""
    import pickle

    import torch

    directory = locate(checkpoint_dir)
    verify_checkpoint(directory)
    meta = checkpoint_meta(directory)
    weights = directory / "latest"
    try:
        weights = directory / weights.read_text().strip() / "mp_rank_00_model_states.pt"
        states = torch.load(io.BytesIO(weights.read_bytes()), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{weights}: missing; {directory} is not a complete DeepSpeed checkpoint") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{weights}: cannot be loaded as weights ({str(error).splitlines()[0]})") from None
    return meta, states["module"]
