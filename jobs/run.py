"""The whole pipeline as a Ray job: `python -m jobs.run --config CONFIG --root DIR [--set k=v ...] [--from STAGE]`."""

from __future__ import annotations

import sys
import time

from jobs import job_parser, start_job


def main(argv: list[str] | None = None) -> int:
    from cu_scale.cli import print_results
    from cu_scale.ops.pipeline import STAGE_NAMES, Pipeline

    parser = job_parser(__doc__)
    parser.prog = "jobs.run"
    parser.add_argument("--from", dest="start_from", choices=STAGE_NAMES, help="redo the run from this stage")
    started = start_job(parser, argv)
    if started is None:
        return 2
    args, config = started
    began = time.perf_counter()
    Pipeline(config, progress=not args.quiet).run(start_from=args.start_from)
    print_results(config.run_dir)
    print(f"run finished in {time.perf_counter() - began:.1f} s under {config.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
