"""One stage as a Ray job: `python -m jobs.stage STAGE --config CONFIG --root DIR [--set k=v ...]`.

The stage's inputs must exist (the earlier stages' artifacts under the same root), as with `cu-scale STAGE`.
"""

from __future__ import annotations

import sys

from jobs import describe_cluster, job_config, job_parser


def main(argv: list[str] | None = None) -> int:
    from cu_scale.config import ConfigError
    from cu_scale.pipeline import STAGES, Pipeline, start_ray

    parser = job_parser(__doc__)
    parser.add_argument("stage", choices=STAGES)
    args = parser.parse_args(argv)
    try:
        config = job_config(args)
    except ConfigError as error:
        print(f"jobs.stage: {error}", file=sys.stderr)
        return 2
    start_ray()
    print(describe_cluster(), flush=True)
    Pipeline(config, progress=not args.quiet).run_stage(args.stage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
