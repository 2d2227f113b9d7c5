"""The whole pipeline as a Ray job: `python -m jobs.run --config CONFIG --root DIR [--set k=v ...] [--from STAGE]`."""

from __future__ import annotations

import sys
import time

from jobs import describe_cluster, job_config, job_parser


def main(argv: list[str] | None = None) -> int:
    from cu_scale.cli import print_results
    from cu_scale.config import ConfigError
    from cu_scale.pipeline import STAGES, Pipeline, start_ray

    parser = job_parser(__doc__)
    parser.add_argument("--from", dest="start_from", choices=STAGES, help="redo the run from this stage")
    args = parser.parse_args(argv)
    try:
        config = job_config(args)
    except ConfigError as error:
        print(f"jobs.run: {error}", file=sys.stderr)
        return 2
    start_ray()
    print(describe_cluster(), flush=True)
    started = time.perf_counter()
    Pipeline(config, progress=not args.quiet).run(start_from=args.start_from)
    print_results(config.run_dir)
    print(f"run finished in {time.perf_counter() - started:.1f} s under {config.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
