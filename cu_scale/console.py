"""What the commands print: the store description, cluster summaries and metrics tables, as text.

Shared by the single-stage commands and `cu-scale run`, so that a stage reads the same either way.
"""

from __future__ import annotations

from cu_scale.data.records import PARTIAL_KINDS
from cu_scale.data.store import REJECT_REASONS, FeatureStore


def megabytes(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def describe_store(store: FeatureStore) -> str:
    m = store.manifest
    counts = m["counts"]
    store_bytes = sum(s["videos_bytes"] + s["samples_bytes"] for s in m["shards"])
    lines = [
        f"store        {store.path}",
        f"dataset      {m.get('dataset', '?')}   schema version {m['schema_version']}   created {m['created']}",
        f"features     {m.get('features', '?')}",
        f"             Dv {m['feature_dim']}   T (max steps) {m['max_steps']}   float16",
        f"size         {megabytes(store_bytes)} on disk in {len(m['shards'])} shard(s) of ≤{m['shard_videos']} videos"
        f"   ({megabytes(counts['feature_bytes'])} of raw features)",
        f"videos       {counts['videos']:,}",
        f"samples      {counts['samples']:,}",
    ]
    for split, c in counts["splits"].items():
        label = m.get("partial_labels", {}).get(split, "")
        lines.append(f"  {split:<10} {c['samples']:>9,} samples  {c['videos']:>8,} videos   partial labels: {label}")
        kinds = c.get("label_kinds")  # stores written before label kinds were counted lack them
        if kinds:
            lines.append(f"  {'':<10} label kinds: " + ", ".join(f"{kind} {kinds[kind]:,}" for kind in PARTIAL_KINDS if kinds.get(kind)))
    clipped = counts.get("clipped_labels", {})
    policy = m["label_policy"]
    lines.append(
        f"clipped      {sum(clipped.values()):,} label(s) overshooting the video "
        + (f"({', '.join(f'{k}: {v:,}' for k, v in clipped.items())}) " if clipped else "")
        + f"[policy: {policy['overshoot']}, tolerance {policy['tolerance_seconds']:g} s]"
    )
    rejects = m["rejects"]
    lines.append(f"rejects      {rejects['count']:,}" + (f"  → {store.path / rejects['file']}" if rejects["count"] else ""))
    for code, n in sorted(rejects["by_code"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {n:>9,}  {code}: {REJECT_REASONS.get(code, '')}")
    return "\n".join(lines)


def describe_clusters(summary: dict, directory) -> str:
    near, member = summary["nearest_cluster_size"], summary["membership_size"]
    lines = [
        f"cluster      {summary['samples']:,} {summary['split']} queries into K={summary['k']} on {summary['device']} in {summary['seconds']} s (trained on {summary['trained_on']:,})",
        f"  nearest-cluster sizes  min {near['min']}  p10 {near['p10']}  median {near['median']}  p90 {near['p90']}  max {near['max']}   empty clusters {summary['empty_clusters']}",
        f"  with m={summary['memberships']} memberships   min {member['min']}  p10 {member['p10']}  median {member['median']}  p90 {member['p90']}  max {member['max']}",
    ]
    zero = summary["zero_embeddings"]
    if zero["count"]:
        lines.append(f"  warning: {zero['count']} queries have a zero embedding (first: {', '.join(zero['first'])}); they join the nearest centroid by plain L2")
    lines.append(f"  → {directory}")
    return "\n".join(lines)


def metrics_table(table: dict[str, dict[str, float]], indent: str = "  ") -> str:
    """Rows of R@0.3, R@0.5, R@0.7 and mIoU (percent), one per named entry; R@5 at 0.5 and 0.7 beside them
    when some entry has them (blank where an entry has not)."""
    width = max(len(name) for name in table)
    columns = ["R@0.3", "R@0.5", "R@0.7", "mIoU"]
    columns += [c for c in ("R@5,0.5", "R@5,0.7") if any(c in m for m in table.values())]
    lines = [f"{indent}{'':<{width}}  " + " ".join(f"{c:>7}" for c in columns)]
    for name, m in table.items():
        lines.append(f"{indent}{name:<{width}}  " + " ".join(f"{m[c]:>7.2f}" if c in m else f"{'':>7}" for c in columns))
    return "\n".join(lines)



def error_line(error: BaseException) -> str:
    """The one line a user reads for an error: the error a Ray task or a training worker raised, taken out
    of Ray's wrappers (which carry the remote traceback; Ray's logs keep it), else the error's own first line."""
    for _ in range(8):  # a task inside a worker inside a trainer nests a few deep, never more
        failures = getattr(error, "worker_failures", None)  # Ray Train's WorkerGroupError: rank → that worker's error
        nested = getattr(error, "cause", None) or (next(iter(failures.values()), None) if failures else None)  # RayTaskError.cause
        if not isinstance(nested, BaseException):
            break
        error = nested
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
