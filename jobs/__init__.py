"""Ray job entrypoints: what `ray job submit` (or `cu-scale submit`) runs on the cluster's head.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m jobs.run --config configs/demo.yaml --root /mnt/cu-scale [--set key=value ...] [--from STAGE]
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python -m jobs.stage encode --config configs/demo.yaml --root /mnt/cu-scale

The job's driver runs in a temporary copy of the working directory, with RAY_ADDRESS set by Ray, so
`cu_scale.ops.pipeline.start_ray` joins the cluster instead of starting a local Ray: the training code is the
same as the embedded default's. Relative paths of the config are resolved under --root, a directory that
every node of the cluster sees (`cu_scale.config.resolve_paths`); without it they are refused.
"""

from __future__ import annotations

import argparse
import os
import sys


def job_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="run configuration, relative to the job's working directory")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)")
    parser.add_argument("--root", default=os.environ.get("CU_SCALE_ROOT"), help="resolve the config's relative paths under DIR, a directory every node sees (default: $CU_SCALE_ROOT)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars in the job's log")
    return parser


def start_job(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parse the job's arguments, validate its config (overrides applied, relative paths resolved under
    --root) and join the cluster; returns (args, config), or None after printing why the config is refused."""
    from cu_scale.cli import parse_overrides
    from cu_scale.config import ConfigError, load_config, resolve_paths
    from cu_scale.ops.pipeline import start_ray

    args = parser.parse_args(argv)
    try:
        config = resolve_paths(load_config(args.config, parse_overrides(args.set)), args.root)
    except ConfigError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return None
    start_ray()
    print(describe_cluster(), flush=True)
    return args, config


def describe_cluster() -> str:
    import ray

    resources = ray.cluster_resources()
    nodes = [node for node in ray.nodes() if node["Alive"]]
    shown = ", ".join(f"{resources[key]:g} {key}" for key in ("CPU", "GPU") if key in resources)
    return f"ray cluster  {len(nodes)} node(s), {shown} (job {ray.get_runtime_context().get_job_id()})"
