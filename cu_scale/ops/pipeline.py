"""The whole run, stage by stage: `cu-scale run CONFIG` and every single-stage command.

    prepare → encode → cluster → implicit → pseudo-label → explicit → evaluate → report

Each stage is one entry of `STAGES`: how it runs, the settings its results depend on, and the artifacts it
writes into the store or the run directory. After it runs, it writes a marker, RUN_DIR/stages/<stage>.json,
with those settings, its wall time and its summary:

    store                   the feature store (config `store`), with embeddings/ and clusters/ inside
    RUN_DIR/implicit/       Ray Train checkpoints of the implicit stage
    RUN_DIR/pseudo_labels/  one Parquet file per store shard
    RUN_DIR/explicit/<Model>-<source>/   Ray Train checkpoints, one per model and label source
    RUN_DIR/predictions/<Model>-<source>.jsonl   on the test split (`cu_scale.evaluation.predictions`)
    RUN_DIR/metrics.json    pseudo-label quality and test metrics per model and label source
    RUN_DIR/report.md, RUN_DIR/plots/*.png

A rerun skips every stage whose marker holds the same settings. A stage without a marker runs; a
training stage that was interrupted resumes from its latest checkpoint. Once a stage runs, every later
stage is redone from scratch (its artifacts are removed first), and ``--from STAGE`` redoes from that
stage. A marker whose settings differ from the config stops the run with the fields that changed, so a
result never silently mixes two configurations.

The implicit and pseudo-label stages only run when some label source needs the pseudo-labels.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import time
from typing import Callable

from cu_scale.config import ConfigError, PrepareConfig, RunConfig
from cu_scale.console import describe_clusters, describe_store, error_line, metrics_table
from cu_scale.storage import Location, locate, on_filesystem

METRICS_FILE = "metrics.json"
PREDICTIONS_DIR = "predictions"
MARKERS_DIR = "stages"
# What to change when a stage's watchdog finds it waiting (cu_scale.stages.resources says how stages are sized).
TRAINING_HINT = (
    "{section}.workers sets the Ray Train workers (a CPU or a GPU each, beside the stream's 0.5-CPU read tasks);"
    " batches.window_shards sets how much memory each read task asks for."
)
INFERENCE_HINT = "encode.actors sets the inference actors; they are sized to leave the store's 0.5-CPU read tasks room."


def start_ray(**init_options):
    """The embedded default: a local Ray in this process, or the cluster named by RAY_ADDRESS (a Ray job).

    A local Ray gets a GCS port of its own choosing, and its workers are told that address (RAY_ADDRESS
    in the job's runtime env). Without it, Ray's state API, which a worker uses to look up actors, finds
    every Ray on the machine and refuses to choose ("Found multiple active Ray instances"); Ray Train
    then never frees the workers of a trial that Tune stopped, and while another run or a test's Ray is
    up, a search's next trial waits for their CPUs forever. `init_options` go to `ray.init`.
    """
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False, logging_level=logging.WARNING, **init_options)
        else:
            port = free_port()
            os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by the head Ray starts here
            try:
                ray.init(log_to_driver=False, logging_level=logging.WARNING, runtime_env={"env_vars": {"RAY_ADDRESS": f"127.0.0.1:{port}"}}, **init_options)
            finally:
                del os.environ["RAY_GCS_SERVER_PORT"]
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False  # our own bars count queries and shards
    return ray


def free_port() -> int:
    """A port nobody holds now, for a local Ray's GCS or dashboard (another Ray on the machine may hold the defaults)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def marker_path(run_dir: "str | os.PathLike | Location", stage: str) -> Location:
    return locate(run_dir) / MARKERS_DIR / f"{stage}.json"


def finished_marker(run_dir: str | os.PathLike, stage: str) -> dict:
    """The marker of a stage that finished in `run_dir`, or an error that says to run it."""
    path = marker_path(run_dir, stage)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} has not finished its {stage} stage (`cu-scale run CONFIG`)")
    return json.loads(path.read_text())


def stage_seconds(run_dir: str | os.PathLike) -> float:
    """The wall time the run's stages took when they ran, from their markers (a rerun skips them)."""
    return sum(json.loads(p.read_text())["seconds"] for p in (locate(run_dir) / MARKERS_DIR).glob("*.json"))


def needs_pseudo_labels(config: RunConfig) -> bool:
    """The implicit and pseudo-label stages run only when some explicit label source reads pseudo-labels."""
    return bool({"pseudo", "mixed"} & set(config.explicit.label_sources))


# -- the stages --------------------------------------------------------------------------------------


