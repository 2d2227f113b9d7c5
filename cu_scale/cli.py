"""The `cu-scale` command: parses arguments, builds the settings objects once, calls the library.

Nothing below this file reads command-line arguments or environment variables.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import resource
import shutil
import sys
import time

from cu_scale.annotations import AnnotationError
from cu_scale.batching import BatchingError
from cu_scale.clustering import ClusteringError
from cu_scale.config import ConfigError
from cu_scale.partial_labels import METHODS, PartialLabelSpec
from cu_scale.simulator import SimulatorSettings
from cu_scale.store import REJECT_REASONS, FeatureStore, LabelPolicy, StoreError, StoreRejectError

DEMO_DIR = "runs/demo"


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def describe_store(store: FeatureStore) -> str:
    m = store.manifest
    counts = m["counts"]
    store_bytes = sum(s["videos_bytes"] + s["samples_bytes"] for s in m["shards"])
    lines = [
        f"store        {store.path}",
        f"dataset      {m.get('dataset', '?')}   schema version {m['schema_version']}   created {m['created']}",
        f"features     {m.get('features', '?')}",
        f"             Dv {m['feature_dim']}   T (max steps) {m['max_steps']}   float16",
        f"size         {_mb(store_bytes)} on disk in {len(m['shards'])} shard(s) of ≤{m['shard_videos']} videos"
        f"   ({_mb(counts['feature_bytes'])} of raw features)",
        f"videos       {counts['videos']:,}",
        f"samples      {counts['samples']:,}",
    ]
    for split, c in counts["splits"].items():
        label = m.get("partial_labels", {}).get(split, "")
        lines.append(f"  {split:<10} {c['samples']:>9,} samples  {c['videos']:>8,} videos   partial labels: {label}")
    clipped = counts.get("clipped_labels", {})
    policy = m["label_policy"]
    lines.append(
        f"clipped      {sum(clipped.values()):,} label(s) overshooting the video "
        + (f"({', '.join(f'{k}: {v:,}' for k, v in clipped.items())}) " if clipped else "")
        + f"[policy: {policy['overshoot']}, tolerance {policy['tolerance_seconds']:g} s]"
    )
    rejects = m["rejects"]
    lines.append(f"rejects      {rejects['count']:,}" + (f"  → {store.path / rejects['file']}" if rejects["count"] else ""))
    for code, n in sorted(rejects["by_code"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {n:>9,}  {code}: {REJECT_REASONS.get(code, '')}")
    return "\n".join(lines)


def _peak_memory_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------------------


def _store_options(args):
    from cu_scale.prepare import StoreOptions

    return StoreOptions(
        out=args.out,
        max_steps=args.steps,
        shard_videos=args.shard_videos,
        policy=LabelPolicy(args.overshoot, args.overshoot_tolerance),
        strict=args.strict,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )


def _partial_spec(args) -> PartialLabelSpec:
    if args.glance and args.partial is not None:
        raise SystemExit("cu-scale: choose --glance (labels from the glance files) or --partial (sampled labels), not both")
    return PartialLabelSpec(args.partial or "uniform", seed=args.partial_seed, clip_seconds=args.clip_seconds)


def _simulator(args) -> SimulatorSettings | None:
    if not args.simulate:
        return None
    return SimulatorSettings(feature_dim=args.dv, max_steps=args.steps, noise=args.noise, seed=args.seed, world_seed=args.world_seed)


def _run_prepare(args) -> int:
    from cu_scale import prepare

    started = time.perf_counter()
    options = _store_options(args)
    if args.dataset == "demo":
        manifest = prepare.prepare_demo(options, num_videos=args.videos, seed=args.seed)
    elif args.dataset == "charades-sta":
        manifest = prepare.prepare_charades_sta(
            options, args.annotations, args.glance, _partial_spec(args), _simulator(args), args.features
        )
    else:
        manifest = prepare.prepare_activitynet(
            options, args.annotations, args.glance, _partial_spec(args), _simulator(args), args.features, tuple(args.splits)
        )
    print(describe_store(FeatureStore(args.out)))
    print(
        f"wrote        {_mb(manifest['counts']['feature_bytes'])} of features in {time.perf_counter() - started:.1f} s;"
        f" peak memory {_mb(_peak_memory_bytes())}"
    )
    return 0


def _add_store_arguments(parser: argparse.ArgumentParser, default_steps: int):
    out = parser.add_argument_group("output store")
    out.add_argument("--out", required=True, metavar="STORE", help="directory to create (must not exist unless --overwrite)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    out.add_argument("--steps", type=int, default=default_steps, metavar="T", help=f"max feature steps per video; longer videos are average-pooled to T (default {default_steps})")
    out.add_argument("--shard-videos", type=int, default=256, metavar="N", help="videos per Parquet shard (default 256)")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    checks = parser.add_argument_group("validation")
    checks.add_argument("--overshoot", choices=("clip", "reject"), default="clip", help="a label partly past the video's end or before 0: clip it and count it (default) or reject the sample")
    checks.add_argument("--overshoot-tolerance", type=float, default=5.0, metavar="SECONDS", help="a label starting more than this past the end is 'outside the video' and rejected (default 5)")
    checks.add_argument("--strict", action="store_true", help="any reject stops the run with a non-zero exit and prints the first reason")


def _add_dataset_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--annotations", required=True, metavar="DIR", help="directory with the dataset's annotation files")
    labels = parser.add_argument_group("partial labels")
    labels.add_argument("--glance", action="store_true", help="use the single-frame labels of the glance files (DIR/glance/)")
    labels.add_argument("--partial", choices=METHODS, help="sample partial labels from ground truth instead: a uniform or Gaussian single frame, or a clip (default: uniform)")
    labels.add_argument("--clip-seconds", type=float, default=0.0, metavar="R", help="clip length r in seconds for --partial clip")
    labels.add_argument("--partial-seed", type=int, default=0, help="seed of the partial-label sampler (default 0)")
    feats = parser.add_argument_group("features (exactly one)")
    source = feats.add_mutually_exclusive_group(required=True)
    source.add_argument("--simulate", action="store_true", help="render features with the simulator (DESIGN.md §4)")
    source.add_argument("--features", metavar="PATH", help="a directory of VIDEO.npy files or one .h5 file keyed by video id")
    feats.add_argument("--dv", type=int, default=1024, help="feature width Dv of simulated features (default 1024, as I3D)")
    feats.add_argument("--noise", type=float, default=SimulatorSettings.noise, help=f"simulator noise level (default {SimulatorSettings.noise})")
    feats.add_argument("--seed", type=int, default=0, help="simulator seed for per-video draws (default 0)")
    feats.add_argument("--world-seed", type=int, default=0, help="simulator seed of the concept vectors and feature map (default 0)")


# ----------------------------------------------------------------------------------------------------------
# store info, demo
# ----------------------------------------------------------------------------------------------------------


def _run_store_info(args) -> int:
    store = FeatureStore(args.store)
    if args.json:
        print(json.dumps(store.manifest, indent=2))
    else:
        print(describe_store(store))
    if args.verify:
        problems = store.verify()
        for problem in problems:
            print(f"cu-scale: {problem}", file=sys.stderr)
        print(f"verify       {'FAILED: ' + str(len(problems)) + ' problem(s)' if problems else 'all shard checksums match'}")
        return 1 if problems else 0
    return 0


def _run_demo(args) -> int:
    from cu_scale.clustering import cluster_store, clusters_dir
    from cu_scale.demo import demo_config
    from cu_scale.encode import encode_store
    from cu_scale.prepare import StoreOptions, prepare_demo

    out = pathlib.Path(args.out) / "store"
    config = demo_config(str(out), args.out)
    started = time.perf_counter()
    prepare_demo(StoreOptions(out=str(out), max_steps=32, overwrite=True, progress=not args.quiet), num_videos=args.videos, seed=args.seed)
    print(describe_store(FeatureStore(out)))
    _start_ray()
    encoded = encode_store(out, config.encode, progress=not args.quiet)
    print(f"encode       {encoded['encoded_samples']:,} queries with {pathlib.Path(encoded['model']).parent.name}, dim {encoded['dim']}")
    summary = cluster_store(out, config.cluster)
    _print_clusters(summary, out, config)
    # The store was just rebuilt: checkpoints of an earlier demo belong to another corpus and must not be resumed.
    shutil.rmtree(pathlib.Path(args.out) / "implicit", ignore_errors=True)
    _train_and_label(config, clusters_dir(FeatureStore(out), config.cluster), progress=not args.quiet)
    print(f"demo ready in {time.perf_counter() - started:.1f} s under {args.out}")
    return 0


# ----------------------------------------------------------------------------------------------------------
# encode, cluster
# ----------------------------------------------------------------------------------------------------------


def _parse_overrides(items: list[str]) -> dict:
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"cu-scale: --set expects KEY=VALUE (for example cluster.k=64), got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _start_ray():
    """The embedded default: a local Ray in this process, or the cluster named by RAY_ADDRESS (a Ray job)."""
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False  # our own bars count queries and shards
    return ray


def _run_encode(args) -> int:
    from cu_scale.config import load_config
    from cu_scale.encode import encode_store

    config = load_config(args.config, _parse_overrides(args.set))
    _start_ray()
    started = time.perf_counter()
    summary = encode_store(config.store, config.encode, progress=not args.quiet)
    seconds = time.perf_counter() - started
    rate = f", {summary['encoded_samples'] / seconds:,.0f} queries/s" if summary["encoded_samples"] else ""
    print(
        f"encoded {summary['encoded_samples']:,} queries in {seconds:.1f} s{rate} ({summary['skipped']} of {summary['shards']} shards"
        f" were done already); model {summary['model']}, dim {summary['dim']}"
    )
    return 0


def _run_cluster(args) -> int:
    from cu_scale.clustering import cluster_store
    from cu_scale.config import load_config

    config = load_config(args.config, _parse_overrides(args.set))
    _print_clusters(cluster_store(config.store, config.cluster), config.store, config)
    return 0


def _print_clusters(summary: dict, store_path, config) -> None:
    from cu_scale.clustering import clusters_dir

    near, member = summary["nearest_cluster_size"], summary["membership_size"]
    print(f"cluster      {summary['samples']:,} {summary['split']} queries into K={summary['k']} on {summary['device']} in {summary['seconds']} s (trained on {summary['trained_on']:,})")
    print(f"  nearest-cluster sizes  min {near['min']}  p10 {near['p10']}  median {near['median']}  p90 {near['p90']}  max {near['max']}   empty clusters {summary['empty_clusters']}")
    print(f"  with m={summary['memberships']} memberships   min {member['min']}  p10 {member['p10']}  median {member['median']}  p90 {member['p90']}  max {member['max']}")
    zero = summary["zero_embeddings"]
    if zero["count"]:
        print(f"  warning: {zero['count']} queries have a zero embedding (first: {', '.join(zero['first'])}); they join the nearest centroid by plain L2")
    print(f"  → {clusters_dir(FeatureStore(store_path), config.cluster)}")


def _run_implicit(args) -> int:
    from cu_scale.clustering import clusters_dir
    from cu_scale.config import load_config

    config = load_config(args.config, _parse_overrides(args.set))
    _start_ray()
    directory = clusters_dir(FeatureStore(config.store), config.cluster)
    if not (directory / "summary.json").exists():
        raise FileNotFoundError(f"{directory} is missing: run `cu-scale cluster {args.config}` first")
    _train(config, directory, progress=not args.quiet)
    return 0


def _train(config, clusters_directory, progress: bool) -> None:
    from cu_scale.implicit import train_implicit

    started = time.perf_counter()
    result = train_implicit(
        config.store, str(clusters_directory), config.implicit, config.batches, config.run_dir, config.encode.model, config.encode.max_tokens, progress=progress
    )
    if result.error:
        raise RuntimeError(f"implicit training failed: {result.error}")
    metrics = result.metrics
    terms = "  ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss_"))
    print(f"implicit     {metrics['epoch'] + 1} epoch(s) on {config.implicit.workers} worker(s) in {time.perf_counter() - started:.1f} s; last epoch: {terms}")
    print(f"  checkpoint → {result.checkpoint.path}")


def _label(config) -> None:
    from cu_scale.implicit import latest_checkpoint
    from cu_scale.pseudo_labels import PSEUDO_LABELS_FILE, pseudo_label

    checkpoint = latest_checkpoint(config.run_dir)
    started = time.perf_counter()
    result = pseudo_label(config.store, str(checkpoint), config.run_dir, config.encode.model, config.encode.actors, config.encode.max_tokens)
    print(f"pseudo-label {result['rows']:,} training samples from {checkpoint.name} in {time.perf_counter() - started:.1f} s → {pathlib.Path(config.run_dir) / PSEUDO_LABELS_FILE}")
    if result["metrics"]:
        _print_metrics_table(result["metrics"])


def _train_and_label(config, clusters_directory, progress: bool) -> None:
    _train(config, clusters_directory, progress)
    _label(config)


def _print_metrics_table(table: dict[str, dict[str, float]]) -> None:
    width = max(len(name) for name in table)
    print(f"  {'':<{width}}  {'R@0.3':>7} {'R@0.5':>7} {'R@0.7':>7} {'mIoU':>7}")
    for name, m in table.items():
        print(f"  {name:<{width}}  {m['R@0.3']:>7.2f} {m['R@0.5']:>7.2f} {m['R@0.7']:>7.2f} {m['mIoU']:>7.2f}")


def _run_pseudo_label(args) -> int:
    from cu_scale.config import load_config
    from cu_scale.implicit import latest_checkpoint

    config = load_config(args.config, _parse_overrides(args.set))
    latest_checkpoint(config.run_dir)  # fail before starting Ray when there is nothing to label with
    _start_ray()
    _label(config)
    return 0


def _run_ablate(args) -> int:
    from cu_scale.ablation import format_table, row_directory, run_ablation
    from cu_scale.clustering import clusters_dir
    from cu_scale.config import load_config

    config = load_config(args.config, _parse_overrides(args.set))
    directory = clusters_dir(FeatureStore(config.store), config.cluster)
    if not (directory / "summary.json").exists():
        raise FileNotFoundError(f"{directory} is missing: run `cu-scale cluster {args.config}` first")
    _start_ray()
    started = time.perf_counter()
    rows = args.rows.split(",") if args.rows else None
    results = run_ablation(config, directory, rows, on_row=lambda row, m: print(f"ablation {row}: pseudo-label mIoU {m['mIoU']:.2f} ({row_directory(config, row)})", flush=True), progress=not args.quiet)
    print(f"Table II: pseudo-label quality with subsets of the four contrasts ({time.perf_counter() - started:.0f} s)")
    print(format_table(results))
    return 0


# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cu-scale",
        description="Train temporal sentence grounding from partial labels with Contrast-Unity, on Ray.",
        epilog="Start with `cu-scale demo`; then `cu-scale prepare --help` for your own data.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="the embedded default: build the demo corpus (no files needed), encode and cluster its queries, train the implicit stage and pseudo-label")
    demo.add_argument("--out", default=DEMO_DIR, help=f"run directory (default {DEMO_DIR})")
    demo.add_argument("--videos", type=int, default=240, help="number of demo videos (default 240)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(run=_run_demo)

    prepare = commands.add_parser("prepare", help="write a sharded feature store from annotations and features")
    datasets = prepare.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    sta = datasets.add_parser(
        "charades-sta",
        help="Charades-STA (+ Charades v1 CSVs for durations and action intervals)",
        description="Reads DIR/charades_sta_{train,test}.txt (or DIR/glance/... with --glance) and DIR/Charades_v1_{train,test}.csv.",
    )
    _add_dataset_arguments(sta)
    _add_store_arguments(sta, default_steps=64)
    anet = datasets.add_parser(
        "activitynet",
        help="ActivityNet Captions",
        description="Reads DIR/{train,val_1,val_2}.json; with --glance, DIR/glance/SPLIT.json where it exists (other splits get sampled labels).",
    )
    _add_dataset_arguments(anet)
    anet.add_argument("--splits", nargs="+", default=["train", "val_1", "val_2"], help="splits to read (default: train val_1 val_2)")
    _add_store_arguments(anet, default_steps=128)
    demo_store = datasets.add_parser("demo", help="the built-in demo world (no files needed)")
    demo_store.add_argument("--videos", type=int, default=240, help="number of videos (default 240)")
    demo_store.add_argument("--seed", type=int, default=0)
    _add_store_arguments(demo_store, default_steps=32)
    prepare.set_defaults(run=_run_prepare)

    store = commands.add_parser("store", help="inspect a feature store")
    store_commands = store.add_subparsers(dest="store_command", required=True, metavar="SUBCOMMAND")
    info = store_commands.add_parser("info", help="counts per split, schema version, Dv, T, bytes, rejects")
    info.add_argument("store", metavar="STORE")
    info.add_argument("--verify", action="store_true", help="recompute every shard's checksum")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.set_defaults(run=_run_store_info)

    for name, run, text in (
        ("encode", _run_encode, "embed every query of the store with the sentence encoder (Ray Data actor pool; resumable)"),
        ("cluster", _run_cluster, "faiss k-means of the query embeddings into K clusters, m memberships per sample"),
        ("implicit", _run_implicit, "train the implicit stage (Ray Train + DeepSpeed; resumes from the run's latest checkpoint)"),
        ("pseudo-label", _run_pseudo_label, "run the trained event detector over the training set (Ray Data batch inference) and score it"),
        ("ablate", _run_ablate, "paper Table II: train and pseudo-label with subsets of the four contrasts (rows A1-A6) and print the table"),
    ):
        stage = commands.add_parser(name, help=text, description=text + ". Settings come from the YAML config (see configs/).")
        stage.add_argument("config", metavar="CONFIG", help="run configuration (YAML)")
        stage.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. --set cluster.k=64")
        stage.add_argument("--quiet", action="store_true", help="no progress bar")
        if name == "ablate":
            stage.add_argument("--rows", help="comma-separated rows to run (default: A1,A2,A3,A4,A5,A6); finished rows are reused")
        stage.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except StoreRejectError as error:
        print(f"cu-scale: --strict: {error}", file=sys.stderr)
        return 1
    except (AnnotationError, StoreError, RuntimeError, ConfigError, ClusteringError, BatchingError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"cu-scale: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
