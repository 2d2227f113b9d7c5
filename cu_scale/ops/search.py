"""`cu-scale tune`: a Ray Tune search over the implicit stage, with ASHA early stopping.

A search file (tune/*.yaml) names the trials, the ASHA schedule, the validation part and the space:

    trials: 2                  # samples of the space (times every grid value)
    max_epochs: 12             # ASHA max_t: implicit epochs of a trial that is never stopped
    grace_epochs: 3            # ASHA grace period
    reduction_factor: 2
    validation_fraction: 0.25  # training videos whose ground truth scores the pseudo-labels
    seed: 0
    concurrent_trials: 1       # trials at once (more on a cluster)
    space:
      implicit.lam: {loguniform: [0.1, 10]}     # any config field, dotted
      cluster.k: {choice: [8, 16]}
      clip_seconds: {grid: [0, 2, 4]}           # the annotation clip length r (0: single frame)

Each trial is a plain Tune function that runs the implicit stage through Ray Train + DeepSpeed (the same
`train_implicit` as `cu-scale run`) with Tune's report callback, so every epoch's metrics reach the
scheduler. The objective is the pseudo-label mIoU on the validation part of the training set
(`implicit.score_validation`, on its own small stream): ground truth there is the only full annotation a search may use, and
nothing here reads the test split.

Work shared between trials is done once, before the Tuner starts: the base store is prepared and encoded;
every K (and m) of the space is clustered once (cached in the store, `clustering.cluster_store`); every
clip length r gets a relabelled store that hard-links the features and embeddings (`cu_scale.ops.relabel`).
So `cluster.*` and `clip_seconds` take `choice` or `grid` values only.

Results, in the search directory: trials.csv and trials.md (one row per trial: its parameters, the epochs
it ran, its last and best validation mIoU), best.yaml (the base config with the best trial's values, ready
for `cu-scale run`), frontier.png (clip length r against validation pseudo-label mIoU: the paper's Table III
question, how much annotation buys how much quality). An interrupted search resumes where it stopped
(`Tuner.restore`) when run again with the same search directory.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time

import yaml

from cu_scale.config import ConfigError, RunConfig, build_config, read_yaml_mapping, resolve_paths
from cu_scale.console import error_line
from cu_scale.storage import locate

OBJECTIVE = "val_pseudo_mIoU"
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SHARED = ("clip_seconds", "cluster.")  # values prepared before the search: choice or grid only


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    space: dict
    trials: int = 2
    max_epochs: int = 12
    grace_epochs: int = 3
    reduction_factor: int = 2
    validation_fraction: float = 0.25
    seed: int = 0
    # Trials at once. On 2 cores they must take turns: a trial's Ray Train worker holds a CPU and Ray
    # Data's readers need the other, so two trials at once wait on each other forever.
    concurrent_trials: int = 1
    source: str = "<search>"

    def values_of(self, key: str) -> list:
        """Every value a choice or grid parameter can take (a constant: itself)."""
        spec = self.space[key]
        return list(next(iter(spec.values()))) if isinstance(spec, dict) else [spec]


def load_search(path: str | pathlib.Path, base: RunConfig) -> SearchSettings:
    """Read and validate a search file against the base config: unknown keys, bad ranges, values the config rejects."""
    raw = read_yaml_mapping(path, "search")
    known = {f.name for f in dataclasses.fields(SearchSettings)} - {"source"}
    unknown = sorted(set(raw) - known, key=str)
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
    if not isinstance(raw.get("space"), dict) or not raw["space"]:
        raise ConfigError(f"{path}: space: a mapping of parameters to search is required")
    for key in raw["space"]:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: space: {key!r}: a parameter is named by text, like implicit.lam")
    for name in ("trials", "max_epochs", "grace_epochs", "reduction_factor", "concurrent_trials", "seed"):
        value = raw.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
            raise ConfigError(f"{path}: {name}: expected a whole number ≥ {0 if name == 'seed' else 1}, got {value!r}")
    fraction = raw.get("validation_fraction", 0.25)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"{path}: validation_fraction: expected a number in (0, 1], got {fraction!r}")
    settings = SearchSettings(**raw, source=str(path))
    for key, spec in settings.space.items():
        where = f"{path}: space.{key}"
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
                raise ConfigError(f"{where}: expected one of {', '.join(DISTRIBUTIONS)} (e.g. {{choice: [8, 16]}}), got {spec!r}")
            kind, values = next(iter(spec.items()))
            if not isinstance(values, list) or not values or (kind not in ("choice", "grid") and len(values) != 2):
                raise ConfigError(f"{where}: {kind} takes {'a list of values' if kind in ('choice', 'grid') else '[low, high]'}, got {values!r}")
            if kind in ("uniform", "loguniform", "randint") and not values[0] < values[1]:
                raise ConfigError(f"{where}: {kind} needs low < high, got {values!r}")
            if key.startswith(SHARED) and kind not in ("choice", "grid"):
                raise ConfigError(f"{where}: {key} is prepared once per value before the search, so it takes choice or grid, not {kind}")
        if key == "clip_seconds":
            bad = [v for v in settings.values_of(key) if not isinstance(v, (int, float)) or v < 0]
            if bad:
                raise ConfigError(f"{where}: clip lengths are seconds ≥ 0 (0: a single frame), got {bad[0]!r}")
            continue
        try:  # the config must accept the field and each end of its range
            for value in _probe_values(spec):
                build_config(dataclasses.asdict(base), base.source, {key: value})
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
    return settings


def _probe_values(spec) -> list:
    if not isinstance(spec, dict):
        return [spec]
    kind, values = next(iter(spec.items()))
    if kind == "randint":
        return [values[0], values[1] - 1]
    return list(values)


def param_space(settings: SearchSettings) -> dict:
    from ray import tune

    sample = {"choice": tune.choice, "grid": tune.grid_search, "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v)}
    space = {}
    for key, spec in settings.space.items():
        if isinstance(spec, dict):
            kind, values = next(iter(spec.items()))
            space[key] = sample[kind](values)
        else:
            space[key] = spec
    return space


def trial_config(base: RunConfig, params: dict, max_epochs: int) -> RunConfig:
    """The run config of one trial: the base with the trial's values (clip_seconds is the store's business)."""
    overrides = {key: value for key, value in params.items() if key != "clip_seconds"}
    overrides["implicit.epochs"] = max_epochs
    return build_config(dataclasses.asdict(base), base.source, overrides)


def relabelled_store_path(search_dir: pathlib.Path, clip_seconds: float) -> pathlib.Path:
    return search_dir / "stores" / f"r{clip_seconds:g}s"


def prepare_shared(base: RunConfig, settings: SearchSettings, search_dir: pathlib.Path, say=print) -> None:
    """Everything trials share, once: the base store (prepared, encoded), each K clustered, each r relabelled."""
    import itertools

    from cu_scale.stages.clustering import cluster_store
    from cu_scale.ops.pipeline import Pipeline
    from cu_scale.ops.relabel import label_spec, relabel_store

    Pipeline(base, say=say).run(stages=("prepare", "encode"))
    cluster_keys = [key for key in settings.space if key.startswith("cluster.")]
    for values in itertools.product(*(settings.values_of(key) for key in cluster_keys)):
        cluster = dataclasses.replace(base.cluster, **{key.split(".", 1)[1]: value for key, value in zip(cluster_keys, values)})
        summary = cluster_store(base.store, cluster)
        say(f"clusters     K={cluster.k} m={cluster.memberships}: {summary['samples']:,} queries ({summary['seconds']:.1f} s when made)")
    for clip_seconds in settings.values_of("clip_seconds") if "clip_seconds" in settings.space else []:
        out = relabelled_store_path(search_dir, clip_seconds)
        if not (out / "manifest.json").exists():
            relabel_store(base.store, out, label_spec(float(clip_seconds), seed=settings.seed))
        say(f"labels       r = {clip_seconds:g} s → {out}")


def run_trial(params: dict, setup: dict) -> None:
    """One Tune trial: the implicit stage through Ray Train, each epoch reported to Tune (and ASHA)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from cu_scale.stages.implicit import train_implicit

    base = build_config(setup["base"], setup["source"])
    config = trial_config(base, params, setup["max_epochs"])
    store = setup["stores"].get(str(params.get("clip_seconds")), base.store)
    trial_dir = pathlib.Path(setup["search_dir"]) / "trials" / tune.get_context().get_trial_id()
    result = train_implicit(
        store, config.implicit, config.batches, config.cluster, config.encode, str(trial_dir),
        validation=setup["validation"], callbacks=(TuneReportCallback(),), heartbeat=setup["heartbeat"],
    )
    if result.error:
        raise RuntimeError(f"trial {trial_dir.name}: implicit training failed: {error_line(result.error)}")