def _prepare(p: Pipeline) -> dict:
    from cu_scale.data.store import FeatureStore

    prepare = p.config.prepare
    if prepare is None:
        store = FeatureStore(p.config.store)  # no prepare section: the store must exist already
        p.say(f"prepare      using the existing store {store.path} (the config has no prepare section)")
        return {"store": str(store.path), "created": store.manifest["created"]}
    manifest = build_store(prepare, p.config.store, overwrite=True, progress=p.progress)
    p.say(describe_store(FeatureStore(p.config.store)))
    return {"store": p.config.store, "created": manifest["created"], "counts": manifest["counts"]}


def _encode(p: Pipeline) -> dict:
    from cu_scale.stages.encode import encode_store

    start_ray()
    started = time.perf_counter()
    summary = p.watched("encode", lambda beat: encode_store(p.config.store, p.config.encode, progress=p.progress, heartbeat=beat))
    seconds = time.perf_counter() - started
    rate = f", {summary['encoded_samples'] / seconds:,.0f} queries/s" if summary["encoded_samples"] else ""
    p.say(
        f"encode       {summary['encoded_samples']:,} queries in {seconds:.1f} s{rate} ({summary['skipped']} of {summary['shards']} shards"
        f" were done already); model {summary['model']}, dim {summary['dim']}"
    )
    return summary


def _cluster(p: Pipeline) -> dict:
    from cu_scale.data.store import FeatureStore
    from cu_scale.stages.clustering import cluster_store, clusters_dir

    start_ray()  # only for the progress metric: faiss runs here, in the driver
    summary = cluster_store(p.config.store, p.config.cluster)
    p.say(describe_clusters(summary, clusters_dir(FeatureStore(p.config.store), p.config.cluster)))
    return summary


def _implicit(p: Pipeline) -> dict:
    from cu_scale.stages.implicit import train_implicit
    from cu_scale.stages.training import checkpoint_meta

    c = p.config
    if not needs_pseudo_labels(c):
        p.say("implicit     skipped: no explicit label source needs pseudo-labels")
        return {"skipped": True}
    start_ray()
    started = time.perf_counter()
    result = p.watched("implicit", lambda beat: train_implicit(c.store, c.implicit, c.batches, c.cluster, c.encode, c.run_dir, progress=p.progress, heartbeat=beat))
    if result.error:
        raise RuntimeError(f"implicit training failed: {error_line(result.error)}")
    metrics = result.metrics
    terms = "  ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss_"))
    p.say(f"implicit     {metrics['epoch'] + 1} epoch(s) on {c.implicit.workers} worker(s) in {time.perf_counter() - started:.1f} s; last epoch: {terms}")
    checkpoint = on_filesystem(result.checkpoint.filesystem, result.checkpoint.path)
    widths = [m["event_width"] for m in checkpoint_meta(checkpoint)["history"] if "event_width" in m]
    p.say(f"  mean event length by epoch, a fraction of the video: {'  '.join(f'{w:.3f}' for w in widths)}")
    p.say(f"  checkpoint → {checkpoint}")
    return {"metrics": metrics, "checkpoint": str(checkpoint)}


def _pseudo_label(p: Pipeline) -> dict:
    from cu_scale.stages.pseudo_labels import PSEUDO_LABELS_DIR, describe_shape, pseudo_label, pseudo_label_warning
    from cu_scale.stages.training import latest_checkpoint

    c = p.config
    if not needs_pseudo_labels(c):
        p.say("pseudo-label skipped: no explicit label source needs pseudo-labels")
        return {"skipped": True}
    checkpoint = latest_checkpoint(p.run_dir / IMPLICIT_DIR)
    start_ray()
    started = time.perf_counter()
    result = p.watched("pseudo-label", lambda beat: pseudo_label(c.store, str(checkpoint), c.run_dir, c.encode, heartbeat=beat))
    p.say(f"pseudo-label {result['rows']:,} training samples from {checkpoint.name} in {time.perf_counter() - started:.1f} s → {p.run_dir / PSEUDO_LABELS_DIR}")
    if result["metrics"]:
        p.say(metrics_table(result["metrics"]))
        p.say(describe_shape(result["shape"]))
        warning = pseudo_label_warning(result["metrics"])
        if warning:
            p.say(warning)
    return result


