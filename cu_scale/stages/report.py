"""RUN_DIR/report.md: the run's metrics as tables and three PNG plots under RUN_DIR/plots/.

- timeline.png: a few test queries, each with its ground truth, its partial label, the pseudo-label the
  implicit model gives at that partial label (the implicit stage only labels the training set, so these
  few are computed here) and each explicit model's prediction;
- iou_histogram.png: the IoU of every test prediction, per model and label source;
- training_curves.png: the total loss per epoch of every training stage, read from its latest checkpoint.

Plots are drawn with matplotlib's Agg backend (files only, no display).
"""

from __future__ import annotations

import json

import numpy as np

from cu_scale.config import RunConfig
from cu_scale.storage import Location, locate

TIMELINE_QUERIES = 6


def _save(figure, path: Location) -> Location:
    import io

    import matplotlib.pyplot as plt

    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, dpi=110, format="png")
    plt.close(figure)
    path.write_bytes(image.getvalue())
    return path


def _markdown_table(rows: dict[str, dict], extra: tuple[str, ...] = ()) -> list[str]:
    columns = ("R@0.3", "R@0.5", "R@0.7", "mIoU", *extra)
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, m in rows.items():
        cells = [f"{m[c]:.2f}" if isinstance(m.get(c), float) else str(m.get(c, "")) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _training_curves(run_dir: Location, plots: Location) -> Location | None:
    import matplotlib.pyplot as plt

    from cu_scale.stages.training import checkpoint_meta, checkpoints, latest_checkpoint

    stages = [run_dir / "implicit"] + (run_dir / "explicit").glob("*")
    curves = {}
    for stage_dir in stages:
        if checkpoints(stage_dir):
            curves[stage_dir.name] = [m["loss_total"] for m in checkpoint_meta(latest_checkpoint(stage_dir)).get("history", [])]
    if not curves:
        return None
    figure, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 2.8), squeeze=False)
    for axis, (name, losses) in zip(axes[0], curves.items()):
        axis.plot(range(1, len(losses) + 1), losses, marker="o", markersize=3)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("epoch")
        axis.set_ylabel("total loss")
        axis.grid(alpha=0.3)
    return _save(figure, plots / "training_curves.png")


