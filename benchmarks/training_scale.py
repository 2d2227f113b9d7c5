"""Training that streams, at 10k, 100k and 1M training samples: memory, start-up and speed beside the limit.

    .venv/bin/python benchmarks/training_scale.py [--sizes 10000 100000 1000000] [--dv 256] [--steps 32]
        [--root stores/bench] [--train-steps 150] [--k 64] [--batch 64] [--clusters 8] [--hidden 128]

For each size it builds (once, then reuses) a store of the demo world (`cu_scale.data.demo`: videos of 15-45 s
holding 2-4 actions, one to three queries each, uniform single-frame labels, simulated features at the
given width Dv and T steps), encodes it with the real encoder (word features and embeddings, the encode
stage) and clusters it (faiss, K clusters). At the defaults (Dv 256, T 32) the stores take about 10 kB
per training sample, 10.7 GB for all three sizes (9.6 GB of it the 1M store), and about 30 minutes to
build on two cores (the 1M store: 11 minutes to render and write, 9 to encode, each distinct query of a
shard once).

Then, each size in a fresh process (so that its peak memory is its own): the implicit stage itself
(`cu_scale.stages.implicit.train_implicit`, one Ray Train worker, DeepSpeed, the store's training stream) for
`--train-steps` steps, and the same number of steps of a plain loop in a Ray Train worker of the same
size over batches prebuilt in its memory (the batches the stage trains on, the first of the same stream; the limit a data path
can reach). It prints, per size: the training worker's peak RSS, the driver's peak RSS, the time from the
stage's start to its first step, the steps/s of both loops and their ratio (RSS counts the pages of Ray's
shared object store that the worker read batches from; "private" is its own memory, RssAnon); and a check of the batches:
in the rows the benchmark read, N distinct clusters × B/N samples in every batch, and over the whole
first epoch as its window tasks plan it (the same planner, on the store's cluster files, no features),
the same property for every batch and the fraction of repeated samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve()


def build_store(path: pathlib.Path, samples: int, args) -> None:
    """A demo-world store with at least `samples` training samples, written a chunk of videos at a time."""
    from cu_scale.data.demo import generate_demo_corpus
    from cu_scale.data.partial_labels import PartialLabelSpec, assign_partial_labels
    from cu_scale.data.simulator import FeatureSimulator, SimulatorSettings
    from cu_scale.data.store import StoreWriter

    simulator = FeatureSimulator(SimulatorSettings(feature_dim=args.dv, max_steps=args.steps, steps_per_second=1.0))
    spec = PartialLabelSpec("uniform", seed=0)
    written, chunk = 0, 0
    with StoreWriter(path, args.dv, args.steps, shard_videos=args.shard_videos, overwrite=True, description={"dataset": "demo", "benchmark": "training_scale"}) as writer:
        while written < samples:
            videos, chunk_samples = generate_demo_corpus(2000, seed=chunk, test_fraction=0.0)
            chunk_samples = assign_partial_labels(chunk_samples, spec, {v.video_id: v.duration for v in videos.values()})
            by_video: dict[str, list] = {}
            for sample in chunk_samples:
                if sample.split == "train":
                    renamed = f"c{chunk:04d}-{sample.video_id}"
                    by_video.setdefault(renamed, []).append(dataclasses.replace(sample, sample_id=f"c{chunk:04d}-{sample.sample_id}", video_id=renamed))
            for video in videos.values():
                renamed = f"c{chunk:04d}-{video.video_id}"
                if renamed in by_video and written < samples:
                    writer.add_video(renamed, video.duration, simulator.render(video), by_video[renamed], source=video.source)
                    written += len(by_video[renamed])
            chunk += 1
            print(f"  {path.name}: {written:,} training samples written", end="\r", flush=True)
    print()


def prepare(size: int, args) -> pathlib.Path:
    from cu_scale.stages.clustering import cluster_store
    from cu_scale.config import ClusterConfig, EncodeConfig
    from cu_scale.stages.encode import encode_store
    from cu_scale.ops.pipeline import start_ray

    path = pathlib.Path(args.root) / f"demo-{size}-dv{args.dv}-t{args.steps}"
    if not (path / "manifest.json").exists():
        started = time.perf_counter()
        build_store(path, size, args)
        print(f"  built {path} in {time.perf_counter() - started:.0f} s")
    start_ray()
    started = time.perf_counter()
    summary = encode_store(path, EncodeConfig(batch_size=256), progress=True)
    if summary["encoded_samples"]:
        print(f"  encoded {summary['encoded_samples']:,} queries in {time.perf_counter() - started:.0f} s")
    cluster_store(path, ClusterConfig(k=args.k, memberships=2))
    return path


def plain_loop(config: dict):
    """The limit: the implicit model's step over batches already in this worker's memory, nothing else."""
    import ray
    import ray.train
    import torch

    from cu_scale.config import ImplicitConfig
    from cu_scale.method.implicit_model import ImplicitModel
    from cu_scale.method.implicit_step import implicit_step
    from cu_scale.stages.training import deepspeed_engine, worker_setup

    settings = ImplicitConfig(**config["implicit"])
    rank, world_size, device = worker_setup(config, settings.seed)
    batches = [{name: torch.as_tensor(value) for name, value in row.items() if name != "sample_key"} for row in ray.get(config["batches"])]
    model = ImplicitModel(settings.model(config["video_dim"], config["word_dim"]))
    engine = deepspeed_engine(model, batch_size=len(batches[0]["anchor"]), learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
                              zero_stage=settings.zero_stage, lr_schedule=settings.lr_schedule, total_steps=config["steps"], bf16=device.type == "cuda")
    losses = settings.losses()
    started = None
    for step in range(config["steps"]):
        total, _ = implicit_step(engine, batches[step % len(batches)], losses)
        engine.backward(total)
        engine.step()
        if step == 0:
            started = time.time()
    ray.train.report({"steps_per_second": (config["steps"] - 1) / (time.time() - started)})


def last_report_callback():
    import ray.train

    class LastReport(ray.train.UserCallback):
        """Writes rank 0's last report to a file (Ray Train's Result keeps only reports with a checkpoint)."""

        def __init__(self, path: str):
            self.path = path

        def after_report(self, run_context, metrics, checkpoint):
            pathlib.Path(self.path).write_text(json.dumps(metrics[0]))

    return LastReport


def cluster_aware(nearest: np.ndarray, clusters: int) -> bool:
    """A batch's nearest clusters, in batch order, are N runs of B/N samples of one cluster each, N distinct."""
    groups = nearest.reshape(clusters, -1)
    return bool((groups == groups[:, :1]).all() and len(set(groups[:, 0].tolist())) == clusters)


