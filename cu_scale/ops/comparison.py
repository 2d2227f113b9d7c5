"""Paper Tables I and IV: each explicit model trained on full, partial-derived and raw partial labels.

`cu-scale compare CONFIG...` runs every config's whole pipeline (finished stages are skipped) and lays
their test metrics out per explicit model:

    Full                          the model trained on ground truth (label source ``gt``)
    single-frame (glance)         trained on the pseudo-labels of a glance-label run, and so on for
    short-clip 2 s / 4 s          the short-clip runs; their pseudo-labels' own mIoU is shown beside
    naive: <labels>               trained on the raw partial labels (label source ``partial``)

A row's name comes from the config's `prepare` section (or the store's manifest when it has none).
"""

from __future__ import annotations

import json

from cu_scale.config import RunConfig, load_config
from cu_scale.storage import locate

ROW_SOURCES = ("gt", "pseudo", "partial")


def label_kind(config: RunConfig) -> str:
    """What partial labels a run trains from, in the paper's words."""
    p = config.prepare
    if p is None:
        from cu_scale.data.store import FeatureStore

        return FeatureStore(config.store).manifest.get("partial_labels", {}).get("train", "partial labels")
    if p.glance:
        return "single-frame (glance)"
    if p.partial == "clip":
        return f"short-clip {p.clip_seconds:g} s"
    return f"single-frame ({p.partial})"


def run_comparison(config_paths: list[str], overrides: dict, progress: bool = True) -> dict[str, list[dict]]:
    """Run each config's pipeline; returns {model class name: rows}, each row {name, source, metrics, pseudo mIoU}."""
    from cu_scale.ops.pipeline import METRICS_FILE, Pipeline, stage_seconds

    rows: dict[str, list[dict]] = {}
    for path in config_paths:
        config = load_config(path, overrides)
        print(f"== {path} → {config.run_dir}", flush=True)
        Pipeline(config, progress=progress).run()
        print(f"   its stages took {stage_seconds(config.run_dir) / 60:.1f} min of wall time when they ran (RUN_DIR/stages/*.json)", flush=True)
        metrics = json.loads((locate(config.run_dir) / METRICS_FILE).read_text())
        pseudo = (metrics.get("pseudo_labels") or {}).get("pseudo-labels")
        for result in metrics["explicit"].values():
            model = result["model"].partition(":")[2]
            source = result["label_source"]
            name = {"gt": "Full", "pseudo": label_kind(config), "partial": f"naive: raw {label_kind(config)} labels"}[source]
            rows.setdefault(model, []).append(
                {"name": name, "source": source, "metrics": result, "pseudo_mIoU": pseudo["mIoU"] if source == "pseudo" and pseudo else None, "config": path}
            )
    for model_rows in rows.values():
        model_rows.sort(key=lambda r: ROW_SOURCES.index(r["source"]))  # Full first, naive last, configs in order
    return rows


def comparison_table(rows: dict[str, list[dict]]) -> str:
    width = max(len(r["name"]) for model_rows in rows.values() for r in model_rows) + 2
    lines = []
    for model, model_rows in rows.items():
        lines.append(f"{model:<{width}}  {'R@0.3':>7} {'R@0.5':>7} {'R@0.7':>7} {'mIoU':>7}   {'pseudo-label mIoU':>17}")
        for r in model_rows:
            m = r["metrics"]
            pseudo = f"{r['pseudo_mIoU']:>17.2f}" if r["pseudo_mIoU"] is not None else ""
            lines.append(f"  {r['name']:<{width - 2}}  {m['R@0.3']:>7.2f} {m['R@0.5']:>7.2f} {m['R@0.7']:>7.2f} {m['mIoU']:>7.2f}   {pseudo}")
        lines.append("")
    return "\n".join(lines).rstrip()
