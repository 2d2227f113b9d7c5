"""The `cu-scale` command: parses arguments, builds the settings objects once, calls the library.

Nothing below this file reads command-line arguments or environment variables.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import time

from cu_scale.data.annotations import AnnotationError
from cu_scale.method.batching import BatchingError
from cu_scale.stages.clustering import ClusteringError
from cu_scale.config import DEFAULT_STEPS, ConfigError, PrepareConfig
from cu_scale.data.demo import WORLDS
from cu_scale.data.partial_labels import METHODS
from cu_scale.ops.pipeline import STAGE_NAMES
from cu_scale.data.simulator import SimulatorSettings
from cu_scale.console import describe_store, error_line, megabytes
from cu_scale.evaluation.predictions import PredictionsError
from cu_scale.data.store import OVERSHOOT_POLICIES, FeatureStore, StoreError, StoreRejectError

DEMO_DIR = "runs/demo"
DEFAULT_SEARCH = pathlib.Path(__file__).resolve().parents[1] / "tune" / "default.yaml"


def _peak_memory_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------------------


def prepare_settings(args) -> PrepareConfig:
    """The `prepare:` section of a run config that these options describe: both build stores the same way."""
    if args.dataset not in ("demo", "corpus") and args.glance and args.partial is not None:
        raise SystemExit("cu-scale: choose --glance (labels from the glance files) or --partial (sampled labels), not both")
    given = {
        "steps": args.steps, "shard_videos": args.shard_videos, "overshoot": args.overshoot, "overshoot_tolerance": args.overshoot_tolerance,
        "strict": args.strict, "feature_dim": args.dv, "seed": args.seed, "world_seed": args.world_seed, "noise": args.noise,
    }
    if args.dataset == "demo":
        given.update(videos=args.videos, world=args.world)
    else:
        given.update(annotations=args.annotations, partial=args.partial, clip_seconds=args.clip_seconds, partial_seed=args.partial_seed,
                     features=args.features, full_fraction=args.full_fraction, unlabelled_fraction=args.unlabelled_fraction)
        if args.dataset == "activitynet":
            given["splits"] = tuple(args.splits)
        if args.dataset == "corpus":
            given.update(durations=args.durations, sample_labels=args.partial is not None or None)
        else:
            given["glance"] = args.glance
    try:
        return PrepareConfig(dataset=args.dataset, **{k: v for k, v in given.items() if v is not None})
    except ConfigError as error:
        raise ConfigError(f"cu-scale prepare {args.dataset}: {error}") from None


def _run_prepare(args) -> int:
    from cu_scale.ops.pipeline import build_store

    started = time.perf_counter()
    manifest = build_store(prepare_settings(args), args.out, overwrite=args.overwrite, progress=not args.quiet)
    print(describe_store(FeatureStore(args.out)))
    print(
        f"wrote        {megabytes(manifest['counts']['feature_bytes'])} of features in {time.perf_counter() - started:.1f} s;"
        f" peak memory {megabytes(_peak_memory_bytes())}"
    )
    return 0


DEFAULTS = PrepareConfig()  # every option's default is the config section's


def _add_store_arguments(parser: argparse.ArgumentParser, dataset: str):
    out = parser.add_argument_group("output store")
    out.add_argument("--out", required=True, metavar="STORE", help="directory to create (must not exist unless --overwrite)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    out.add_argument("--steps", type=int, metavar="T", help=f"max feature steps per video; longer videos are average-pooled to T (default {DEFAULT_STEPS[dataset]})")
    out.add_argument("--shard-videos", type=int, metavar="N", help=f"videos per Parquet shard (default {DEFAULTS.shard_videos})")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    checks = parser.add_argument_group("validation")
    checks.add_argument("--overshoot", choices=OVERSHOOT_POLICIES, help=f"a label partly past the video's end or before 0: clip it and count it, or reject the sample (default {DEFAULTS.overshoot})")
    checks.add_argument("--overshoot-tolerance", type=float, metavar="SECONDS", help=f"a label starting more than this past the end is 'outside the video' and rejected (default {DEFAULTS.overshoot_tolerance:g})")
    checks.add_argument("--strict", action="store_true", default=None, help="any reject stops the run with a non-zero exit and prints the first reason")
    simulator = parser.add_argument_group("simulated features")
    simulator.add_argument("--dv", type=int, help=f"feature width Dv of simulated features (default {DEFAULTS.feature_dim}, as I3D)")
    simulator.add_argument("--noise", type=float, help=f"simulator noise level (default {SimulatorSettings.noise})")
    simulator.add_argument("--seed", type=int, help=f"simulator seed for per-video draws (default {DEFAULTS.seed})")
    simulator.add_argument("--world-seed", type=int, help=f"simulator seed of the concept vectors and feature map (default {DEFAULTS.world_seed})")


def _add_dataset_arguments(parser: argparse.ArgumentParser, corpus: bool = False):
    if corpus:
        parser.add_argument("--annotations", required=True, metavar="TABLE", help="the annotation table: .jsonl, .csv or .parquet, one row per query (README: Your own corpus)")
        parser.add_argument("--durations", metavar="TABLE", help="a table of video_id, duration (.jsonl, .csv or .parquet) for videos the annotation table gives no duration")
    else:
        parser.add_argument("--annotations", required=True, metavar="DIR", help="directory with the dataset's annotation files")
    labels = parser.add_argument_group("partial labels")
    if corpus:
        labels.add_argument("--partial", choices=METHODS, help="replace the labels of rows with a full moment (gt_start, gt_end) by ones sampled from it: a uniform or Gaussian single frame, or a clip (default: the table's labels as given)")
    else:
        labels.add_argument("--glance", action="store_true", help="use the single-frame labels of the glance files (DIR/glance/)")
        labels.add_argument("--partial", choices=METHODS, help="sample partial labels from ground truth instead: a uniform or Gaussian single frame, or a clip (default: uniform)")
    labels.add_argument("--clip-seconds", type=float, metavar="R", help="clip length r in seconds for --partial clip")
    labels.add_argument("--partial-seed", type=int, help=f"seed of the partial-label sampler and of the mix (default {DEFAULTS.partial_seed})")
    labels.add_argument("--full-fraction", type=float, metavar="F", help="mixed supervision: this fraction of the samples with ground truth train from their full moment (default 0)")
    labels.add_argument("--unlabelled-fraction", type=float, metavar="F", help="mixed supervision: this fraction of the samples with ground truth lose their label (default 0)")
    feats = parser.add_argument_group("features (exactly one)")
    source = feats.add_mutually_exclusive_group(required=True)
    source.add_argument("--simulate", action="store_true", help="render features with the simulator (cu_scale.data.simulator)")
    source.add_argument("--features", metavar="PATH", help="a directory of VIDEO.npy files, one .h5 file keyed by video id, or a .parquet table (video_id, features)")


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


# ----------------------------------------------------------------------------------------------------------
# the pipeline: demo, run, single stages, compare
# ----------------------------------------------------------------------------------------------------------


def parse_overrides(items: list[str]) -> dict:
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"cu-scale: --set expects KEY=VALUE (for example cluster.k=64), got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _load(args):
    from cu_scale.config import load_config

    return load_config(args.config, parse_overrides(args.set))


def print_results(run_dir: str) -> None:
    from cu_scale.console import metrics_table
    from cu_scale.ops.pipeline import METRICS_FILE
    from cu_scale.storage import locate

    run_dir = locate(run_dir)
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    print(f"\ntest split: explicit models (R@1, percent)\n{metrics_table(metrics['explicit'])}")
    if metrics.get("pseudo_labels"):
        print(f"training set: pseudo-labels against ground truth\n{metrics_table(metrics['pseudo_labels'])}")
    print(f"report       {run_dir / 'report.md'} (plots in {run_dir / 'plots'})")


def _run_demo(args) -> int:
    from cu_scale.config import demo_config
    from cu_scale.ops.pipeline import Pipeline

    config = demo_config(args.out, videos=args.videos, seed=args.seed, overrides=parse_overrides(args.set))
    started = time.perf_counter()
    # The demo world is rebuilt every time: results of an earlier demo belong to another corpus.
    Pipeline(config, progress=not args.quiet).run(start_from="prepare")
    print_results(config.run_dir)
    print(f"demo ready in {time.perf_counter() - started:.1f} s under {args.out}")
    return 0


def _run_run(args) -> int:
    from cu_scale.ops.pipeline import Pipeline

    config = _load(args)
    started = time.perf_counter()
    Pipeline(config, progress=not args.quiet).run(start_from=args.start_from)
    print_results(config.run_dir)
    print(f"run finished in {time.perf_counter() - started:.1f} s under {config.run_dir}")
    return 0


def _run_single_stage(args) -> int:
    from cu_scale.ops.pipeline import Pipeline

    Pipeline(_load(args), progress=not args.quiet).run_stage(args.stage)
    return 0


def _run_compare(args) -> int:
    from cu_scale.ops.comparison import comparison_table, run_comparison

    started = time.perf_counter()
    rows = run_comparison(args.configs, parse_overrides(args.set), progress=not args.quiet)
    print(f"\nTable I/IV: explicit models on the test split, by the labels they were trained on ({time.perf_counter() - started:.0f} s)")
    print(comparison_table(rows))
    return 0


def _run_evaluate(args) -> int:
    from cu_scale.console import metrics_table
    from cu_scale.evaluation.predictions import evaluate_predictions, iter_predictions

    metrics = evaluate_predictions(iter_predictions(args.predictions))
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(f"{args.predictions}: {metrics['scored']:,} of {metrics['predictions']:,} predictions have ground truth")
    rows = {"all queries": metrics}
    rows.update({f"  {kind} labels ({m['scored']:,})": m for kind, m in metrics.get("by_label_kind", {}).items()})
    print(metrics_table(rows))
    if "R@5,0.5" not in metrics:
        print("(one span per query: no R@5; a model that ranks several spans, SpanDETR, writes them)")
    return 0


def _run_predict(args) -> int:
    from cu_scale.ops.predict import Grounder, predict_store

    if args.top_k is None:
        args.top_k = 5 if args.store is not None else 1
    if args.top_k < 1:
        raise SystemExit(f"cu-scale predict: --top-k must be ≥ 1, got {args.top_k}")
    if args.store is not None:
        if args.features or args.query:
            raise SystemExit("cu-scale predict: give --store (a whole split) or --features with --query (one query), not both")
        result = predict_store(args.run_dir, args.store, args.split, args.out, args.top_k, args.model and [args.model])
        rate = result["rows"] / max(result["seconds"], 1e-9)
        print(f"predicted    {result['rows']:,} {args.split} queries of {args.store} with {len(result['files'])} model(s) in {result['seconds']:.1f} s ({rate:,.0f} queries/s) → {result['out']}")
        for name, path in result["files"].items():
            print(f"  {name:<28} {path.name.removesuffix('.jsonl')}.parquet, {path.name}   (cu-scale evaluate {path})")
        return 0
    if not args.features or not args.query or args.duration is None:
        raise SystemExit("cu-scale predict: give --features, --query and --duration (one query), or --store (a whole split)")
    grounder = Grounder.from_run(args.run_dir, args.model)
    features = _load_features(args.features)
    for rank, span in enumerate(grounder.predict(features, args.duration, args.query, top_k=args.top_k)[0], start=1):
        print(f"{span.start:.2f} {span.end:.2f}    ({args.query!r}: {span.start:.2f} s to {span.end:.2f} s of {args.duration:g} s"
              + (f", rank {rank}, score {span.score:.3f}" if args.top_k > 1 else "") + ")")
    return 0


def _load_features(path: str):
    import numpy as np

    try:
        return np.load(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable .npy array ({error})") from None


def _run_ablate(args) -> int:
    from cu_scale.ops.ablation import format_table, row_directory, run_ablation
    from cu_scale.ops.pipeline import start_ray

    config = _load(args)
    start_ray()
    started = time.perf_counter()
    rows = args.rows.split(",") if args.rows else None
    results = run_ablation(config, rows, on_row=lambda row, m: print(f"ablation {row}: pseudo-label mIoU {m['mIoU']:.2f} ({row_directory(config, row)})", flush=True), progress=not args.quiet)
    print(f"Table II: pseudo-label quality with subsets of the four contrasts ({time.perf_counter() - started:.0f} s)")
    print(format_table(results))
    return 0


def _run_tune(args) -> int:
    from cu_scale.ops.search import load_search, run_search, trials_table

    config = _load(args)
    settings = load_search(args.space, config)
    out = pathlib.Path(args.out or pathlib.Path(config.run_dir) / "search")
    result = run_search(config, settings, out)
    print(f"\nsearch: {len(result['rows'])} trials in {result['seconds']:.0f} s, objective: pseudo-label mIoU on the validation part of the training set")
    print(trials_table(result["rows"]))
    print(f"best         trial {result['best']['trial']}: {result['best']['best mIoU']:.2f} → {out / 'best.yaml'}")
    print(f"frontier     {out / 'frontier.png'} (clip length against mIoU); all trials in {out / 'trials.csv'}")
    return 0


def _run_submit(args) -> int:
    from cu_scale.ops.submission import client_for, follow, job_entrypoint, prepare_submission, submit

    config, runtime_env = prepare_submission(args.config, parse_overrides(args.set), args.root, args.working_dir)
    entrypoint = job_entrypoint(config, args.set, args.root, stage=args.stage, start_from=args.start_from, quiet=args.quiet)
    client = client_for(args.address)
    job_id = submit(client, entrypoint, runtime_env)
    if args.no_wait:
        print(job_id)
        return 0
    print(f"submitted {job_id} to {args.address}: {entrypoint}", flush=True)
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; {job_id} goes on (ray job stop --address {args.address} {job_id} stops it)", file=sys.stderr)
        return 130
    info = client.get_job_info(job_id)
    print(f"job {job_id} {status}" + (f": {info.message}" if status != "SUCCEEDED" and info.message else ""))
    return 0 if status == "SUCCEEDED" else 1


# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cu-scale",
        description="Train temporal sentence grounding from partial labels with Contrast-Unity, on Ray.",
        epilog="Start with `cu-scale demo`; then `cu-scale prepare --help` for your own data.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="the embedded default: the whole pipeline on the built-in demo corpus (no files needed), on a local Ray")
    demo.add_argument("--out", default=DEMO_DIR, help=f"run directory (default {DEMO_DIR})")
    demo.add_argument("--videos", type=int, help="number of demo videos (default: configs/demo.yaml's prepare.videos)")
    demo.add_argument("--seed", type=int, help="seed of the demo world (default: configs/demo.yaml's prepare.seed)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a demo setting, e.g. --set explicit.epochs=10 (configs/demo.yaml lists them)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_run_demo)

    prepare = commands.add_parser("prepare", help="write a sharded feature store from annotations and features")
    datasets = prepare.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    sta = datasets.add_parser(
        "charades-sta",
        help="Charades-STA (+ Charades v1 CSVs for durations and action intervals)",
        description="Reads DIR/charades_sta_{train,test}.txt (or DIR/glance/... with --glance) and DIR/Charades_v1_{train,test}.csv.",
    )
    _add_dataset_arguments(sta)
    _add_store_arguments(sta, "charades-sta")
    anet = datasets.add_parser(
        "activitynet",
        help="ActivityNet Captions",
        description="Reads DIR/{train,val_1,val_2}.json; with --glance, DIR/glance/SPLIT.json where it exists (other splits get sampled labels).",
    )
    _add_dataset_arguments(anet)
    anet.add_argument("--splits", nargs="+", default=["train", "val_1", "val_2"], help="splits to read (default: train val_1 val_2)")
    _add_store_arguments(anet, "activitynet")
    corpus = datasets.add_parser(
        "corpus",
        help="your own corpus: one annotation table (JSON Lines, CSV or Parquet) and its features",
        description="One row per query: video_id, query, split, optional duration and sample_id, optional partial label "
        "(t, or start and end), optional full moment (gt_start, gt_end). A sample trains from its partial label, else its full moment, else nothing.",
    )
    _add_dataset_arguments(corpus, corpus=True)
    _add_store_arguments(corpus, "corpus")
    demo_store = datasets.add_parser("demo", help="the built-in demo world (no files needed)")
    demo_store.add_argument("--videos", type=int, help=f"number of videos (default {DEFAULTS.videos})")
    demo_store.add_argument("--world", choices=tuple(WORLDS), help="short: 15-45 s videos, moments a quarter of them (default);"
                            " long: 2-7 minute videos, moments of 3-40 s")
    _add_store_arguments(demo_store, "demo")
    prepare.set_defaults(run=_run_prepare)

    store = commands.add_parser("store", help="inspect a feature store")
    store_commands = store.add_subparsers(dest="store_command", required=True, metavar="SUBCOMMAND")
    info = store_commands.add_parser("info", help="counts per split, schema version, Dv, T, bytes, rejects")
    info.add_argument("store", metavar="STORE")
    info.add_argument("--verify", action="store_true", help="recompute every shard's checksum")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.set_defaults(run=_run_store_info)

    def config_arguments(command, what: str = "CONFIG"):
        command.add_argument("config", metavar=what, help="run configuration (YAML; see configs/)")
        command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. --set cluster.k=64")
        command.add_argument("--quiet", action="store_true", help="no progress bars")

    run = commands.add_parser(
        "run",
        help="the whole run: " + " → ".join(STAGE_NAMES) + "; skips finished stages",
        description="Runs every stage into the run directory; a rerun skips the stages that finished with the same settings.",
    )
    config_arguments(run)
    run.add_argument("--from", dest="start_from", choices=STAGE_NAMES, metavar="STAGE", help=f"redo from this stage on ({', '.join(STAGE_NAMES)})")
    run.set_defaults(run=_run_run)

    for name, text in (
        ("encode", "embed every query of the store with the sentence encoder (Ray Data actor pool; resumable)"),
        ("cluster", "faiss k-means of the query embeddings into K clusters, m memberships per sample"),
        ("implicit", "train the implicit stage (Ray Train + DeepSpeed; resumes from the run's latest checkpoint)"),
        ("pseudo-label", "run the trained event detector over the training set (Ray Data batch inference) and score it"),
        ("explicit", "train the explicit models on the configured label sources (Ray Train + DeepSpeed; resumable)"),
    ):
        stage = commands.add_parser(name, help=text, description=text + ". Settings come from the YAML config (see configs/).")
        config_arguments(stage)
        stage.set_defaults(run=_run_single_stage, stage=name)

    compare = commands.add_parser(
        "compare",
        help="paper Tables I/IV: run several configs (full / glance / short clips) and print the explicit models' test metrics side by side",
    )
    compare.add_argument("configs", nargs="+", metavar="CONFIG", help="run configurations, e.g. the glance and short-clip Charades-STA configs")
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a value in every config")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    compare.set_defaults(run=_run_compare)

    ablate = commands.add_parser("ablate", help="paper Table II: train and pseudo-label with subsets of the four contrasts (rows A1-A6) and print the table")
    config_arguments(ablate)
    ablate.add_argument("--rows", help="comma-separated rows to run (default: A1,A2,A3,A4,A5,A6); finished rows are reused")
    ablate.set_defaults(run=_run_ablate)

    search = commands.add_parser(
        "tune",
        help="Ray Tune search (ASHA) over λ, τ, K, the margins, N and the annotation clip length: trial table, best config, frontier plot",
        description="Trials run the implicit stage and are scored by pseudo-label mIoU on a validation part of the training set. "
        "Rerunning with the same --out resumes an interrupted search.",
    )
    config_arguments(search)
    search.add_argument("--space", default=str(DEFAULT_SEARCH), metavar="FILE", help=f"the search (default {DEFAULT_SEARCH.relative_to(DEFAULT_SEARCH.parents[1])})")
    search.add_argument("--out", metavar="DIR", help="search directory (default RUN_DIR/search)")
    search.set_defaults(run=_run_tune)

    submit = commands.add_parser(
        "submit",
        help="run CONFIG (or one --stage) as a Ray job on a cluster, stream its log and exit with its outcome",
        description="Submits `python -m jobs.run` through Ray's JobSubmissionClient with the working directory as the job's runtime env. "
        "Clusters with token authentication (Ray's default): set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN).",
    )
    config_arguments(submit)
    submit.add_argument("--address", required=True, metavar="URL", help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
    submit.add_argument("--root", metavar="DIR", help="resolve the config's relative paths under DIR, a directory every node of the cluster sees")
    submit.add_argument("--working-dir", default=".", metavar="DIR", help="the cu-scale checkout to upload (default: .)")
    which = submit.add_mutually_exclusive_group()
    which.add_argument("--stage", choices=STAGE_NAMES, help="run this stage alone (its inputs must exist)")
    which.add_argument("--from", dest="start_from", choices=STAGE_NAMES, metavar="STAGE", help="redo the run from this stage")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    submit.set_defaults(run=_run_submit)

    evaluate = commands.add_parser("evaluate", help="recompute R@0.3/0.5/0.7 and mIoU (and R@5 for ranked spans) from a predictions file")
    evaluate.add_argument("predictions", metavar="PREDICTIONS", help="a .jsonl file (sample_id, pred [s, e], gt [s, e], optional duration, spans, label_kind per line) or the .parquet cu-scale predict writes")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(run=_run_evaluate)

    predict = commands.add_parser(
        "predict",
        help="ground queries with a trained run's explicit models: one query on one video's features, or a whole store split (Ray Data)",
        description="One query: --features FILE.npy --duration S --query TEXT. A whole split: --store STORE [--split S]: every trained "
        "model (or --model) over every query, written as Parquet and JSON Lines with the top-k spans of each.",
    )
    predict.add_argument("--run", dest="run_dir", required=True, metavar="RUN_DIR", help="a run directory whose explicit stage has finished")
    predict.add_argument("--features", metavar="FILE.npy", help="one query: the video's features, (steps, Dv), as the store's")
    predict.add_argument("--query", help="one query: the sentence to ground")
    predict.add_argument("--duration", type=float, metavar="SECONDS", help="one query: the video's duration (features carry no time)")
    predict.add_argument("--store", metavar="STORE", help="a whole split: a feature store (its queries are encoded with the run's encoder first if they are not)")
    predict.add_argument("--split", default="test", help="a whole split: which (default test)")
    predict.add_argument("--out", metavar="DIR", help="a whole split: where to write (default RUN_DIR/store_predictions/STORE-SPLIT)")
    predict.add_argument("--top-k", type=int, default=None, metavar="K", help="spans per query, best first (default: 1 for one query, 5 for a store)")
    predict.add_argument("--model", metavar="NAME", help="which explicit model, e.g. SpanDETR-pseudo (default: one query, the first trained on pseudo-labels; a store, all)")
    predict.set_defaults(run=_run_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except StoreRejectError as error:
        print(f"cu-scale: --strict: {error}", file=sys.stderr)
        return 1
    except (AnnotationError, StoreError, RuntimeError, ConfigError, ClusteringError, BatchingError, PredictionsError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"cu-scale: {error_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
