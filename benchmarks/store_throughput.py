"""Feature-store throughput: the store's writer and readers beside plain pyarrow on the same files.

    .venv/bin/python benchmarks/store_throughput.py [--videos 2000] [--dv 1024] [--steps 64]

Features are rendered first (not timed) so that the write figure is the store alone: validation,
Arrow conversion, Parquet + zstd, checksums. Every figure is MB of raw float16 features per second;
ratios are against plain pyarrow in the same run, since absolute times drift on shared machines.
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

from cu_scale.data.records import Sample, Video
from cu_scale.data.simulator import FeatureSimulator, SimulatorSettings
from cu_scale.data.store import FeatureStore, StoreWriter, join_shard


def timed(function):
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--dv", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--shard-videos", type=int, default=256)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    simulator = FeatureSimulator(SimulatorSettings(feature_dim=args.dv, max_steps=args.steps))
    videos = []
    for i in range(args.videos):
        duration = float(rng.uniform(20, 40))
        video = Video(f"v{i:06d}", duration, "bench")
        samples = [Sample(f"s{i}-{k}", video.video_id, "a person opens the door.", "train", "bench", gt=(1.0, 5.0), partial=(2.0, 2.0), partial_kind="single-frame") for k in range(3)]
        videos.append((video, simulator.render(video), samples))
    feature_mb = sum(f.nbytes for _, f, _ in videos) / 1e6
    print(f"{args.videos} videos × ≤{args.steps} steps × Dv {args.dv} float16 = {feature_mb:,.1f} MB of features, {3 * args.videos} samples")

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)

        def write_store():
            with StoreWriter(root / "store", args.dv, args.steps, shard_videos=args.shard_videos) as writer:
                for video, features, samples in videos:
                    writer.add_video(video.video_id, video.duration, features, samples, source="bench")

        write_s, _ = timed(write_store)
        store = FeatureStore(root / "store")
        files = store.files("videos") + store.files("samples")

        def plain_write():  # the same video tables written by pyarrow alone, one file per shard, no checks
            for shard, path in enumerate(store.files("videos")):
                pq.write_table(pq.read_table(path), root / f"plain-{shard}.parquet", compression="zstd")

        read_back = sum(pq.read_table(p).nbytes for p in store.files("videos"))  # warm the page cache
        plain_write_s, _ = timed(plain_write)
        plain_read_s, _ = timed(lambda: [pq.read_table(p) for p in files])

        def local_examples():
            rows = 0
            for video_table, sample_table in store.iter_shards():
                rows += len(join_shard(video_table, sample_table, args.dv, args.steps)["sample_id"])
            return rows

        local_s, local_rows = timed(local_examples)

        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        # Each Ray path runs twice: the first pays for starting workers; the second is the steady rate.
        read_videos = lambda: sum(len(b["video_id"]) for b in store.videos_dataset().iter_batches(batch_size=256))
        videos_cold_s, _ = timed(read_videos)
        videos_ds_s, _ = timed(read_videos)
        ray.shutdown()
        assert local_rows == 3 * args.videos and read_back > 0

    rate = lambda seconds: feature_mb / seconds
    print(f"{'path':<52}{'MB/s':>9}{'vs pyarrow':>12}")
    print(f"{'write: StoreWriter (validate, Arrow, Parquet, sha256)':<52}{rate(write_s):>9.1f}{plain_write_s / write_s:>11.2f}×")
    print(f"{'write: plain pyarrow write_table, same tables':<52}{rate(plain_write_s):>9.1f}{1:>11.2f}×")
    print(f"{'read: plain pyarrow read_table, all shard files':<52}{rate(plain_read_s):>9.1f}{1:>11.2f}×")
    print(f"{'read: store, local shards joined to examples':<52}{rate(local_s):>9.1f}{plain_read_s / local_s:>11.2f}×")
    print(f"{'read: store, Ray Data videos_dataset (warm)':<52}{rate(videos_ds_s):>9.1f}{plain_read_s / videos_ds_s:>11.2f}×")
    print(f"  first (cold) Ray pass: videos {rate(videos_cold_s):.1f} MB/s (training reads: benchmarks/training_scale.py)")
    print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB (features held in memory: {feature_mb:,.0f} MB)")


if __name__ == "__main__":
    main()
