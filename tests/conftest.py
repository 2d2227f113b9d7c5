"""Shared fixtures. Real annotation files are read from ../shared/datasets, never copied."""

import pathlib

import pytest

DATASETS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets() -> pathlib.Path:
    if not DATASETS.is_dir():
        raise RuntimeError(f"the real annotations are expected at {DATASETS} (a sibling checkout of shared/)")
    return DATASETS


@pytest.fixture(scope="session")
def local_ray():
    """One real local Ray for the tests that need it, torn down at the end of the session."""
    import os

    import ray

    # A worker group that cannot start retries forever by default: fail the test instead of hanging CI.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    # The dashboard serves the state API, through which Ray Train frees the workers of a trial that Tune stops.
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
