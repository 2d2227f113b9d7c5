"""The loss ablation of paper Table II: the implicit stage trained with subsets of its four contrasts.

Each row trains from scratch with the same settings apart from the switches, pseudo-labels the training
set and scores the pseudo-labels (R@0.5, R@0.7, mIoU; the paper's columns). Every row is a run of its own,
in RUN_DIR/ablation/A<n>/, so the main run is untouched: its implicit and pseudo-label stages run through
the pipeline and leave their markers. A row whose stages finished with the same settings is not run again
(an interrupted ablation picks up where it stopped); a row whose settings changed is redone.
"""

from __future__ import annotations

import dataclasses

from cu_scale.config import RunConfig
from cu_scale.storage import Location, locate

LOSSES = ("raml", "raun", "erml", "erun")
# Paper Table II: which of L_raml, L_raun, L_erml, L_erun each row keeps.
ROWS = {
    "A1": ("raml",),
    "A2": ("raml", "raun"),
    "A3": ("raml", "erml"),
    "A4": ("raml", "raun", "erml"),
    "A5": ("raml", "erun"),
    "A6": ("raml", "raun", "erml", "erun"),
}


def row_directory(config: RunConfig, row: str) -> Location:
    return locate(config.run_dir) / "ablation" / row


def row_config(config: RunConfig, row: str) -> RunConfig:
    """The run of one row: the config's store and settings, the row's switches, its own directory."""
    switches = {f"use_{loss}": loss in ROWS[row] for loss in LOSSES}
    return dataclasses.replace(
        config,
        run_dir=str(row_directory(config, row)),
        implicit=dataclasses.replace(config.implicit, **switches),
        explicit=dataclasses.replace(config.explicit, label_sources=("pseudo",)),  # the pseudo-labels are what a row is for
    )


ABLATION_STAGES = ("implicit", "pseudo-label")


def run_ablation(config: RunConfig, rows: list[str] | None = None, on_row=None, progress: bool = False, say=print) -> dict[str, dict[str, float]]:
    """Train and pseudo-label every row; returns {row: pseudo-label metrics}. `on_row(row, metrics)` is told of each."""
    from cu_scale.ops.pipeline import Pipeline, finished_marker

    rows = list(rows or ROWS)
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        raise ValueError(f"unknown ablation row {unknown[0]!r} (rows: {', '.join(ROWS)})")
    results = {}
    for row in rows:
        run = row_config(config, row)
        Pipeline(run, progress=progress, say=say).run(stages=ABLATION_STAGES, redo_changed=True)
        metrics = finished_marker(run.run_dir, "pseudo-label")["summary"]["metrics"]
        if metrics is None:
            raise ValueError(f"{config.store}: the training split has no ground truth, so pseudo-labels cannot be scored")
        results[row] = metrics["pseudo-labels"]
        if on_row:
            on_row(row, results[row])
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Paper Table II's layout: one ✓ column per loss, then R@0.5, R@0.7, mIoU of the pseudo-labels."""
    lines = ["      " + "".join(f"{'L_' + loss:>7}" for loss in LOSSES) + f"  {'R@0.5':>7} {'R@0.7':>7} {'mIoU':>7}"]
    for row, m in results.items():
        marks = "".join(f"{'✓' if loss in ROWS[row] else '':>7}" for loss in LOSSES)
        lines.append(f"{row:<6}{marks}  {m['R@0.5']:>7.2f} {m['R@0.7']:>7.2f} {m['mIoU']:>7.2f}")
    return "\n".join(lines)