def _explicit(p: Pipeline) -> dict:
    from cu_scale.stages.explicit import stage_name, train_explicit
    from cu_scale.stages.training import checkpoint_meta, checkpoints

    c = p.config
    start_ray()
    summary = {}
    for model in c.explicit.models:
        for source in c.explicit.label_sources:
            name = stage_name(model, source)
            stage_dir = p.run_dir / EXPLICIT_DIR / name
            if checkpoints(stage_dir):
                meta = checkpoint_meta(checkpoints(stage_dir)[-1])
                if meta["epoch"] + 1 >= c.explicit.epochs:
                    p.say(f"explicit     {name}: trained already ({meta['epoch'] + 1} epochs)")
                    summary[name] = meta["metrics"]
                    continue
            started = time.perf_counter()
            result = p.watched(
                "explicit",
                lambda beat: train_explicit(c.store, c.explicit, model, source, c.run_dir, c.encode, c.batches, c.cluster.k, progress=p.progress, heartbeat=beat),
            )
            if result.error:
                raise RuntimeError(f"explicit training of {name} failed: {error_line(result.error)}")
            m = result.metrics
            p.say(
                f"explicit     {name}: {m['epoch'] + 1} epoch(s) on {m['samples']:,} samples ({m['unlabelled']:,} without a {source} label)"
                f" in {time.perf_counter() - started:.1f} s; last loss {m['loss_total']:.4f}"
            )
            summary[name] = m
    return summary


