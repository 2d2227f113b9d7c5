"""Grounding metrics, computed the standard way.

    IoU((s, e), (s*, e*)) = max(0, min(e, e*) − max(s, s*)) / (max(e, e*) − min(s, s*))
    R@m  = 100 · mean(IoU ≥ m)  for m ∈ {0.3, 0.5, 0.7}, of the one (first) predicted span per query (R@1)
    mIoU = 100 · mean(IoU)
    R@5,m = 100 · mean(max of the first five spans' IoU ≥ m)  for m ∈ {0.5, 0.7}: the field's other table,
            for models that rank several spans per query (a query with fewer spans counts those it has)

A zero-length union (both spans the same instant) counts as IoU 1 when the spans coincide, else 0.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = (0.3, 0.5, 0.7)
TOP_K = 5
TOP_K_THRESHOLDS = (0.5, 0.7)


def temporal_iou(pred_start, pred_end, gt_start, gt_end) -> np.ndarray:
    pred_start, pred_end, gt_start, gt_end = (np.asarray(x, float) for x in (pred_start, pred_end, gt_start, gt_end))
    inter = np.clip(np.minimum(pred_end, gt_end) - np.maximum(pred_start, gt_start), 0, None)
    union = np.maximum(pred_end, gt_end) - np.minimum(pred_start, gt_start)
    same = (pred_start == gt_start) & (pred_end == gt_end)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), same.astype(float))


def grounding_metrics(iou: np.ndarray) -> dict[str, float]:
    """R@0.3, R@0.5, R@0.7 and mIoU in percent."""
    iou = np.asarray(iou, float)
    metrics = {f"R@{m}": float(100 * np.mean(iou >= m)) for m in THRESHOLDS}
    metrics["mIoU"] = float(100 * np.mean(iou))
    return metrics


def recall_at_k(ious: np.ndarray, k: int = TOP_K) -> dict[str, float]:
    """R@k at IoU 0.5 and 0.7 in percent from (n, K) IoUs of each query's ranked spans, NaN where a query
    has fewer than K; only the first k count."""
    best = np.nanmax(np.where(np.isnan(ious[:, :k]), -1.0, ious[:, :k]), axis=1) if len(ious) else np.zeros(0)
    return {f"R@{k},{m}": float(100 * np.mean(best >= m)) for m in TOP_K_THRESHOLDS}


class IoUTally:
    """The same metrics over IoUs that arrive in parts (a shard at a time): counts, not the IoUs themselves."""

    def __init__(self):
        self.count, self.total = 0, 0.0
        self.above = dict.fromkeys(THRESHOLDS, 0)

    def add(self, iou: np.ndarray) -> None:
        iou = np.asarray(iou, float)
        self.count += len(iou)
        self.total += float(iou.sum())
        for m in THRESHOLDS:
            self.above[m] += int((iou >= m).sum())

    def metrics(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {**{f"R@{m}": 100 * self.above[m] / n for m in THRESHOLDS}, "mIoU": 100 * self.total / n}
