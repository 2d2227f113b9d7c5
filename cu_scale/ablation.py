"""The loss ablation of paper Table II: the implicit stage trained with subsets of its four contrasts.

Each row trains from scratch with the same settings apart from the switches, pseudo-labels the training
set and scores the pseudo-labels (R@0.5, R@0.7, mIoU; the paper's columns). Every row gets its own run
directory, RUN_DIR/ablation/A<n>/, so the main run is untouched, and a row whose metrics file exists is
not run again: an interrupted ablation picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from cu_scale.config import RunConfig

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
METRICS_FILE = "pseudo_label_metrics.json"


def row_directory(config: RunConfig, row: str) -> pathlib.Path:
    return pathlib.Path(config.run_dir) / "ablation" / row


def run_ablation(config: RunConfig, rows: list[str] | None = None, on_row=None, progress: bool = False) -> dict[str, dict[str, float]]:
    """Train and pseudo-label every row; returns {row: pseudo-label metrics}. `on_row(row, metrics)` is told of each."""
    from cu_scale.implicit import train_implicit
    from cu_scale.training import latest_checkpoint
    from cu_scale.pseudo_labels import pseudo_label

    rows = list(rows or ROWS)
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        raise ValueError(f"unknown ablation row {unknown[0]!r} (rows: {', '.join(ROWS)})")
    results = {}
    for row in rows:
        directory = row_directory(config, row)
        metrics_file = directory / METRICS_FILE
        if not metrics_file.exists():
            switches = {f"use_{loss}": loss in ROWS[row] for loss in LOSSES}
            settings = dataclasses.replace(config.implicit, **switches)
            fit = train_implicit(config.store, settings, config.batches, config.cluster, config.encode, str(directory), progress=progress)
            if fit.error:
                raise RuntimeError(f"ablation row {row}: implicit training failed: {fit.error}")
            labelled = pseudo_label(config.store, str(latest_checkpoint(directory / "implicit")), directory, config.encode)
            if labelled["metrics"] is None:
                raise ValueError(f"{config.store}: the training split has no ground truth, so pseudo-labels cannot be scored")
            metrics_file.write_text(json.dumps(labelled["metrics"]["pseudo-labels"], indent=2))
        results[row] = json.loads(metrics_file.read_text())
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