def run_search(base: RunConfig, settings: SearchSettings, search_dir: str | pathlib.Path, say=print) -> dict:
    """Prepare what trials share, run (or resume) the Tuner, write the results; returns {"rows", "best", "seconds"}."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from cu_scale.ops.pipeline import STAGE, free_port, start_ray
    from cu_scale.stages.watchdog import run_watched

    if not locate(search_dir).is_local:
        raise ConfigError(f"{search_dir}: a search writes its trials on local disk for now; give `cu-scale tune --out DIR` a local directory")
    search_dir = pathlib.Path(search_dir).resolve()
    search_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # ASHA stopping a trial releases its Ray Train workers only when the dashboard serves the state API.
    start_ray(include_dashboard=True, dashboard_port=free_port())
    prepare_shared(base, settings, search_dir, say)
    base = resolve_paths(base, pathlib.Path.cwd())  # trials run in directories of Tune's: no relative paths there
    stores = {str(r): str(relabelled_store_path(search_dir, r)) for r in settings.values_of("clip_seconds")} if "clip_seconds" in settings.space else {}
    setup = {
        "base": dataclasses.asdict(base), "source": base.source, "search_dir": str(search_dir), "stores": stores, "max_epochs": settings.max_epochs,
        "validation": {"fraction": settings.validation_fraction, "seed": settings.seed},
    }
    experiment = search_dir / "tune"

    def fit(heartbeat):
        # A trial holds only its driver: a tenth of a CPU (Tune refuses none); its Ray Train worker takes the rest.
        trainable = tune.with_resources(tune.with_parameters(run_trial, setup={**setup, "heartbeat": heartbeat}), {"cpu": 0.1})
        if tune.Tuner.can_restore(str(experiment)):
            say(f"search       resuming {experiment}")
            return tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True).fit()
        return tune.Tuner(
            trainable,
            param_space=param_space(settings),
            tune_config=tune.TuneConfig(
                metric=OBJECTIVE, mode="max", num_samples=settings.trials,
                # max_t one past the last epoch: a trial that runs all its epochs ends by returning, not by a stop.
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=settings.max_epochs + 1, grace_period=settings.grace_epochs, reduction_factor=settings.reduction_factor),
                # The generator's own limit: TuneConfig.max_concurrent_trials did not hold it here (2 trials at once).
                search_alg=BasicVariantGenerator(max_concurrent=settings.concurrent_trials, random_state=settings.seed),
            ),
            run_config=tune.RunConfig(name="tune", storage_path=str(search_dir), verbose=0),
        ).fit()

    grid = run_watched(fit, stage="search", seconds=base.watchdog_seconds, hint=STAGE["implicit"].hint + " A search runs its search file's concurrent_trials trials at once.")
    rows = trial_rows(grid, list(settings.space))
    if not any(math.isfinite(row["best mIoU"]) for row in rows):
        errors = [str(result.error) for result in grid if result.error]
        raise RuntimeError(f"no trial reported {OBJECTIVE}" + (f"; first error: {errors[0]}" if errors else ""))
    best = max(rows, key=lambda row: row["best mIoU"])
    write_results(rows, best, base, settings, search_dir)
    return {"rows": rows, "best": best, "seconds": time.perf_counter() - started}


def trial_rows(grid, keys: list[str]) -> list[dict]:
    """One row per trial: its id, parameters, epochs run, last and best validation pseudo-label mIoU."""
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        scores = history[OBJECTIVE].tolist() if history is not None and OBJECTIVE in history else []
        rows.append({
            "trial": (result.metrics or {}).get("trial_id") or pathlib.Path(result.path).name,
            **{key: result.config.get(key) for key in keys},
            "epochs": len(scores),
            "last mIoU": scores[-1] if scores else math.nan,
            "best mIoU": max(scores) if scores else math.nan,
            "status": "error" if result.error else "done",
        })
    return sorted(rows, key=lambda row: -row["best mIoU"] if math.isfinite(row["best mIoU"]) else math.inf)


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "-"
    return str(value)


def trials_table(rows: list[dict]) -> str:
    """The trials as a Markdown table (also what `cu-scale tune` prints)."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(format_value(row[key]) for key in keys) + " |" for row in rows]
    return "\n".join(lines)