def _iou_histogram(predictions: dict[str, list[dict]], plots: Location) -> Location | None:
    import matplotlib.pyplot as plt

    from cu_scale.evaluation.predictions import prediction_ious

    if not predictions:
        return None
    figure, axis = plt.subplots(figsize=(6.4, 3.4))
    bins = np.linspace(0, 1, 21)
    for name, records in predictions.items():
        ious = prediction_ious(records)
        axis.hist(ious, bins=bins, histtype="step", linewidth=1.6, label=f"{name} (mIoU {100 * ious.mean():.1f})")
    for threshold in (0.3, 0.5, 0.7):
        axis.axvline(threshold, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("temporal IoU with ground truth (test split)")
    axis.set_ylabel("queries")
    axis.legend(fontsize=8)
    return _save(figure, plots / "iou_histogram.png")


def _test_pseudo_labels(config: RunConfig, sample_ids: list[str]) -> dict[str, tuple[float, float]]:
    """The implicit model's pseudo-labels for a few test samples, at their partial labels (local torch,
    the word features the encode stage stored)."""
    import torch

    from cu_scale.stages.encode import check_encoder
    from cu_scale.stages.implicit import load_implicit_model
    from cu_scale.data.store import FeatureStore
    from cu_scale.stages.streams import StoreLayout, read_examples
    from cu_scale.stages.training import checkpoints, latest_checkpoint

    implicit_dir = locate(config.run_dir) / "implicit"
    if not checkpoints(implicit_dir):
        return {}
    store = FeatureStore(config.store)
    examples = read_examples(StoreLayout.of(store, check_encoder(store, config.encode)), sample_ids)
    rows = np.flatnonzero(~np.isnan(examples["partial_start"].astype(float)))
    if not len(rows):
        return {}
    model = load_implicit_model(latest_checkpoint(implicit_dir))
    duration = examples["duration"][rows].astype(np.float64)
    anchor = (examples["partial_start"][rows] + examples["partial_end"][rows]) / 2 / duration
    with torch.inference_mode():
        out = model(
            torch.as_tensor(examples["features"][rows]).float(), torch.as_tensor(examples["mask"][rows]),
            torch.as_tensor(examples["words"][rows]).float(), torch.as_tensor(examples["words_valid"][rows]), torch.as_tensor(anchor).float(),
        )
    return {examples["sample_id"][r]: (float(s) * d, float(e) * d) for r, s, e, d in zip(rows, out.start.numpy(), out.end.numpy(), duration)}


def _timeline(config: RunConfig, predictions: dict[str, list[dict]], plots: Location) -> Location | None:
    import matplotlib.pyplot as plt

    from cu_scale.data.store import FeatureStore

    if not predictions:
        return None
    with_gt = [r for r in next(iter(predictions.values())) if r.get("gt")]
    chosen = with_gt[:: max(1, len(with_gt) // TIMELINE_QUERIES)][:TIMELINE_QUERIES]  # spread over the split
    if not chosen:
        return None
    ids = [r["sample_id"] for r in chosen]
    examples = FeatureStore(config.store).examples(ids, columns_only=True)
    partial = {s: (a, b) for s, a, b in zip(examples["sample_id"], examples["partial_start"], examples["partial_end"]) if not np.isnan(a)}
    pseudo = _test_pseudo_labels(config, ids)
    by_name = {name: {r["sample_id"]: r for r in records} for name, records in predictions.items()}
    rows = ["ground truth", "partial label", "pseudo-label", *predictions]
    colours = {"ground truth": "black", "partial label": "tab:red", "pseudo-label": "tab:orange"}
    figure, axes = plt.subplots(len(chosen), 1, figsize=(8, 1.0 + 0.32 * len(rows) * len(chosen)), squeeze=False)
    for axis, record in zip(axes[:, 0], chosen):
        sid, duration = record["sample_id"], record.get("duration") or max(record["gt"][1], record["pred"][1])
        spans = {"ground truth": record["gt"], "partial label": partial.get(sid), "pseudo-label": pseudo.get(sid)}
        spans.update({name: by_name[name][sid]["pred"] for name in predictions if sid in by_name[name]})
        for y, name in enumerate(rows):
            span = spans.get(name)
            if span is None:
                continue
            colour = colours.get(name, f"C{y}")
            if span[1] - span[0] < duration / 200:  # a single-frame label: a tick
                axis.plot([span[0]], [y], marker="|", markersize=12, color=colour, markeredgewidth=2)
            else:
                axis.barh(y, span[1] - span[0], left=span[0], height=0.6, color=colour, alpha=0.8)
        axis.set_xlim(0, duration)
        axis.set_yticks(range(len(rows)), rows, fontsize=7)
        axis.invert_yaxis()
        axis.set_title(f"{record['query']}  ({record['video_id']}, {duration:.1f} s)", fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    return _save(figure, plots / "timeline.png")


def write_report(config: RunConfig) -> Location:
    """Write RUN_DIR/report.md and its plots from metrics.json, the predictions and the checkpoints."""
    import matplotlib

    matplotlib.use("Agg")
    from cu_scale.evaluation.predictions import read_predictions
    from cu_scale.stages.pseudo_labels import describe_shape, pseudo_label_warning

    run_dir = locate(config.run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    plots = run_dir / "plots"
    predictions = {name: read_predictions(r["predictions_file"]) for name, r in metrics["explicit"].items()}
    lines = [f"# cu-scale run: {run_dir}", "", f"Config: `{config.source}`; store: `{config.store}`.", ""]
    lines += [f"## Test split ({config.explicit.test_split}): explicit models", "", "R@1 at IoU 0.3/0.5/0.7 and mIoU, in percent; one row per model and label source.", ""]
    lines += _markdown_table(metrics["explicit"], extra=("scored",))
    if metrics.get("pseudo_labels"):
        lines += ["", "## Pseudo-labels on the training set", "", "Against the ground truth, beside the two baselines.", ""]
        lines += _markdown_table(metrics["pseudo_labels"])
        if metrics.get("pseudo_label_shape"):
            lines += ["", *(f"- {line}" for line in describe_shape(metrics["pseudo_label_shape"]).splitlines())]
        warning = pseudo_label_warning(metrics["pseudo_labels"])
        if warning:
            lines += ["", f"**{warning}**"]
    for title, path in (
        ("Timeline of a few test queries", _timeline(config, predictions, plots)),
        ("IoU of the test predictions", _iou_histogram(predictions, plots)),
        ("Training curves", _training_curves(run_dir, plots)),
    ):
        if path is not None:
            lines += ["", f"## {title}", "", f"![{title}](plots/{path.name})"]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
