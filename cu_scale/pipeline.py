"""The whole run, stage by stage: `cu-scale run CONFIG` and every single-stage command.

    prepare → encode → cluster → implicit → pseudo-label → explicit → evaluate → report

Each stage writes named artifacts into the store or the run directory, then a marker,
RUN_DIR/stages/<stage>.json, with the settings it ran with, its wall time and its summary:

    store                   the feature store (config `store`), with embeddings/ and clusters/ inside
    RUN_DIR/implicit/       Ray Train checkpoints of the implicit stage
    RUN_DIR/pseudo_labels/  one Parquet file per store shard
    RUN_DIR/explicit/<Model>-<source>/   Ray Train checkpoints, one per model and label source
    RUN_DIR/predictions/<Model>-<source>.jsonl   on the test split (`cu_scale.evaluation`)
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
import pathlib
import shutil
import time

from cu_scale.config import ConfigError, RunConfig
from cu_scale.console import describe_clusters, describe_store, metrics_table

STAGES = ("prepare", "encode", "cluster", "implicit", "pseudo-label", "explicit", "evaluate", "report")
# What to change when a stage's watchdog finds it waiting (cu_scale.resources says how stages are sized).
HINTS = {
    "encode": "encode.actors sets how many encoder actors hold a CPU (or a GPU) each; fewer fit a smaller cluster.",
    "implicit": "implicit.workers sets the Ray Train workers (a CPU or a GPU each, beside the stream's 0.5-CPU read tasks);"
    " batches.window_shards sets how much memory each read task asks for.",
    "explicit": "explicit.workers sets the Ray Train workers (a CPU or a GPU each, beside the stream's 0.5-CPU read tasks);"
    " batches.window_shards sets how much memory each read task asks for.",
    "inference": "encode.actors sets the inference actors; they are sized to leave the store's 0.5-CPU read tasks room.",
}
METRICS_FILE = "metrics.json"
PREDICTIONS_DIR = "predictions"


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


class Pipeline:
    def __init__(self, config: RunConfig, progress: bool = True, say=print):
        self.config = config
        self.progress = progress
        self.say = say
        self.run_dir = pathlib.Path(config.run_dir)

    # -- bookkeeping ---------------------------------------------------------------------------------

    @property
    def needs_pseudo_labels(self) -> bool:
        return "pseudo" in self.config.explicit.label_sources

    def settings_of(self, stage: str) -> dict:
        c = self.config
        asdict = dataclasses.asdict
        return {
            "prepare": {"store": c.store, "prepare": asdict(c.prepare) if c.prepare else None},
            # how many actors encode does not change what is encoded (cu_scale.resources)
            "encode": {"encode": {k: v for k, v in asdict(c.encode).items() if k != "actors"}},
            "cluster": {"cluster": asdict(c.cluster)},
            "implicit": {"needed": self.needs_pseudo_labels, "batches": asdict(c.batches), "implicit": asdict(c.implicit)},
            "pseudo-label": {"needed": self.needs_pseudo_labels},
            # how often checkpoints are written does not change what is trained
            "explicit": {"explicit": {k: v for k, v in asdict(c.explicit).items() if k != "checkpoint_every"}},
            "evaluate": {"test_split": c.explicit.test_split},
            "report": {},
        }[stage]

    def marker(self, stage: str) -> pathlib.Path:
        return self.run_dir / "stages" / f"{stage}.json"

    def finished(self, stage: str) -> dict | None:
        """The marker of a finished stage, or None; raises when it ran with other settings."""
        path = self.marker(stage)
        if not path.is_file():
            return None
        done = json.loads(path.read_text())
        changed = _differences(done["settings"], json.loads(json.dumps(self.settings_of(stage))))
        if changed:
            raise ConfigError(
                f"{self.config.source}: stage {stage} of {self.run_dir} ran with other settings ({'; '.join(changed[:3])});"
                f" rerun with --from {stage} to redo it and the stages after it, or choose another run_dir"
            )
        return done

    def clear(self, stage: str) -> None:
        """Remove a stage's marker and artifacts, so that it runs from scratch."""
        from cu_scale.clustering import clusters_dir
        from cu_scale.encode import EMBEDDINGS_DIR, WORDS_DIR
        from cu_scale.pseudo_labels import PSEUDO_LABELS_DIR
        from cu_scale.store import FeatureStore

        self.marker(stage).unlink(missing_ok=True)
        store_exists = (pathlib.Path(self.config.store) / "manifest.json").is_file()
        if stage == "encode" and store_exists and self.config.prepare is not None:
            for directory in (EMBEDDINGS_DIR, WORDS_DIR):
                shutil.rmtree(pathlib.Path(self.config.store) / directory, ignore_errors=True)
        elif stage == "cluster" and store_exists and self.config.prepare is not None:
            shutil.rmtree(clusters_dir(FeatureStore(self.config.store), self.config.cluster), ignore_errors=True)
        elif stage == "implicit":
            shutil.rmtree(self.run_dir / "implicit", ignore_errors=True)
        elif stage == "pseudo-label":
            shutil.rmtree(self.run_dir / PSEUDO_LABELS_DIR, ignore_errors=True)
        elif stage == "explicit":
            shutil.rmtree(self.run_dir / "explicit", ignore_errors=True)
        elif stage == "evaluate":
            shutil.rmtree(self.run_dir / PREDICTIONS_DIR, ignore_errors=True)
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)

    def _record(self, stage: str, seconds: float, summary: dict) -> None:
        path = self.marker(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "stage": stage,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "settings": self.settings_of(stage),
            "summary": summary,
        }
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")

    # -- running -------------------------------------------------------------------------------------

    def run(self, start_from: str | None = None) -> dict:
        """Every stage in order, skipping finished ones; returns {stage: "ran" | "skipped"}."""
        if start_from is not None and start_from not in STAGES:
            raise ConfigError(f"--from {start_from}: not a stage; stages are {', '.join(STAGES)}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        redo = False
        outcome = {}
        for stage in STAGES:
            if stage == start_from:
                redo = True
            done = None if redo else self.finished(stage)
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
        started = time.perf_counter()
        summary = getattr(self, "_" + stage.replace("-", "_"))()
        self._record(stage, time.perf_counter() - started, summary)
        return summary

    def _watched(self, stage: str, work, hint: str):
        """`work(heartbeat)` under the stage's progress watchdog (`cu_scale.watchdog`)."""
        from cu_scale.watchdog import run_watched

        return run_watched(work, stage=stage, seconds=self.config.watchdog_seconds, hint=hint)

    # -- the stages ----------------------------------------------------------------------------------

    def _prepare(self) -> dict:
        from cu_scale.store import FeatureStore

        prepare = self.config.prepare
        if prepare is None:
            store = FeatureStore(self.config.store)  # no prepare section: the store must exist already
            self.say(f"prepare      using the existing store {store.path} (the config has no prepare section)")
            return {"store": str(store.path), "created": store.manifest["created"]}
        manifest = build_store(self.config, progress=self.progress)
        self.say(describe_store(FeatureStore(self.config.store)))
        return {"store": self.config.store, "created": manifest["created"], "counts": manifest["counts"]}

    def _encode(self) -> dict:
        from cu_scale.encode import encode_store

        start_ray()
        started = time.perf_counter()
        summary = self._watched("encode", lambda beat: encode_store(self.config.store, self.config.encode, progress=self.progress, heartbeat=beat), HINTS["encode"])
        seconds = time.perf_counter() - started
        rate = f", {summary['encoded_samples'] / seconds:,.0f} queries/s" if summary["encoded_samples"] else ""
        self.say(
            f"encode       {summary['encoded_samples']:,} queries in {seconds:.1f} s{rate} ({summary['skipped']} of {summary['shards']} shards"
            f" were done already); model {summary['model']}, dim {summary['dim']}"
        )
        return summary

    def _cluster(self) -> dict:
        from cu_scale.clustering import cluster_store, clusters_dir
        from cu_scale.store import FeatureStore

        start_ray()  # only for the progress metric: faiss runs here, in the driver
        summary = cluster_store(self.config.store, self.config.cluster)
        self.say(describe_clusters(summary, clusters_dir(FeatureStore(self.config.store), self.config.cluster)))
        return summary

    def _implicit(self) -> dict:
        from cu_scale.implicit import train_implicit
        from cu_scale.training import checkpoint_meta

        c = self.config
        if not self.needs_pseudo_labels:
            self.say("implicit     skipped: no explicit label source needs pseudo-labels")
            return {"skipped": True}
        start_ray()
        started = time.perf_counter()
        result = self._watched(
            "implicit", lambda beat: train_implicit(c.store, c.implicit, c.batches, c.cluster, c.encode, c.run_dir, progress=self.progress, heartbeat=beat), HINTS["implicit"]
        )
        if result.error:
            raise RuntimeError(f"implicit training failed: {result.error}")
        metrics = result.metrics
        terms = "  ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss_"))
        self.say(f"implicit     {metrics['epoch'] + 1} epoch(s) on {c.implicit.workers} worker(s) in {time.perf_counter() - started:.1f} s; last epoch: {terms}")
        widths = [m["event_width"] for m in checkpoint_meta(result.checkpoint.path)["history"] if "event_width" in m]
        self.say(f"  mean event length by epoch, a fraction of the video: {'  '.join(f'{w:.3f}' for w in widths)}")
        self.say(f"  checkpoint → {result.checkpoint.path}")
        return {"metrics": metrics, "checkpoint": result.checkpoint.path}

    def _pseudo_label(self) -> dict:
        from cu_scale.pseudo_labels import PSEUDO_LABELS_DIR, describe_shape, pseudo_label, pseudo_label_warning
        from cu_scale.training import latest_checkpoint

        c = self.config
        if not self.needs_pseudo_labels:
            self.say("pseudo-label skipped: no explicit label source needs pseudo-labels")
            return {"skipped": True}
        checkpoint = latest_checkpoint(self.run_dir / "implicit")
        start_ray()
        started = time.perf_counter()
        result = self._watched("pseudo-label", lambda beat: pseudo_label(c.store, str(checkpoint), c.run_dir, c.encode, heartbeat=beat), HINTS["inference"])
        self.say(f"pseudo-label {result['rows']:,} training samples from {checkpoint.name} in {time.perf_counter() - started:.1f} s → {self.run_dir / PSEUDO_LABELS_DIR}")
        if result["metrics"]:
            self.say(metrics_table(result["metrics"]))
            self.say(describe_shape(result["shape"]))
            warning = pseudo_label_warning(result["metrics"])
            if warning:
                self.say(warning)
        return result

    def _explicit(self) -> dict:
        from cu_scale.explicit import stage_name, train_explicit
        from cu_scale.training import checkpoint_meta, latest_checkpoint

        c = self.config
        start_ray()
        summary = {}
        for model in c.explicit.models:
            for source in c.explicit.label_sources:
                name = stage_name(model, source)
                stage_dir = self.run_dir / "explicit" / name
                if list(stage_dir.glob("checkpoint_2*")):
                    meta = checkpoint_meta(latest_checkpoint(stage_dir))
                    if meta["epoch"] + 1 >= c.explicit.epochs:
                        self.say(f"explicit     {name}: trained already ({meta['epoch'] + 1} epochs)")
                        summary[name] = meta["metrics"]
                        continue
                started = time.perf_counter()
                result = self._watched(
                    "explicit",
                    lambda beat: train_explicit(c.store, c.explicit, model, source, c.run_dir, c.encode, c.batches, c.cluster.k, progress=self.progress, heartbeat=beat),
                    HINTS["explicit"],
                )
                if result.error:
                    raise RuntimeError(f"explicit training of {name} failed: {result.error}")
                m = result.metrics
                self.say(
                    f"explicit     {name}: {m['epoch'] + 1} epoch(s) on {m['samples']:,} samples ({m['unlabelled']:,} without a {source} label)"
                    f" in {time.perf_counter() - started:.1f} s; last loss {m['loss_total']:.4f}"
                )
                summary[name] = m
        return summary

    def _evaluate(self) -> dict:
        from cu_scale.evaluation import evaluate_predictions, read_predictions
        from cu_scale.explicit import predict_split, stage_name
        from cu_scale.pseudo_labels import PSEUDO_LABELS_DIR, pseudo_label_shape, score_pseudo_labels
        from cu_scale.training import latest_checkpoint

        c = self.config
        start_ray()
        trained = {
            stage_name(model, source): (model, source, latest_checkpoint(self.run_dir / "explicit" / stage_name(model, source)))
            for model in c.explicit.models
            for source in c.explicit.label_sources
        }
        checkpoints = {name: t[2] for name, t in trained.items()}
        files = self._watched(
            "evaluate", lambda beat: predict_split(c.store, checkpoints, c.explicit.test_split, c.encode, self.run_dir / PREDICTIONS_DIR, heartbeat=beat), HINTS["inference"]
        )
        results = {}
        for name, (model, source, _) in trained.items():
            path = files[name]
            results[name] = {"model": model, "label_source": source, "split": c.explicit.test_split, "predictions_file": str(path), **evaluate_predictions(read_predictions(path))}
        pseudo = shape = None
        if (self.run_dir / PSEUDO_LABELS_DIR).is_dir() and self.needs_pseudo_labels:
            pseudo, shape = score_pseudo_labels(self.run_dir / PSEUDO_LABELS_DIR), pseudo_label_shape(self.run_dir / PSEUDO_LABELS_DIR)
        metrics = {"config": c.source, "run_dir": str(self.run_dir), "pseudo_labels": pseudo, "pseudo_label_shape": shape, "explicit": results}
        (self.run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        self.say(f"evaluate     {c.explicit.test_split} split, R@1 in percent → {self.run_dir / METRICS_FILE}")
        self.say(metrics_table({name: r for name, r in results.items()}))
        return {name: {k: r[k] for k in ("R@0.3", "R@0.5", "R@0.7", "mIoU")} for name, r in results.items()}

    def _report(self) -> dict:
        from cu_scale.report import write_report

        path = write_report(self.config)
        self.say(f"report       {path}")
        return {"report": str(path)}


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [f"{prefix}: {old!r} → {new!r}"]


def build_store(config: RunConfig, progress: bool = True) -> dict:
    """The prepare stage from the config's `prepare` section; overwrites the store at `config.store`."""
    from cu_scale import prepare
    from cu_scale.partial_labels import PartialLabelSpec
    from cu_scale.simulator import SimulatorSettings

    p = config.prepare
    options = prepare.StoreOptions(out=config.store, max_steps=p.steps, shard_videos=p.shard_videos, overwrite=True, progress=progress)
    noise = {} if p.noise is None else {"noise": p.noise}
    if p.dataset == "demo":
        simulator = SimulatorSettings(feature_dim=p.feature_dim, max_steps=p.steps, steps_per_second=1.0, seed=p.seed, world_seed=p.world_seed, **noise)
        return prepare.prepare_demo(options, num_videos=p.videos, seed=p.seed, simulator=simulator, world=p.world)
    spec = PartialLabelSpec(p.partial, seed=p.partial_seed, clip_seconds=p.clip_seconds)
    simulator = None if p.features else SimulatorSettings(feature_dim=p.feature_dim, max_steps=p.steps, seed=p.seed, world_seed=p.world_seed, **noise)
    if p.dataset == "charades-sta":
        return prepare.prepare_charades_sta(options, p.annotations, p.glance, spec, simulator, p.features)
    return prepare.prepare_activitynet(options, p.annotations, p.glance, spec, simulator, p.features, tuple(p.splits))