def _evaluate(p: Pipeline) -> dict:
    from cu_scale.evaluation.predictions import evaluate_predictions, iter_predictions
    from cu_scale.stages.explicit import predict_split, stage_name
    from cu_scale.stages.pseudo_labels import PSEUDO_LABELS_DIR, pseudo_label_shape, score_pseudo_labels
    from cu_scale.stages.training import latest_checkpoint

    c = p.config
    start_ray()
    trained = {
        stage_name(model, source): (model, source, latest_checkpoint(p.run_dir / EXPLICIT_DIR / stage_name(model, source)))
        for model in c.explicit.models
        for source in c.explicit.label_sources
    }
    checkpoints = {name: t[2] for name, t in trained.items()}
    files = p.watched("evaluate", lambda beat: predict_split(c.store, checkpoints, c.explicit.test_split, c.encode, p.run_dir / PREDICTIONS_DIR, heartbeat=beat, top_k=c.explicit.top_k))
    results = {}
    for name, (model, source, _) in trained.items():
        path = files[name]
        results[name] = {"model": model, "label_source": source, "split": c.explicit.test_split, "predictions_file": str(path), **evaluate_predictions(iter_predictions(path))}
    pseudo = shape = None
    if (p.run_dir / PSEUDO_LABELS_DIR).is_dir() and needs_pseudo_labels(c):
        pseudo, shape = score_pseudo_labels(p.run_dir / PSEUDO_LABELS_DIR), pseudo_label_shape(p.run_dir / PSEUDO_LABELS_DIR)
    metrics = {"config": c.source, "run_dir": str(p.run_dir), "pseudo_labels": pseudo, "pseudo_label_shape": shape, "explicit": results}
    (p.run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    p.say(f"evaluate     {c.explicit.test_split} split, R@1 in percent → {p.run_dir / METRICS_FILE}")
    p.say(metrics_table({name: r for name, r in results.items()}))
    return {name: {k: r[k] for k in ("R@0.3", "R@0.5", "R@0.7", "mIoU")} for name, r in results.items()}


def _report(p: Pipeline) -> dict:
    from cu_scale.stages.report import write_report

    path = write_report(p.config)
    p.say(f"report       {path}")
    return {"report": str(path)}


def _store_outputs(config: RunConfig, *names: str) -> list[Location]:
    """What a stage wrote into the store, when this run built the store: a store the config only names
    may be shared by other runs, and keeps its embeddings and clusters."""
    if config.prepare is None:
        return []
    return [locate(config.store) / name for name in names]


def _clusters_of(config: RunConfig) -> list[Location]:
    from cu_scale.data.store import MANIFEST_FILE, FeatureStore
    from cu_scale.stages.clustering import clusters_dir

    if config.prepare is None or not (locate(config.store) / MANIFEST_FILE).is_file():
        return []
    return [clusters_dir(FeatureStore(config.store), config.cluster)]


def _encode_outputs(config: RunConfig) -> list[Location]:
    from cu_scale.stages.encode import EMBEDDINGS_DIR, WORDS_DIR

    return _store_outputs(config, EMBEDDINGS_DIR, WORDS_DIR)


def _pseudo_labels_dir(config: RunConfig) -> list[Location]:
    from cu_scale.stages.pseudo_labels import PSEUDO_LABELS_DIR

    return [locate(config.run_dir) / PSEUDO_LABELS_DIR]


def _without(section, *names: str) -> dict:
    return {k: v for k, v in dataclasses.asdict(section).items() if k not in names}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a run."""

    name: str
    run: Callable[[Pipeline], dict]  # does the work (its inputs exist) and returns the marker's summary
    settings: Callable[[RunConfig], dict]  # what its results depend on: a change means it must run again
    artifacts: Callable[[RunConfig], list[Location]]  # what it writes, removed before it runs again
    hint: str = ""  # what to change when its watchdog finds it waiting for the cluster


IMPLICIT_DIR = "implicit"  # RUN_DIR/implicit: Ray Train's checkpoints of the implicit stage
EXPLICIT_DIR = "explicit"  # RUN_DIR/explicit/<Model>-<source>: those of each explicit model

STAGES = (
    Stage(
        "prepare", _prepare,
        settings=lambda c: {"store": c.store, "prepare": dataclasses.asdict(c.prepare) if c.prepare else None},
        artifacts=lambda c: [],  # build_store overwrites the store it builds
    ),
    Stage(
        "encode", _encode,
        settings=lambda c: {"encode": _without(c.encode, "actors")},  # how many actors encode does not change what is encoded
        artifacts=_encode_outputs,
        hint="encode.actors sets how many encoder actors hold a CPU (or a GPU) each; fewer fit a smaller cluster.",
    ),
    Stage("cluster", _cluster, settings=lambda c: {"cluster": dataclasses.asdict(c.cluster)}, artifacts=_clusters_of),
    Stage(
        "implicit", _implicit,
        settings=lambda c: {"needed": needs_pseudo_labels(c), "batches": dataclasses.asdict(c.batches), "implicit": _without(c.implicit, "placement")},
        artifacts=lambda c: [locate(c.run_dir) / IMPLICIT_DIR],
        hint=TRAINING_HINT.format(section="implicit"),
    ),
    Stage("pseudo-label", _pseudo_label, settings=lambda c: {"needed": needs_pseudo_labels(c)}, artifacts=_pseudo_labels_dir, hint=INFERENCE_HINT),
    Stage(
        "explicit", _explicit,
        # how often checkpoints are written, and how many spans the evaluation keeps, do not change what is trained
        settings=lambda c: {"explicit": _without(c.explicit, "checkpoint_every", "top_k", "placement")},
        artifacts=lambda c: [locate(c.run_dir) / EXPLICIT_DIR],
        hint=TRAINING_HINT.format(section="explicit"),
    ),
    Stage(
        "evaluate", _evaluate,
        settings=lambda c: {"test_split": c.explicit.test_split, "top_k": c.explicit.top_k},
        artifacts=lambda c: [locate(c.run_dir) / PREDICTIONS_DIR, locate(c.run_dir) / METRICS_FILE],
        hint=INFERENCE_HINT,
    ),
    Stage("report", _report, settings=lambda c: {}, artifacts=lambda c: [locate(c.run_dir) / "report.md", locate(c.run_dir) / "plots"]),
)
STAGE = {stage.name: stage for stage in STAGES}
STAGE_NAMES = tuple(STAGE)


class Pipeline:
    def __init__(self, config: RunConfig, progress: bool = True, say=print):
        self.config = config
        self.progress = progress
        self.say = say
        self.run_dir = locate(config.run_dir)

    # -- bookkeeping ---------------------------------------------------------------------------------

    def marker(self, stage: str) -> Location:
        return marker_path(self.run_dir, stage)

    def finished(self, stage: str) -> dict | None:
        """The marker of a finished stage, or None; raises when it ran with other settings."""
        path = self.marker(stage)
        if not path.is_file():
            return None
        done = json.loads(path.read_text())
        plain = lambda config: json.loads(json.dumps(STAGE[stage].settings(config)))  # noqa: E731 (tuples as lists, as the marker has them)
        defaults = RunConfig(store=self.config.store, run_dir=self.config.run_dir, prepare=PrepareConfig() if self.config.prepare else None)
        changed = _differences(done["settings"], plain(self.config), plain(defaults))
        if changed:
            raise ConfigError(
                f"{self.config.source}: stage {stage} of {self.run_dir} ran with other settings ({'; '.join(changed[:3])});"
                f" rerun with --from {stage} to redo it and the stages after it, or choose another run_dir"
            )
        return done

    def clear(self, stage: str) -> None:
        """Remove a stage's marker and artifacts, so that it runs from scratch."""
        self.marker(stage).unlink(missing_ok=True)
        for path in STAGE[stage].artifacts(self.config):
            path.remove_tree()

    def _record(self, stage: str, seconds: float, summary: dict) -> None:
        path = self.marker(stage)
        record = {
            "stage": stage,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "settings": STAGE[stage].settings(self.config),
            "summary": summary,
        }
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")

    # -- running -------------------------------------------------------------------------------------

    def run(self, start_from: str | None = None, stages: tuple[str, ...] = STAGE_NAMES, redo_changed: bool = False) -> dict:
        """`stages` in order (all of them by default), skipping finished ones; returns {stage: "ran" | "skipped"}.

        Once a stage runs, every later one is redone from scratch; `start_from` redoes from that stage. A
        stage that finished with other settings stops the run, or with `redo_changed` is redone."""
        for name in (start_from, *stages):
            if name is not None and name not in STAGE:
                raise ConfigError(f"--from {name}: not a stage; stages are {', '.join(STAGE_NAMES)}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        redo = False
        outcome = {}
        for stage in (name for name in STAGE_NAMES if name in stages):
            if stage == start_from:
                redo = True
            try:
                done = None if redo else self.finished(stage)
            except ConfigError:
                if not redo_changed:
                    raise
                done, redo = None, True
            if done is not None:
                self.say(f"✓ {stage:<13} finished {done['finished']} in {done['seconds']:.0f} s (skipped; --from {stage} redoes it)")
                outcome[stage] = "skipped"
                continue
            if redo:
                self.clear(stage)
            self.run_stage(stage)
            outcome[stage] = "ran"
            redo = True  # everything after a stage that ran depends on its new output
        return outcome

    def run_stage(self, stage: str) -> dict:
        """One stage alone (its inputs must exist); records its marker and returns its summary."""
        if stage != "prepare":
            from cu_scale.data.store import FeatureStore

            FeatureStore(self.config.store).require_intact()  # a truncated shard stops the stage now, by name
        started = time.perf_counter()
        summary = STAGE[stage].run(self)
        self._record(stage, time.perf_counter() - started, summary)
        return summary

    def watched(self, stage: str, work):
        """`work(heartbeat)` under the stage's progress watchdog (`cu_scale.stages.watchdog`)."""
        from cu_scale.stages.watchdog import run_watched

        return run_watched(work, stage=stage, seconds=self.config.watchdog_seconds, hint=STAGE[stage].hint)


def _differences(old, new, default, prefix: str = "") -> list[str]:
    """The settings that differ between a marker (`old`) and the config (`new`), as "field: old → new".

    A setting the marker lacks was added to cu-scale after the stage ran, which then ran as its default
    does: it differs only where the config sets it to something else."""
    if isinstance(old, dict) and isinstance(new, dict):
        default = default if isinstance(default, dict) else {}
        out = []
        for key in sorted(set(old) | set(new)):
            if key not in old and key in default and new.get(key) == default[key]:
                continue
            out += _differences(old.get(key), new.get(key), default.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [f"{prefix}: {old!r} → {new!r}"]


def build_store(p: PrepareConfig, out: str, overwrite: bool = False, progress: bool = True) -> dict:
    """A feature store at `out`, as `p` says: the prepare stage of a run, and `cu-scale prepare`."""
    from cu_scale.data import prepare
    from cu_scale.data.partial_labels import LabelMix, PartialLabelSpec
    from cu_scale.data.simulator import SimulatorSettings
    from cu_scale.data.store import LabelPolicy

    options = prepare.StoreOptions(
        out=out, max_steps=p.max_steps, shard_videos=p.shard_videos, policy=LabelPolicy(p.overshoot, p.overshoot_tolerance),
        strict=p.strict, overwrite=overwrite, progress=progress,
    )
    noise = {} if p.noise is None else {"noise": p.noise}
    mix = LabelMix(full=p.full_fraction, unlabelled=p.unlabelled_fraction, seed=p.partial_seed)
    if p.dataset == "demo":
        simulator = SimulatorSettings(feature_dim=p.feature_dim, max_steps=p.max_steps, steps_per_second=1.0, seed=p.seed, world_seed=p.world_seed, **noise)
        return prepare.prepare_demo(options, num_videos=p.videos, seed=p.seed, simulator=simulator, world=p.world, mix=mix)
    spec = PartialLabelSpec(p.partial, seed=p.partial_seed, clip_seconds=p.clip_seconds)
    simulator = None if p.features else SimulatorSettings(feature_dim=p.feature_dim, max_steps=p.max_steps, seed=p.seed, world_seed=p.world_seed, **noise)
    if p.dataset == "charades-sta":
        return prepare.prepare_charades_sta(options, p.annotations, p.glance, spec, mix, simulator, p.features)
    if p.dataset == "corpus":
        return prepare.prepare_corpus(options, p.annotations, p.durations, spec if p.sample_labels else None, mix, simulator, p.features)
    return prepare.prepare_activitynet(options, p.annotations, p.glance, spec, mix, simulator, p.features, tuple(p.splits))