def measure(size: int, args) -> dict:
    """One size, in this process: the stage, the plain loop, the batch checks."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from cu_scale.stages.clustering import clusters_dir, trainable_counts
    from cu_scale.config import BatchConfig, ClusterConfig, EncodeConfig, ImplicitConfig
    from cu_scale.stages.encode import check_encoder
    from cu_scale.stages.implicit import train_implicit
    from cu_scale.ops.pipeline import start_ray
    from cu_scale.stages.resources import training_group
    from cu_scale.data.store import FeatureStore
    from cu_scale.stages.streams import StoreLayout, implicit_plan, implicit_stream, implicit_window, window_shards

    path = pathlib.Path(args.root) / f"demo-{size}-dv{args.dv}-t{args.steps}"
    store = FeatureStore(path)
    settings = ImplicitConfig(epochs=1, hidden_dim=args.hidden, workers=1)
    batches, cluster, encode = BatchConfig(args.batch, args.clusters), ClusterConfig(k=args.k, memberships=2), EncodeConfig()
    start_ray()
    LastReport = last_report_callback()

    def stage_run() -> dict:
        run_dir = pathlib.Path(args.root) / "runs" / f"{size}-{time.time_ns()}"
        run_dir.mkdir(parents=True)
        reported = run_dir / "report.json"
        result = train_implicit(str(path), settings, batches, cluster, encode, str(run_dir), max_steps=args.train_steps, callbacks=(LastReport(str(reported)),))
        if result.error:
            raise RuntimeError(result.error)
        return json.loads(reported.read_text())

    stages = [stage_run()]  # memory and start-up are this first run's, when nothing of the store is in the page cache
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the driver builds the plain loop's batches

    # The same stream's first batches, prebuilt, for the plain loop; and their clusters checked.
    layout = StoreLayout.of(store, check_encoder(store, encode))
    counts = trainable_counts(store, cluster)
    size_g = window_shards(counts.sum(1), batches, cluster.k)
    plan = implicit_plan(counts, batches.per_worker(1), 1, size_g, 0)
    rows = implicit_stream(layout, str(clusters_dir(store, cluster)), 2, batches.per_worker(1), plan).take(args.prebuilt)
    rows_ok = all(cluster_aware(r["clusters"][:, 0], args.clusters) for r in rows)
    prebuilt = ray.put(rows)
    del rows
    cpus, threads, use_gpu = training_group(1)

    def plain_run() -> float:
        run_dir = pathlib.Path(args.root) / "runs" / f"plain-{size}-{time.time_ns()}"
        plain = TorchTrainer(
            plain_loop,
            train_loop_config={"implicit": dataclasses.asdict(settings), "batches": prebuilt, "steps": args.train_steps, "video_dim": store.feature_dim,
                               "word_dim": layout.word_dim, "torch_threads": threads},
            scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
            run_config=ray.train.RunConfig(name="plain", storage_path=str(run_dir.resolve()), callbacks=[LastReport(str(run_dir / "plain.json"))]),
        ).fit()
        if plain.error:
            raise RuntimeError(plain.error)
        return json.loads((run_dir / "plain.json").read_text())["steps_per_second"]

    # This machine's speed drifts by a quarter within minutes (the plain loop alone: 4.1 to 5.3 steps/s),
    # so the two loops take turns, `--rounds` times each, and are compared over the same minutes.
    plain_rates = [plain_run()]
    for _ in range(1, args.rounds):
        stages.append(stage_run())
        plain_rates.append(plain_run())
    stage = stages[0]
    stage_rates = [s["steps_per_second"] for s in stages]

    # The whole first epoch as its window tasks plan it (sample columns and cluster files only).
    planned, distinct_ok = 0, True
    for index, (shards, count) in enumerate(zip(plan.windows, plan.batches)):
        window, positions = implicit_window(layout, str(clusters_dir(store, cluster)), 2, batches.per_worker(1), shards, count, [0, index], features=False)
        nearest = window.columns["clusters"][:, 0]
        distinct_ok &= all(cluster_aware(nearest[p], args.clusters) for p in positions)
        planned += sum(len(p) for p in positions)
    trainable = int(counts.sum())
    return {
        "size": size, "trainable": trainable, "shards": len(store.shards), "window_shards": size_g, "windows": len(plan.windows), "epoch_steps": plan.steps,
        "stage_steps": stage["steps"], "worker_peak_rss": stage["worker_peak_rss_bytes"], "worker_peak_private": stage["worker_peak_private_bytes"], "driver_peak_rss": driver_peak, "first_step": stage["first_step_seconds"],
        "steps_per_second": float(np.mean(stage_rates)), "plain_steps_per_second": float(np.mean(plain_rates)),
        "round_ratios": [a / b for a, b in zip(stage_rates, plain_rates)], "stage_rates": stage_rates, "plain_rates": plain_rates,
        "rows_checked": args.prebuilt, "rows_ok": bool(rows_ok), "epoch_batches_ok": distinct_ok, "repeats": planned / trainable - 1,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="training samples per store")
    parser.add_argument("--dv", type=int, default=256, help="feature width Dv (default 256, the demo's)")
    parser.add_argument("--steps", type=int, default=32, help="feature steps T (default 32, the demo's)")
    parser.add_argument("--shard-videos", type=int, default=1024, help="videos per store shard (default 1024)")
    parser.add_argument("--root", default="stores/bench", help="where the stores are built and kept (default stores/bench)")
    parser.add_argument("--train-steps", type=int, default=150, help="steps of each loop (default 150: the 10k store's epoch has 164)")
    parser.add_argument("--rounds", type=int, default=2, help="turns of the stage and the plain loop, one after the other (default 2)")
    parser.add_argument("--prebuilt", type=int, help="batches the plain loop cycles over (default: --train-steps, the batches the stage trains on;"
                        " the first 32 batches of the 1M store trained 8%% faster than those of the 10k store, alternated in one process)")
    parser.add_argument("--k", type=int, default=64, help="K query clusters (default 64; the demo world has ~560 distinct queries)")
    parser.add_argument("--batch", type=int, default=64, help="B (default 64)")
    parser.add_argument("--clusters", type=int, default=8, help="N clusters per batch (default 8)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size D of the implicit model (default 128)")
    parser.add_argument("--build-only", action="store_true", help="build, encode and cluster the stores, measure nothing")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # one size, in a process of its own
    args = parser.parse_args()
    args.prebuilt = args.prebuilt or args.train_steps
    if args.measure:
        print("RESULT " + json.dumps(measure(args.measure, args)))
        return
    for size in args.sizes:
        print(f"store of {size:,} training samples")
        prepare(size, args)
    if args.build_only:
        return
    results = []
    forwarded = sys.argv[1:]
    for size in args.sizes:
        out = subprocess.run([sys.executable, str(HERE), *forwarded, "--measure", str(size)], capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"size {size} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT "):]))
        print(f"measured {size:,}: steps/s of the stage {results[-1]['stage_rates']}, of the plain loop {results[-1]['plain_rates']}")
    mb = 2**20
    print(f"\nimplicit stage, 1 worker, B={args.batch} (N={args.clusters} × {args.batch // args.clusters}), K={args.k}, Dv={args.dv}, T={args.steps}, hidden {args.hidden}, up to {args.train_steps} steps"
          " (the stage stops at the end of its first epoch)")
    print(f"{'samples':>10} {'shards':>6} {'G':>3} {'steps':>5} {'worker RSS':>11} {'(private)':>10} {'driver RSS':>11} {'first step':>11} {'steps/s':>8} {'plain':>7} {'ratio':>6} {'(rounds)':>12}   batches (rows, epoch plan)  repeats")
    base = results[0]
    for r in results:
        print(
            f"{r['trainable']:>10,} {r['shards']:>6} {r['window_shards']:>3} {r['stage_steps']:>5} {r['worker_peak_rss'] / mb:>8.0f} MB {r['worker_peak_private'] / mb:>7.0f} MB {r['driver_peak_rss'] / mb:>8.0f} MB {r['first_step']:>9.1f} s"
            f" {r['steps_per_second']:>8.2f} {r['plain_steps_per_second']:>7.2f} {r['steps_per_second'] / r['plain_steps_per_second']:>5.2f}× {'/'.join(f'{x:.2f}' for x in r['round_ratios']):>12}"
            f"   {'ok' if r['rows_ok'] else 'BAD'} ({r['rows_checked']}), {'ok' if r['epoch_batches_ok'] else 'BAD'} ({r['epoch_steps']:,} batches)  {100 * r['repeats']:5.2f} %"
        )
    last = results[-1]
    print(f"\nlargest against smallest: worker peak RSS {last['worker_peak_rss'] / base['worker_peak_rss']:.2f}× (private {last['worker_peak_private'] / base['worker_peak_private']:.2f}×),"
          f" time to first step {last['first_step'] / base['first_step']:.2f}×")


if __name__ == "__main__":
    main()