def write_results(rows: list[dict], best: dict, base: RunConfig, settings: SearchSettings, search_dir: pathlib.Path) -> None:
    import csv

    with open(search_dir / "trials.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (search_dir / "trials.md").write_text(trials_table(rows) + "\n")
    params = {key: best[key] for key in settings.space}
    config = trial_config(base, params, settings.max_epochs)
    raw = dataclasses.asdict(config)
    raw.pop("source")
    if "clip_seconds" in params:  # the relabelled store of the best r already exists
        raw["store"], raw["prepare"] = str(relabelled_store_path(search_dir, params["clip_seconds"])), None
    raw["run_dir"] = str(search_dir / "best-run")
    raw = {key: (list(value) if isinstance(value, tuple) else value) for key, value in raw.items()}
    for section in raw.values():
        if isinstance(section, dict):
            section.update({k: list(v) for k, v in section.items() if isinstance(v, tuple)})
    header = (
        f"# The best trial of `cu-scale tune {base.source} --space {settings.source}`: trial {best['trial']},\n"
        f"# validation pseudo-label mIoU {best['best mIoU']:.2f} (its best epoch of {best['epochs']}). Parameters: "
        + ", ".join(f"{key}={format_value(value)}" for key, value in params.items())
        + f".\n#   cu-scale run {search_dir / 'best.yaml'}\n"
    )
    (search_dir / "best.yaml").write_text(header + yaml.safe_dump(raw, sort_keys=False))
    plot_frontier(rows, search_dir / "frontier.png")


def plot_frontier(rows: list[dict], out: pathlib.Path) -> None:
    """Clip length r against validation pseudo-label mIoU: every trial, and the best per r joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [row for row in rows if math.isfinite(row["best mIoU"])]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if scored and "clip_seconds" in scored[0]:
        ax.scatter([row["clip_seconds"] for row in scored], [row["best mIoU"] for row in scored], color="0.6", label="trials")
        lengths = sorted({row["clip_seconds"] for row in scored})
        best = [max(row["best mIoU"] for row in scored if row["clip_seconds"] == r) for r in lengths]
        ax.plot(lengths, best, "o-", color="tab:blue", label="best per clip length")
        ax.set_xticks(lengths)
        ax.set_xticklabels([f"{r:g} s" if r else "0 s\n(single frame)" for r in lengths])
    else:
        ax.scatter(range(len(scored)), [row["best mIoU"] for row in scored], color="tab:blue", label="trials (no clip length searched)")
    ax.set_xlabel("annotation clip length r")
    ax.set_ylabel("pseudo-label mIoU, validation part (%)")
    ax.set_title("Annotation budget frontier")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
