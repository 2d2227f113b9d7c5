"""Shared fixtures. Real annotation files are read from ../shared/datasets, never copied."""

import pathlib
import time

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
    from cu_scale.ops.pipeline import free_port, start_ray

    # The dashboard serves the state API, through which Ray Train frees the workers of a trial that Tune stops.
    start_ray(num_cpus=2, include_dashboard=True, dashboard_port=free_port(), configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def ray_resources_released(request):
    """After a test that used the local Ray, every CPU is free again (waited for up to a minute).

    The tests share one Ray session, so a test that leaves an actor, a placement group or a stream's
    read task holding CPUs starves every later test; that test fails here, by name, instead.
    """
    yield
    if "local_ray" not in request.fixturenames:
        return
    import ray

    if not ray.is_initialized():
        return
    deadline = time.monotonic() + 60
    while True:
        total = ray.cluster_resources().get("CPU", 0.0)
        free = ray.available_resources().get("CPU", 0.0)
        if free >= total - 1e-6:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    from ray.util.state import list_actors, list_placement_groups

    address = ray.get_runtime_context().gcs_address  # another Ray may run on this machine (tests/test_jobs.py)
    actors = [f"{a.class_name} ({a.state})" for a in list_actors(address=address, filters=[("state", "!=", "DEAD")])]
    groups = [f"{g.placement_group_id[:8]} ({g.state})" for g in list_placement_groups(address=address, filters=[("state", "!=", "REMOVED")])]
    pytest.fail(
        f"the test left {total - free:g} of {total:g} CPUs held in the shared Ray a minute after it ended; "
        f"live actors: {actors or 'none'}; placement groups: {groups or 'none'}"
    )
