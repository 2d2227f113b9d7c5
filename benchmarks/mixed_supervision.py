"""What a few full labels add: the same corpus with all single-frame labels, and with a seeded fraction of them
turned into full moments (mixed supervision), each through the whole pipeline with the same settings.

Each fraction is a run of its own (RUN_ROOT/full-PCT/, its own store): prepare with `prepare.full_fraction`,
encode, cluster, implicit, pseudo-labels, and the explicit model trained on the `mixed` label source (the
full moment where a sample's label is full, its pseudo-label elsewhere; with no full labels that is the
pseudo-labels), evaluated on the test split. The single frames are the same in every run: the mix only
replaces some of them by the full moment (`cu_scale.data.partial_labels.mix_label_kinds`). Finished stages are
skipped, so an interrupted benchmark resumes.

    .venv/bin/python benchmarks/mixed_supervision.py configs/charades-sta-glance.yaml \\
        --set prepare.annotations=DIR --fractions 0 0.1
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from cu_scale.cli import parse_overrides
from cu_scale.config import load_config
from cu_scale.console import metrics_table
from cu_scale.ops.pipeline import METRICS_FILE, Pipeline, stage_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.0, 0.1], help="full-label fractions to run (default 0 0.1)")
    parser.add_argument("--models", nargs="+", default=["cu_scale.method.grounding_models:BoundaryRegressor", "cu_scale.method.grounding_models:SpanDETR"])
    parser.add_argument("--root", default="runs/mixed-supervision", help="RUN_ROOT: one run directory per fraction under it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    explicit_rows, pseudo_rows = {model.partition(":")[2]: {} for model in args.models}, {}
    for fraction in args.fractions:
        run_dir = pathlib.Path(args.root) / f"full-{round(100 * fraction)}"
        overrides = {
            **parse_overrides(args.set), "prepare.full_fraction": fraction, "store": str(run_dir / "store"), "run_dir": str(run_dir),
            "explicit.models": list(args.models), "explicit.label_sources": ["mixed"],
        }
        config = load_config(args.config, overrides)
        started = time.perf_counter()
        Pipeline(config, progress=False).run()
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
        name = f"{100 * fraction:g}% full, {100 - 100 * fraction:g}% single-frame"
        for result in metrics["explicit"].values():
            explicit_rows[result["model"].partition(":")[2]][name] = result
        pseudo_rows[name] = metrics["pseudo_labels"]["pseudo-labels"]
        print(f"{name}: {run_dir}, stages {stage_seconds(run_dir):.0f} s (this call {time.perf_counter() - started:.0f} s)", flush=True)
    for model, rows in explicit_rows.items():
        print(f"\nexplicit {model} on the test split, trained on `mixed` labels (percent)")
        print(metrics_table(rows))
    print("\npseudo-labels of the training set against ground truth (the full-label samples included)")
    print(metrics_table(pseudo_rows))


if __name__ == "__main__":
    main()
