"""One stage as a Ray job: `python -m jobs.stage STAGE --config CONFIG --root DIR [--set k=v ...]`.

The stage's inputs must exist (the earlier stages' artifacts under the same root), as with `cu-scale STAGE`.
"""

from __future__ import annotations

import sys

from jobs import job_parser, start_job


def main(argv: list[str] | None = None) -> int:
    from cu_scale.ops.pipeline import STAGE_NAMES, Pipeline

    parser = job_parser(__doc__)
    parser.prog = "jobs.stage"
    parser.add_argument("stage", choices=STAGE_NAMES)
    started = start_job(parser, argv)
    if started is None:
        return 2
    args, config = started
    Pipeline(config, progress=not args.quiet).run_stage(args.stage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
